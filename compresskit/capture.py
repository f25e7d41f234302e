"""Capture intermediate outputs of any model: forward hooks by module path, and pre-softmax attention.

Three pieces:

* :func:`capture_outputs` — a context manager that registers forward hooks on named modules and fills a
  dict ``path -> output`` while the model runs (works for any ``nn.Module``).
* :func:`find_encoder_parts` — finds, in a Hugging Face encoder, the embedding module (whose output is
  ``hidden_states[0]``) and the list of transformer layers (whose outputs are ``hidden_states[1:]``).
* :func:`record_attention_scores` — records the *pre-softmax* attention scores ``O = QKᵀ/√d_k`` of every
  layer (KroneckerBERT, Tahaei et al. 2022, Eq. 9; TinyBERT's attention loss). It registers an attention
  function with transformers' ``AttentionInterface`` that is exactly eager attention plus the recording,
  and switches the model to it (:func:`enable_score_capture`).

:func:`model_outputs` combines them into a :class:`~compresskit.distillation.DistillationOutputs`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compresskit.distillation import DistillationOutputs
from compresskit.errors import ConfigError

#: Name under which the recording attention function is registered with transformers.
ATTENTION_IMPLEMENTATION = "compresskit_capture"

_active_recorder: contextvars.ContextVar[_ScoreRecorder | None] = contextvars.ContextVar(
    "compresskit_attention_recorder", default=None
)


@dataclass(frozen=True)
class EncoderParts:
    """Module paths of an encoder's embedding module and its transformer layers, in order."""

    embeddings: str
    layers: tuple[str, ...]


def _first_tensor(output: Any) -> Any:
    """Hidden state of a module output: the tensor itself, or the first element of a tuple/ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return next(iter(output.values()))
    if isinstance(output, Sequence) and output:
        return output[0]
    return output


@contextlib.contextmanager
def capture_outputs(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Record the output of each module in ``paths`` (dotted names from ``named_modules``).

    Yields a dict that, after a forward pass inside the ``with`` block, maps each path to the module's
    output (its first tensor when the module returns a tuple). Hooks are removed on exit.
    """
    modules = dict(model.named_modules())
    missing = [p for p in paths if p not in modules]
    if missing:
        from compresskit.errors import did_you_mean

        raise ConfigError(
            f"capture: model {type(model).__name__} has no module {missing[0]!r}."
            f"{did_you_mean(missing[0], modules)} Use names from model.named_modules()."
        )
    captured: dict[str, Any] = {}
    handles = []
    for path in paths:

        def hook(_module: nn.Module, _inputs: Any, output: Any, path: str = path) -> None:
            captured[path] = _first_tensor(output)

        handles.append(modules[path].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def find_encoder_parts(model: nn.Module) -> EncoderParts:
    """Locate the embedding module and the transformer layers of a Hugging Face encoder.

    The layers are the longest ``nn.ModuleList`` whose children all share one class; the embedding
    module is the module named ``embeddings`` (BERT, RoBERTa, ...) or else the parent of the input
    embedding table.
    """
    layers: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(layers):
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and not isinstance(module[0], nn.Linear | nn.Embedding):
                layers = tuple(f"{name}.{i}" if name else str(i) for i in range(len(module)))
    embeddings = _find_embeddings(model)
    if not layers or embeddings is None:
        raise ConfigError(
            f"capture: could not find the transformer layers and embedding module of "
            f"{type(model).__name__}; name them explicitly (a list of layer module paths)."
        )
    return EncoderParts(embeddings, layers)


def _find_embeddings(model: nn.Module) -> str | None:
    for name, _module in model.named_modules():
        if name.split(".")[-1] == "embeddings":
            return name
    getter = getattr(model, "get_input_embeddings", None)
    table = getter() if callable(getter) else None
    for name, module in model.named_modules():
        if table is not None and any(child is table for child in module.children()):
            return name
    return None


class _ScoreRecorder:
    """Collects the scores of each attention module of one forward pass, by layer index."""

    def __init__(self, layer_of: dict[int, int], num_layers: int) -> None:
        self.layer_of = layer_of
        self.scores: list[torch.Tensor | None] = [None] * num_layers

    def record(self, module: nn.Module, scores: torch.Tensor) -> None:
        index = self.layer_of.get(id(module))
        if index is not None and self.scores[index] is None:  # self-attention comes first in a layer
            self.scores[index] = scores


def recording_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that also records the pre-softmax scores ``QKᵀ·scaling`` (before the mask).

    ``softmax(QKᵀ/√d + M)·V`` with the additive mask ``M``, exactly as transformers' eager attention;
    the unmasked scores go to the active :func:`record_attention_scores` context, if any.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    recorder = _active_recorder.get()
    if recorder is not None:
        recorder.record(module, scores)
    weights = scores if attention_mask is None else scores + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register_attention_function() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, recording_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_IMPLEMENTATION, eager_mask)


def enable_score_capture(model: nn.Module) -> str | None:
    """Switch a transformers model to the recording attention function (same maths as eager).

    Returns the previous implementation name, for :func:`restore_attention`. Raises
    :class:`ConfigError` when the model does not route attention through transformers' attention
    interface (then pre-softmax scores cannot be captured).
    """
    _register_attention_function()
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ConfigError(
            f"capture: {type(model).__name__} is not a transformers model with a configurable attention "
            "implementation, so its pre-softmax attention scores cannot be captured; drop the "
            "attention-score losses for it."
        )
    previous = config._attn_implementation
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if callable(setter):
            setter(ATTENTION_IMPLEMENTATION)
        else:
            config._attn_implementation = ATTENTION_IMPLEMENTATION
    except (ValueError, ImportError) as exc:
        raise ConfigError(
            f"capture: could not switch {type(model).__name__} to the score-recording attention: {exc}"
        ) from None
    for module in model.modules():  # sub-configs (e.g. encoder-decoder) follow their own config objects
        sub = getattr(module, "config", None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            sub._attn_implementation = ATTENTION_IMPLEMENTATION
    return previous if previous != ATTENTION_IMPLEMENTATION else None


def restore_attention(model: nn.Module, previous: str | None) -> None:
    """Put back the attention implementation that :func:`enable_score_capture` replaced."""
    if previous is None:
        return
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(previous)
    for module in model.modules():
        sub = getattr(module, "config", None)
        if sub is not None and getattr(sub, "_attn_implementation", None) == ATTENTION_IMPLEMENTATION:
            sub._attn_implementation = previous


@contextlib.contextmanager
def record_attention_scores(model: nn.Module, parts: EncoderParts) -> Iterator[list[torch.Tensor | None]]:
    """Yield a list that receives, per layer, the pre-softmax scores (batch, heads, query, key).

    The model must have been switched with :func:`enable_score_capture`.
    """
    modules = dict(model.named_modules())
    layer_of = {id(sub): i for i, path in enumerate(parts.layers) for sub in modules[path].modules()}
    recorder = _ScoreRecorder(layer_of, len(parts.layers))
    token = _active_recorder.set(recorder)
    try:
        yield recorder.scores
    finally:
        _active_recorder.reset(token)


def model_outputs(
    model: nn.Module,
    inputs: Mapping[str, Any],
    *,
    parts: EncoderParts | None = None,
    attention_scores: bool = False,
    extra_paths: Sequence[str] = (),
) -> DistillationOutputs:
    """Run ``model(**inputs)`` and collect logits, hidden states, attention scores and ``extra_paths``.

    ``hidden_states[0]`` is the embedding module's output and ``hidden_states[l]`` the output of layer
    ``l`` (after its residual and LayerNorm), as in transformers' ``output_hidden_states``.
    """
    parts = parts or find_encoder_parts(model)
    paths = [parts.embeddings, *parts.layers, *extra_paths]
    with contextlib.ExitStack() as stack:
        captured = stack.enter_context(capture_outputs(model, paths))
        scores = stack.enter_context(record_attention_scores(model, parts)) if attention_scores else None
        result = model(**inputs)
    if scores is not None and any(s is None for s in scores):
        raise ConfigError(
            f"capture: attention scores were requested but {type(model).__name__} did not call the "
            "recording attention function (call compresskit.capture.enable_score_capture(model) first, "
            "or drop the attention-score losses)."
        )
    hidden = tuple(captured[p] for p in (parts.embeddings, *parts.layers))
    return DistillationOutputs(
        logits=getattr(result, "logits", None),
        hidden_states=hidden,
        attention_scores=tuple(s for s in scores if s is not None) if scores is not None else None,
        attention_mask=inputs.get("attention_mask"),
        loss=getattr(result, "loss", None),
        captured={p: captured[p] for p in extra_paths},
    )
