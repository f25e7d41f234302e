"""Built-in losses: intermediate-layer KD (KroneckerBERT / TinyBERT), logit KD and the task losses.

Reductions follow KroneckerBERT (Tahaei et al. 2022, Eq. 14) as read in the reference digest (§4 q9):
MSE with mean reduction, summed over mapped layers; attention scores with padding positions zeroed
(TinyBERT, Jiao et al. 2020) and averaged over heads. Every loss is multiplied by its ``weight``.
Every loss reads its inputs in float32 (:func:`_f32`): in half precision a sum of squared score
differences overflows long before the mean is taken.

Which losses fit which problem type (``problem_types``): the intermediate losses and ``logit_mse`` fit
any model; the softmax-based logit losses (``logit_soft_ce``, ``logit_kl``) need a distribution over
classes and refuse a regression head (one output: the softmax is 1, the loss 0, the gradient 0);
``task`` fits classification and regression, ``mlm`` masked language modelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F

import compresskit
from compresskit import ConfigError, DistillationOutputs, LossInputs

T = TypeVar("T")


@dataclass(frozen=True)
class WeightOptions:
    weight: float = 1.0


@dataclass(frozen=True)
class LayerOptions:
    weight: float = 1.0
    layers: tuple[int, ...] | None = None  # student layers (1-based) to use; default: every mapped layer


@dataclass(frozen=True)
class TemperatureOptions:
    weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def _f32(value: torch.Tensor) -> torch.Tensor:
    """``value`` in float32 (losses reduce in float32 whatever dtype the models run in)."""
    return value.float()


def _pairs(inputs: LossInputs, layers: tuple[int, ...] | None) -> list[tuple[int, int]]:
    pairs = list(inputs.mapping.pairs)
    return pairs if layers is None else [(s, t) for s, t in pairs if s in layers]


def _padding_mask(outputs: DistillationOutputs, like: torch.Tensor) -> torch.Tensor:
    """(batch, 1, query, key) mask, 1 where both positions are real tokens."""
    mask = outputs.attention_mask
    if mask is None:
        return torch.ones(
            like.shape[0], 1, like.shape[-2], like.shape[-1], dtype=like.dtype, device=like.device
        )
    m = mask.to(like.dtype)
    return (m[:, None, :, None] * m[:, None, None, :]).to(like.device)


def _need(value: T | None, what: str) -> T:
    """``value``, or a :class:`ConfigError` when the model did not produce it."""
    if value is None:
        raise ConfigError(f"a loss needs the {what}, but the model did not produce them on this batch.")
    return value


def _hidden(outputs: DistillationOutputs) -> tuple[torch.Tensor, ...]:
    return _need(outputs.hidden_states, "hidden states")


class EmbeddingMSE(compresskit.Loss):
    """L_Embedding = MSE(E^S, E^T) on the embedding outputs ``hidden_states[0]`` (KroneckerBERT Eq. 14)."""

    name = "embedding_mse"
    Options = WeightOptions
    requires = frozenset({"hidden_states"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        return F.mse_loss(_f32(_hidden(inputs.student)[0]), _f32(_hidden(inputs.teacher)[0]))


class HiddenMSE(compresskit.Loss):
    """L_FFN = Σ_l MSE(H^S_l, H^T_m(l)) over mapped layers (layer outputs after residual + LayerNorm)."""

    name = "hidden_mse"
    Options = LayerOptions
    requires = frozenset({"hidden_states"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        hs, ht = _hidden(inputs.student), _hidden(inputs.teacher)
        terms = [F.mse_loss(_f32(hs[s]), _f32(ht[t])) for s, t in _pairs(inputs, self.options.layers)]
        return torch.stack(terms).sum()


class HiddenCosine(compresskit.Loss):
    """Σ_l mean over real tokens of 1 − cos(H^S_l, H^T_m(l))."""

    name = "hidden_cosine"
    Options = LayerOptions
    requires = frozenset({"hidden_states"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        hs, ht = _hidden(inputs.student), _hidden(inputs.teacher)
        mask = inputs.student.attention_mask
        terms = []
        for s, t in _pairs(inputs, self.options.layers):
            distance = 1 - F.cosine_similarity(_f32(hs[s]), _f32(ht[t]), dim=-1)
            if mask is None:
                terms.append(distance.mean())
            else:
                m = mask.to(distance.dtype)
                terms.append((distance * m).sum() / m.sum().clamp(min=1))
        return torch.stack(terms).sum()


class AttentionScoreMSE(compresskit.Loss):
    """L_Attention = Σ_l MSE(O^S_l, O^T_l), O = QKᵀ/√d_k pre-softmax (KroneckerBERT Eq. 9, 14).

    Scores at padding positions (query or key) are set to 0 in both models before the MSE, so they never
    contribute; the mean runs over batch, heads, query and key (TinyBERT's convention).
    """

    name = "attention_score_mse"
    Options = LayerOptions
    requires = frozenset({"attention_scores"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        ss = _need(inputs.student.attention_scores, "attention scores")
        st = _need(inputs.teacher.attention_scores, "attention scores")
        terms = []
        for s, t in _pairs(inputs, self.options.layers):
            student, teacher = _f32(ss[s - 1]), _f32(st[t - 1])
            keep = _padding_mask(inputs.student, student)
            terms.append(F.mse_loss(student * keep, teacher * keep))
        return torch.stack(terms).sum()


class AttentionKL(compresskit.Loss):
    """Σ_l mean over heads and real query tokens of KL(P^T_l ‖ P^S_l), P = softmax(O + mask)."""

    name = "attention_kl"
    Options = LayerOptions
    requires = frozenset({"attention_scores"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        ss = _need(inputs.student.attention_scores, "attention scores")
        st = _need(inputs.teacher.attention_scores, "attention scores")
        terms = []
        for s, t in _pairs(inputs, self.options.layers):
            student, teacher = _f32(ss[s - 1]), _f32(st[t - 1])
            keep = _padding_mask(inputs.student, student)
            key_bias = (1 - keep.amax(dim=-2, keepdim=True)) * torch.finfo(student.dtype).min
            log_p_s = F.log_softmax(student + key_bias, dim=-1)
            log_p_t = F.log_softmax(teacher + key_bias, dim=-1)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).masked_fill(keep == 0, 0).sum(-1)
            rows = keep.amax(dim=-1).expand_as(kl)
            terms.append(kl.sum() / rows.sum().clamp(min=1))
        return torch.stack(terms).sum()


def _logits(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return _f32(_need(inputs.student.logits, "logits")), _f32(_need(inputs.teacher.logits, "logits"))


#: Problem types with a distribution over classes (or tokens, or positions) in the last logit axis.
CATEGORICAL = frozenset({"single_label_classification", "question_answering", "language_modeling"})


def _class_logits(inputs: LossInputs, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits for a softmax-based loss; one output column (a regression head) is an error."""
    s, t = _logits(inputs)
    if s.shape[-1] < 2:
        raise ConfigError(
            f"loss {loss!r} takes a softmax over the last logit axis, but the logits have "
            f"{s.shape[-1]} column (a regression head): the loss would be 0 with zero gradient. "
            "Use 'logit_mse' for logit KD on a regression task."
        )
    return s, t


class LogitSoftCE(compresskit.Loss):
    """Soft cross-entropy −Σ_c softmax(z^T/T)_c · log softmax(z^S/T)_c, batch mean (TinyBERT; T = 1)."""

    name = "logit_soft_ce"
    Options = TemperatureOptions
    requires = frozenset({"logits"})
    problem_types = CATEGORICAL

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _class_logits(inputs, self.name)
        temp = self.options.temperature
        return -(F.softmax(t / temp, dim=-1) * F.log_softmax(s / temp, dim=-1)).sum(-1).mean()


class LogitKL(compresskit.Loss):
    """Hinton et al. 2015: T² · KL(softmax(z^T/T) ‖ softmax(z^S/T)), batch mean."""

    name = "logit_kl"
    Options = TemperatureOptions
    requires = frozenset({"logits"})
    problem_types = CATEGORICAL

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _class_logits(inputs, self.name)
        temp = self.options.temperature
        log_p_t = F.log_softmax(t / temp, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s / temp, dim=-1))).sum(-1).mean()
        return kl * temp**2


class LogitMSE(compresskit.Loss):
    """MSE(z^S, z^T) on the logits: logit KD for regression (STS-B), usable for classification too."""

    name = "logit_mse"
    Options = WeightOptions
    requires = frozenset({"logits"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _logits(inputs)
        return F.mse_loss(s, t)


@dataclass(frozen=True)
class TaskOptions:
    weight: float = 1.0
    problem_type: Literal["auto", "single_label_classification", "regression"] = "auto"


class TaskLoss(compresskit.Loss):
    """L_Student: cross-entropy on the labels, or MSE for regression (``auto``: one logit → MSE)."""

    name = "task"
    Options = TaskOptions
    requires = frozenset({"logits", "labels"})
    needs_teacher = False
    problem_types = frozenset({"single_label_classification", "regression"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        logits = _f32(_need(inputs.student.logits, "logits"))
        labels = _need(inputs.batch.get("labels"), "labels")
        kind = self.options.problem_type
        if kind == "regression" or (kind == "auto" and logits.shape[-1] == 1):
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)


class MLMLoss(compresskit.Loss):
    """Masked-LM cross-entropy of the student's token logits; label −100 marks unmasked positions."""

    name = "mlm"
    Options = WeightOptions
    requires = frozenset({"logits", "labels"})
    needs_teacher = False
    problem_types = frozenset({"language_modeling"})

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        logits = _f32(_need(inputs.student.logits, "logits"))
        labels = _need(inputs.batch.get("labels"), "labels")
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


BUILTIN_LOSSES: list[type[compresskit.Loss]] = [
    EmbeddingMSE,
    HiddenMSE,
    HiddenCosine,
    AttentionScoreMSE,
    AttentionKL,
    LogitSoftCE,
    LogitKL,
    LogitMSE,
    TaskLoss,
    MLMLoss,
]


@compresskit.hookimpl
def compresskit_register_losses() -> list[type[compresskit.Loss]]:
    return list(BUILTIN_LOSSES)
