"""The Decomposition base class: the contract every decomposition plugin meets.

A decomposition turns one dense module (``Linear``, Hugging Face ``Conv1D``, ``Embedding``) into a
smaller module computing (approximately) the same map. It works in two steps so that a whole-model
plan can be made without allocating anything:

1. :meth:`Decomposition.make_spec` decides the JSON-able *spec* of the replacement (factor shapes,
   ranks, ...) from the module's shape alone, or raises :class:`DecompositionError` with the reason.
2. :meth:`Decomposition.build` creates the replacement from the module and the spec, initialised from
   the dense weight (``initialize=True``) or left empty to be filled by a saved state dict.

The saved compression plan stores the specs, so a compressed model reloads through ``build`` alone.

Cost convention (KroneckerBERT, Tahaei et al. 2022, §3.2-3.3 and Table 1): parameters are the numel of
weights and biases; FLOPs count linear maps only, ``(2n - 1)·m`` per token for a dense m×n matrix,
at 128 tokens; an embedding lookup costs no FLOPs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from compresskit.component import Component
from compresskit.errors import DecompositionError

#: Number of tokens at which FLOPs are reported (KroneckerBERT Table 1 convention).
DEFAULT_TOKENS = 128


@dataclass(frozen=True)
class Cost:
    """Parameters and forward FLOPs of one module (FLOPs for ``tokens`` tokens)."""

    params: int
    flops: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.flops + other.flops)


@runtime_checkable
class CompressedModule(Protocol):
    """What every module built by a decomposition offers besides ``forward``."""

    def dense_weight(self) -> torch.Tensor:
        """The reconstructed dense weight, in ``nn.Linear`` (out, in) / ``nn.Embedding`` layout."""
        ...

    def to_dense(self) -> nn.Module:
        """A plain ``nn.Linear`` / ``nn.Embedding`` with the reconstructed weight (and the bias)."""
        ...


def class_names(module: nn.Module) -> list[str]:
    """Class names along the MRO, so ``"Conv1D"`` or ``"Linear"`` match without imports."""
    return [cls.__name__ for cls in type(module).__mro__]


def is_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's GPT-2 style ``Conv1D``, which stores its weight as (in, out)."""
    return "Conv1D" in class_names(module) and not isinstance(module, nn.Conv1d)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a ``Linear`` or HF ``Conv1D``."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise DecompositionError(
            f"{type(module).__name__} has no 2-D weight; expected a Linear or Conv1D module."
        )
    rows, cols = weight.shape
    return (int(cols), int(rows)) if is_conv1d(module) else (int(rows), int(cols))


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a ``Linear`` / ``Conv1D`` or the (vocab, dim) table of an ``Embedding``."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise DecompositionError(f"{type(module).__name__} has no weight tensor to decompose.")
    return weight.t() if is_conv1d(module) else weight


def dense_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias of a linear-like module, or ``None``."""
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def dense_linear_flops(out_features: int, in_features: int, tokens: int = DEFAULT_TOKENS) -> int:
    """``(2n - 1)·m`` multiply-adds per token for an m×n matrix (KroneckerBERT §3.2.3), times tokens."""
    return (2 * in_features - 1) * out_features * tokens


def dense_cost(module: nn.Module, tokens: int = DEFAULT_TOKENS) -> Cost:
    """Cost of an uncompressed ``Linear`` / ``Conv1D`` / ``Embedding`` under the convention above."""
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if "Embedding" in class_names(module):
        return Cost(params, 0)
    out_features, in_features = linear_shape(module)
    return Cost(params, dense_linear_flops(out_features, in_features, tokens))


class Decomposition(Component):
    """Base class of decomposition plugins (registered through ``compresskit_register_decompositions``).

    Subclasses set ``name``, ``Options`` (a frozen dataclass), ``module_types`` and implement
    :meth:`make_spec`, :meth:`build` and :meth:`compressed_cost`.
    """

    #: Class names (matched along the MRO) of the modules this decomposition can replace.
    module_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv1D")

    @abstractmethod
    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        """Decide the replacement's JSON-able spec from shapes alone; raise DecompositionError if not."""

    @abstractmethod
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        """Create the replacement on the module's device and dtype, never aliasing its tensors."""

    @abstractmethod
    def compressed_cost(
        self, module: nn.Module, spec: Mapping[str, Any], tokens: int = DEFAULT_TOKENS
    ) -> Cost:
        """Parameters and FLOPs of the replacement described by ``spec``."""

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        """Options under which :meth:`decompose` reproduces ``module`` exactly, or ``None`` if none."""
        return None

    def handles(self, module: nn.Module) -> bool:
        """Whether the module's type is one this decomposition replaces."""
        return bool(set(self.module_types) & set(class_names(module)))

    def check(self, module: nn.Module, name: str) -> str | None:
        """``None`` when ``module`` can be decomposed, else the reason it cannot."""
        if not self.handles(module):
            return (
                f"{type(module).__name__} is not a type {self.name!r} handles "
                f"({', '.join(self.module_types)})"
            )
        try:
            self.make_spec(module, name)
        except DecompositionError as exc:
            return str(exc)
        return None

    def decompose(self, module: nn.Module, name: str) -> nn.Module:
        """Make the spec and build an initialised replacement of ``module``."""
        return self.build(module, self.make_spec(module, name))

    def estimate(self, module: nn.Module, name: str, tokens: int = DEFAULT_TOKENS) -> tuple[Cost, Cost]:
        """``(before, after)`` costs of decomposing ``module``."""
        spec = self.make_spec(module, name)
        return dense_cost(module, tokens), self.compressed_cost(module, spec, tokens)
