"""Dynamic int8 quantisation that composes with compression.

:func:`quantize_dynamic` replaces every module offering ``quantized_dynamic()`` (a compressed layer whose
factor GEMMs can run in int8: ``KroneckerLinear``, ``LowRankLinear``) by the module it returns, then hands
the remaining plain ``nn.Linear`` layers to ``torch.ao.quantization.quantize_dynamic`` (int8 weights,
activations quantised per batch). Embeddings, LayerNorms and the tensor-network layers stay in float.
The result is for CPU inference; it cannot be trained, and :func:`compresskit.save` refuses it (int8
packed weights are not safetensors tensors): save the float model and quantise after loading, or export
it with ``compresskit export --quantize int8``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def quantize_dynamic(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """An int8 dynamically quantised copy of ``model`` (``model`` itself with ``inplace``), in eval mode."""
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    replacements = [
        (name, module.quantized_dynamic())
        for name, module in target.named_modules()
        if name and callable(getattr(module, "quantized_dynamic", None))
    ]
    for name, new in replacements:
        parent_name, _, attribute = name.rpartition(".")
        setattr(target.get_submodule(parent_name) if parent_name else target, attribute, new)
    torch.ao.quantization.quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return target


def is_quantized(model: nn.Module) -> bool:
    """True when any submodule holds torch's quantised (packed int8) parameters."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
