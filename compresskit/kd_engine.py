"""The knowledge-distillation engine: batch format, student wrapper, loss plan, teacher cache and
``compute_loss``.

Any distiller can use it (the built-in ones do); :mod:`compresskit.kd_stage` runs one stage on it.

Batch format: a plain batch (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``) is fed to
both models. When teacher and student use different tokenizers the batch carries ``student_inputs`` and
``teacher_inputs`` (two dicts of model inputs) beside ``labels`` (see :mod:`.data`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresskit.capture import (
    EncoderParts,
    enable_score_capture,
    find_encoder_parts,
    model_outputs,
    restore_attention,
)
from compresskit.distillation import (
    DistillationOutputs,
    LayerMapping,
    Loss,
    LossInputs,
    check_loss_weight,
    problem_type_of,
)
from compresskit.errors import ConfigError
from compresskit.registry import Registry

#: Keys of a plain batch that are model inputs (everything else, e.g. ``labels``, is not passed on).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def split_batch(batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(student_inputs, teacher_inputs)`` of a batch in either format (see the module docstring)."""
    if "student_inputs" in batch or "teacher_inputs" in batch:
        if not ("student_inputs" in batch and "teacher_inputs" in batch):
            raise ConfigError(
                "a batch with 'student_inputs' must also have 'teacher_inputs' (and vice versa)."
            )
        return dict(batch["student_inputs"]), dict(batch["teacher_inputs"])
    inputs = {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}
    return inputs, inputs


class DistillationModel(nn.Module):
    """The student plus the learned width projections, trained (and checkpointed) together.

    ``projection`` maps the student's hidden states to the teacher's width, ``H^S·W_h`` (TinyBERT,
    Jiao et al. 2020, Eq. 8), when the widths differ; it is ``None`` otherwise.
    """

    def __init__(self, student: nn.Module, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(
        self, inputs: Mapping[str, Any], *, parts: EncoderParts, attention_scores: bool
    ) -> DistillationOutputs:
        """The student's outputs on ``inputs`` (hidden states projected to the teacher's width).

        The Trainer calls this through whatever wraps the model (DistributedDataParallel under
        ``accelerate launch``, accelerate's autocast), so the student's gradients are all-reduced and
        its forward runs in the configured precision.
        """
        outputs = model_outputs(self.student, inputs, parts=parts, attention_scores=attention_scores)
        return _project(outputs, self.projection)


def hidden_size(model: nn.Module) -> int | None:
    """The model's hidden width from its config, if it has one."""
    config = getattr(model, "config", None)
    value = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    return int(value) if value else None


def model_fingerprint(model: nn.Module) -> str:
    """Short hash of a model's class and parameter names/shapes (identifies a teacher in checkpoints)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()[:16]


def build_losses(registry: Registry, spec: Mapping[str, Any], where: str) -> list[Loss]:
    """Losses from ``{name: weight}`` or ``{name: {option: value}}`` (weights and options per loss)."""
    if not spec:
        raise ConfigError(f"{where}: no loss given; name at least one, e.g. {{hidden_mse = 1.0}}.")
    losses = []
    for name, value in spec.items():
        check_loss_weight(value, f"{where}.{name}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            options: Mapping[str, Any] = {"weight": float(value)}
        elif isinstance(value, Mapping):
            options = value
        else:
            raise ConfigError(
                f"{where}.{name}: expected a weight (number) or a table of options, got {value!r}."
            )
        losses.append(registry.create("loss", name, options, where=f"{where}.{name}"))
    return losses


def available_outputs(model: nn.Module, *, scores: bool) -> frozenset[str]:
    """What :func:`model_outputs` can give for ``model``: hidden states, logits of a head, scores."""
    found = {"hidden_states", "labels"}
    if "For" in type(model).__name__:  # transformers' heads: ...ForSequenceClassification, ...ForMaskedLM
        found.add("logits")
    if scores:
        found.add("attention_scores")
    return frozenset(found)


@dataclass
class LossPlan:
    """Everything ``compute_loss`` needs for one stage, checked before training starts."""

    teacher: nn.Module
    losses: list[Loss]
    mapping: LayerMapping
    student_parts: EncoderParts
    teacher_parts: EncoderParts
    scores: bool
    cache: dict[str, DistillationOutputs] | None = None
    cache_device: str = "cpu"
    stats: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})
    previous_attention: list[tuple[nn.Module, str | None]] = field(default_factory=list)

    def restore(self) -> None:
        """Give the models back their own attention implementation (e.g. sdpa) after training."""
        for model, previous in self.previous_attention:
            restore_attention(model, previous)
        self.previous_attention.clear()


def plan_losses(
    student: nn.Module,
    teacher: nn.Module,
    losses: list[Loss],
    mapping_spec: Any,
    *,
    cache: bool,
    where: str,
) -> LossPlan:
    """Resolve layers, build the mapping, switch attention capture on when needed and check outputs."""
    scores = any("attention_scores" in loss.requires for loss in losses)
    models = {"student": student, "teacher": teacher}
    parts = {role: find_encoder_parts(model) for role, model in models.items()}
    problem_type = problem_type_of(student)
    for loss in losses:
        loss.check_problem_type(problem_type, where=f"{where}.losses")
    previous = [(model, enable_score_capture(model)) for model in models.values()] if scores else []
    for loss in losses:
        loss.check(available_outputs(student, scores=scores), model="student", where=f"{where}.losses")
        if loss.needs_teacher:
            loss.check(available_outputs(teacher, scores=scores), model="teacher", where=f"{where}.losses")
    depths = len(parts["student"].layers), len(parts["teacher"].layers)
    if mapping_spec == "auto":
        mapping_spec = "one_to_one" if depths[0] == depths[1] else "uniform"
    mapping = LayerMapping.build(mapping_spec, *depths, where=f"{where}.mapping")
    plan = LossPlan(
        teacher, losses, mapping, parts["student"], parts["teacher"], scores, {} if cache else None
    )
    plan.previous_attention.extend(previous)
    return plan


def make_projection(student: nn.Module, teacher: nn.Module, plan: LossPlan) -> nn.Module | None:
    """A linear map student width → teacher width when hidden-state losses compare different widths."""
    uses_hidden = any("hidden_states" in loss.requires and loss.needs_teacher for loss in plan.losses)
    widths = hidden_size(student), hidden_size(teacher)
    if not uses_hidden or widths[0] == widths[1]:
        return None
    if None in widths:
        raise ConfigError("cannot tell the hidden widths of student and teacher (no config.hidden_size).")
    return nn.Linear(int(widths[0] or 0), int(widths[1] or 0))


def _cache_key(inputs: Mapping[str, Any]) -> str:
    digest = hashlib.sha1()
    for key in sorted(inputs):
        value = inputs[key]
        if isinstance(value, torch.Tensor):
            digest.update(key.encode())
            digest.update(str(tuple(value.shape)).encode())
            digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def teacher_outputs(plan: LossPlan, inputs: Mapping[str, Any]) -> DistillationOutputs:
    """The teacher's outputs without gradients, from the cache when enabled and already seen."""
    key = _cache_key(inputs) if plan.cache is not None else ""
    if plan.cache is not None and key in plan.cache:
        plan.stats["hits"] += 1
        device = next(iter(inputs.values())).device
        return plan.cache[key].to(device)
    with torch.no_grad():
        out = model_outputs(plan.teacher, inputs, parts=plan.teacher_parts, attention_scores=plan.scores)
    if plan.cache is not None:
        plan.stats["misses"] += 1
        plan.cache[key] = out.detach().to(plan.cache_device)
    return out


def _project(outputs: DistillationOutputs, projection: nn.Module | None) -> DistillationOutputs:
    if projection is None or outputs.hidden_states is None:
        return outputs
    outputs.hidden_states = tuple(projection(h) for h in outputs.hidden_states)
    return outputs


def make_compute_loss(plan: LossPlan) -> Callable[[nn.Module, Mapping[str, Any]], dict[str, torch.Tensor]]:
    """``compute_loss(model, batch)`` for the Trainer, ``model`` a :class:`DistillationModel` (or what wraps
    it): the weighted sum of the plan's losses.

    Returns ``{"loss": Σ_k w_k·L_k, name_k: w_k·L_k, ...}`` (KroneckerBERT Eq. 14 with the configured
    weights).
    """

    def compute_loss(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        student_inputs, teacher_inputs = split_batch(batch)
        # through the model's own forward (a DistillationModel, possibly wrapped): never model.module
        student = model(student_inputs, parts=plan.student_parts, attention_scores=plan.scores)
        needs_teacher = any(loss.needs_teacher for loss in plan.losses)
        teacher = teacher_outputs(plan, teacher_inputs) if needs_teacher else DistillationOutputs()
        inputs = LossInputs(student, teacher, batch, plan.mapping)
        terms = {loss.name: _checked_call(loss, inputs) for loss in plan.losses}
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}

    return compute_loss


def _checked_call(loss: Loss, inputs: LossInputs) -> torch.Tensor:
    try:
        return loss(inputs)
    except RuntimeError as exc:
        if "size" not in str(exc) and "shape" not in str(exc):
            raise
        raise ConfigError(
            f"loss {loss.name!r}: student and teacher outputs do not line up ({exc}). Token-level losses "
            "need the same tokenization for both models and equal head counts; with different "
            "tokenizers use only logit losses."
        ) from None
