"""What the tensorly-backed layers share: tensorising W, factor choice, rank budgets, checks, FLOPs.

A dense m×n weight is *tensorised* (Novikov et al. 2015, "Tensorizing Neural Networks", §3) by
factoring m = m_1···m_d and n = n_1···n_e and reading W as the (d + e)-way tensor
W[i_1, …, i_d, j_1, …, j_e] (row index i = (i_1, …, i_d), column index j = (j_1, …, j_e), row-major).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from compresskit import (
    CompressedModuleMixin,
    Decomposition,
    DecompositionError,
    MissingDependencyError,
    dense_bias,
    dense_weight,
    linear_shape,
)
from compresskit.plugin import FACTORED_OR_DENSE, FactoredOrDense, all_finite, register_family

for _family in ("tucker_linear", "cp_linear", "tensor_train_linear"):
    register_family(_family, FACTORED_OR_DENSE)

#: Fraction of the dense weight's parameters kept when neither ``rank`` nor ``param_ratio`` is given.
DEFAULT_PARAM_RATIO = 0.25


def load_tensorly() -> ModuleType:
    """Import tensorly (with ``tensorly.decomposition``) on first use: it is slow to import."""
    try:
        import tensorly
        import tensorly.decomposition
    except ImportError as exc:
        raise MissingDependencyError(
            f"the tucker, cp and tensor_train decompositions need tensorly ({exc}); "
            "install it with `pip install tensorly`."
        ) from exc
    return tensorly


@contextlib.contextmanager
def pytorch_backend() -> Iterator[Any]:
    """Yield tensorly set to its PyTorch backend inside the block only (the global one is restored)."""
    tl = load_tensorly()
    with tl.backend_context("pytorch"):
        yield tl


def describe(module: nn.Module, name: str) -> str:
    """``"'enc.q' (Linear 24x36)"`` for error messages."""
    weight = getattr(module, "weight", None)
    shape = "x".join(str(d) for d in weight.shape) if isinstance(weight, torch.Tensor) else "?"
    return f"{name!r} ({type(module).__name__} {shape})" if name else f"{type(module).__name__} {shape}"


def linear_dims(decomposition: Decomposition, module: nn.Module, where: str) -> tuple[int, int]:
    """``(m, n)`` of a Linear / Conv1D this decomposition handles, with finite weights."""
    if not decomposition.handles(module):
        raise DecompositionError(
            f"{where}: {decomposition.name} handles {', '.join(decomposition.module_types)} modules, "
            f"not {type(module).__name__}. Exclude it from the group or use another decomposition."
        )
    try:
        shape = linear_shape(module)
    except DecompositionError as exc:
        raise DecompositionError(f"{where}: {exc}") from None
    check_finite(dense_weight(module), where)
    return shape


def check_finite(weight: torch.Tensor, where: str) -> None:
    """Raise :class:`DecompositionError` if a materialised weight holds NaN or Inf."""
    if all_finite(weight):
        return
    raise DecompositionError(
        f"{where}: the weight holds NaN/Inf values; a factorisation needs finite weights. "
        "Check the checkpoint, or exclude this module from the group."
    )


def balanced_factors(size: int, order: int) -> tuple[int, ...] | None:
    """The factorisation of ``size`` into ``order`` factors ≥ 2 with the smallest largest factor.

    Ties prefer the most even split; factors are returned ascending. ``None`` when none exists
    (e.g. a prime ``size`` and ``order`` ≥ 2).
    """
    if order == 1:
        return (size,)
    best: tuple[int, ...] | None = None
    for candidate in _factorisations(size, order, 2):
        if best is None or (max(candidate), -min(candidate)) < (max(best), -min(best)):
            best = candidate
    return best


def _factorisations(size: int, order: int, smallest: int) -> Iterator[tuple[int, ...]]:
    if order == 1:
        if size >= smallest:
            yield (size,)
        return
    factor = smallest
    while factor**order <= size:
        if size % factor == 0:
            for rest in _factorisations(size // factor, order - 1, factor):
                yield (factor, *rest)
        factor += 1


def resolve_factors(
    given: Sequence[int] | None, size: int, order: int, side: str, where: str
) -> tuple[int, ...]:
    """Validate user factors of ``size`` or pick balanced ones; ``side`` is "out" or "in"."""
    if given is not None:
        if any(f < 1 for f in given) or math.prod(given) != size:
            raise DecompositionError(
                f"{where}: {side}_factors {list(given)} must be positive and multiply to {size}."
            )
        return tuple(given)
    found = balanced_factors(size, order)
    if found is None:
        raise DecompositionError(
            f"{where}: {size} has no factorisation into {order} factors ≥ 2 (it is prime or too small); "
            f"give {side}_factors explicitly (factors of 1 are allowed) or use order = 1."
        )
    return found


def largest_within(cost: Callable[[int], int], budget: float, max_rank: int, where: str, what: str) -> int:
    """The largest rank r in 1..max_rank with ``cost(r) ≤ budget`` (``cost`` non-decreasing)."""
    if cost(1) > budget:
        raise DecompositionError(
            f"{where}: even rank 1 needs {cost(1)} weights, more than the budget of {budget:.0f} "
            f"({what}); raise param_ratio."
        )
    low, high = 1, max_rank
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= budget else (low, mid - 1)
    return low


def tensorised_weight(module: nn.Module, shape: Sequence[int]) -> torch.Tensor:
    """The (m, n) weight in float32 (float64 kept), reshaped to ``shape``, detached, on its device."""
    weight = dense_weight(module).detach()
    work = weight.to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    return work.reshape(*shape)


def contraction_flops(outputs: int, summed: int) -> int:
    """FLOPs of computing ``outputs`` sums of ``summed`` products each: ``outputs·(2·summed − 1)``."""
    return outputs * (2 * summed - 1)


def bias_params(spec: dict[str, Any] | Any) -> int:
    """Bias parameters of a linear spec."""
    return int(spec["out_features"]) if spec.get("bias") else 0


class TensorisedLinear(CompressedModuleMixin, nn.Module, FactoredOrDense):
    """Base of the factorised linear layers: bias, sizes, ``to_dense()`` from ``dense_weight()``.

    ``forward`` is chosen by measured dispatch (``compresskit.dispatch``): the subclass's factor
    contractions (``factored_forward``) or one product with the reconstructed weight (``dense``: rebuilt
    each training step, cached in inference), whichever is faster for the call's regime. At high ranks the
    contractions cost more FLOPs than the dense matrix, and then ``dense`` wins.
    """

    def __init__(self, out_features: int, in_features: int, bias: bool) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatched_forward(x)

    def dispatch_signature(self) -> str:
        return f"{self.extra_repr()} bias={int(self.bias is not None)}"

    def dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the reconstructed weight and the bias."""
        weight = self.dense_weight().detach()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None and dense.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias if self.bias is not None else y


def copy_bias(new: TensorisedLinear, module: nn.Module) -> None:
    """Copy the old module's bias into ``new`` (never aliasing it)."""
    bias = dense_bias(module)
    if new.bias is not None and bias is not None:
        with torch.no_grad():
            new.bias.copy_(bias)


def prepare_init(module: nn.Module, where: str) -> None:
    """Refuse to initialise from a meta or non-finite weight."""
    weight = dense_weight(module)
    if weight.is_meta:
        raise DecompositionError(f"{where}: the weight is on the meta device; load real weights first.")
    check_finite(weight, where)


@dataclass(frozen=True)
class FactorOptions:
    """Options shared by the tensorised layers.

    - ``out_factors`` / ``in_factors``: how m and n are factored (their product must be m / n; 1s are
      allowed). Left out, each is split into ``order`` balanced factors ≥ 2.
    - ``order``: number of factors per side for the automatic split (1 = no tensorisation).
    - ``param_ratio``: fraction of the dense weight's parameters to keep (0.25 = 4× fewer); the ranks
      are chosen as the largest uniform rank within that budget. Used when no ``rank`` is given
      (default ``DEFAULT_PARAM_RATIO``).
    """

    out_factors: tuple[int, ...] | None = None
    in_factors: tuple[int, ...] | None = None
    order: int = 2
    param_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.order < 1:
            raise ValueError(f"order must be at least 1, got {self.order}")
        if self.param_ratio is not None and not self.param_ratio > 0:
            raise ValueError(f"param_ratio must be positive, got {self.param_ratio}")
        if getattr(self, "rank", None) is not None and self.param_ratio is not None:
            raise ValueError("give rank or param_ratio, not both")

    def factors(self, m: int, n: int, where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(out_factors, in_factors)`` for an m×n weight."""
        out = resolve_factors(self.out_factors, m, self.order, "out", where)
        inp = resolve_factors(self.in_factors, n, self.order, "in", where)
        return out, inp

    def budget(self, m: int, n: int) -> float:
        """Weight parameters allowed by ``param_ratio`` (or the default ratio)."""
        ratio = self.param_ratio if self.param_ratio is not None else DEFAULT_PARAM_RATIO
        return ratio * m * n


def lossless_factors(m: int, n: int, order: int = 2) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Balanced factors when they exist, else the dimension padded with 1s (always valid)."""
    out = balanced_factors(m, order) or (m, *([1] * (order - 1)))
    inp = balanced_factors(n, order) or (n, *([1] * (order - 1)))
    return out, inp
