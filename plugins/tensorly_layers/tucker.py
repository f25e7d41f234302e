"""Tucker-factorised linear layer (the ``tucker`` decomposition).

The tensorised weight (see :mod:`.common`) W[i_1..i_d, j_1..j_e] is approximated by a Tucker model
(Kolda & Bader 2009, "Tensor Decompositions and Applications", §4)

    W ≈ G ×_1 U_1 ··· ×_d U_d ×_{d+1} V_1 ··· ×_{d+e} V_e,

core G of shape (r_1..r_d, s_1..s_e), output factors U_k (m_k×r_k), input factors V_j (n_j×s_j),
initialised by HOSVD followed by ``iterations`` HOOI sweeps (``tensorly.decomposition.tucker``).
The forward never builds W: x (n_1..n_e) is projected mode by mode onto the V_j, multiplied by the
core matricised as (∏r)×(∏s), then expanded mode by mode by the U_k.

Params: ∏r·∏s + Σ m_k r_k + Σ n_j s_j (+ bias). FLOPs per token, in that order of contraction:
Σ_j (∏_{i<j} s_i)·s_j·(∏_{i>j} n_i)·(2n_j − 1) + ∏r·(2∏s − 1)
+ Σ_k (∏_{i<k} m_i)·m_k·(∏_{i>k} r_i)·(2r_k − 1).
Exact at ranks r_k = min(dim_k, ∏ of the other dims) (:meth:`Tucker.lossless_options`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import compresskit
from compresskit import Cost

from .common import (
    FactorOptions,
    TensorisedLinear,
    bias_params,
    contraction_flops,
    copy_bias,
    describe,
    largest_within,
    linear_dims,
    lossless_factors,
    prepare_init,
    pytorch_backend,
    tensorised_weight,
)


@dataclass(frozen=True)
class TuckerOptions(FactorOptions):
    """``rank``: one rank for every mode (capped per mode) or one per mode (out modes, then in modes).

    ``iterations``: HOOI sweeps after the HOSVD initialisation (0 = plain truncated HOSVD).
    See :class:`.common.FactorOptions` for the factor and budget options.
    """

    rank: int | tuple[int, ...] | None = None
    iterations: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError(f"iterations must be at least 0, got {self.iterations}")


class TuckerLinear(TensorisedLinear):
    """y = x·Wᵀ + b with W held as a Tucker core and one factor per tensor mode."""

    dispatch_family = "tucker_linear"

    def __init__(
        self,
        out_factors: Sequence[int],
        in_factors: Sequence[int],
        ranks: Sequence[int],
        bias: bool,
    ) -> None:
        super().__init__(math.prod(out_factors), math.prod(in_factors), bias)
        self.out_shape, self.in_shape = tuple(out_factors), tuple(in_factors)
        self.ranks = tuple(ranks)
        d = len(self.out_shape)
        self.core = nn.Parameter(torch.empty(self.ranks))
        self.out_factors = nn.ParameterList(
            nn.Parameter(torch.empty(m, r)) for m, r in zip(self.out_shape, self.ranks[:d], strict=True)
        )
        self.in_factors = nn.ParameterList(
            nn.Parameter(torch.empty(n, s)) for n, s in zip(self.in_shape, self.ranks[d:], strict=True)
        )

    def factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        t = x.reshape(-1, 1, self.in_features)
        for factor in self.in_factors:  # project input mode j: (B, S, n_j, N) -> (B, S·s_j, N)
            n = factor.shape[0]
            t = torch.einsum("bsnr,nt->bstr", t.reshape(t.shape[0], t.shape[1], n, -1), factor)
            t = t.reshape(t.shape[0], -1, t.shape[-1])
        d = len(self.out_shape)
        core = self.core.reshape(math.prod(self.ranks[:d]), -1)
        t = t.reshape(t.shape[0], -1) @ core.T
        t = t.reshape(t.shape[0], 1, -1)
        for factor in self.out_factors:  # expand output mode k: (B, M, r_k, R) -> (B, M·m_k, R)
            r = factor.shape[1]
            t = torch.einsum("bMrR,mr->bMmR", t.reshape(t.shape[0], t.shape[1], r, -1), factor)
            t = t.reshape(t.shape[0], -1, t.shape[-1])
        return self.add_bias(t.reshape(*lead, self.out_features))

    def dense_weight(self) -> torch.Tensor:
        """G ×_k U_k ×_j V_j reshaped to (m, n), via ``tensorly.tucker_to_tensor``."""
        with pytorch_backend() as tl:
            full = tl.tucker_to_tensor((self.core, [*self.out_factors, *self.in_factors]))
        return full.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"out={self.out_shape}, in={self.in_shape}, ranks={self.ranks}"


def max_tucker_ranks(dims: Sequence[int]) -> tuple[int, ...]:
    """Largest useful rank per mode: min(dim_k, ∏ of the other dims) (the unfolding's rank bound)."""
    total = math.prod(dims)
    return tuple(min(d, total // d) for d in dims)


def feasible(ranks: Sequence[int]) -> tuple[int, ...]:
    """Lower ranks until r_k ≤ ∏_{i≠k} r_i for every k (a Tucker core needs it)."""
    out = list(ranks)
    changed = True
    while changed:
        changed = False
        for k, r in enumerate(out):
            others = math.prod(out[:k] + out[k + 1 :])
            if r > others:
                out[k], changed = others, True
    return tuple(out)


def tucker_params(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Weight parameters: ∏ranks + Σ dim_k·r_k."""
    dims = (*out_shape, *in_shape)
    return math.prod(ranks) + sum(d * r for d, r in zip(dims, ranks, strict=True))


class Tucker(compresskit.Decomposition):
    """Tucker factorisation of the tensorised weight (HOSVD/HOOI initialisation through tensorly)."""

    name = "tucker"
    Options = TuckerOptions
    module_types = ("Linear", "Conv1D")
    options: TuckerOptions

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        where = describe(module, name)
        m, n = linear_dims(self, module, where)
        out_shape, in_shape = self.options.factors(m, n, where)
        ranks = self._ranks((*out_shape, *in_shape), m, n, where)
        return {
            "out_features": m,
            "in_features": n,
            "out_factors": list(out_shape),
            "in_factors": list(in_shape),
            "ranks": list(ranks),
            "bias": compresskit.dense_bias(module) is not None,
        }

    def _ranks(self, dims: tuple[int, ...], m: int, n: int, where: str) -> tuple[int, ...]:
        limits = max_tucker_ranks(dims)
        rank = self.options.rank
        if isinstance(rank, tuple):
            return _check_explicit(rank, dims, limits, where)
        if rank is not None:
            if not 1 <= rank <= max(limits):
                raise compresskit.DecompositionError(
                    f"{where}: Tucker rank {rank} is out of range for mode sizes {list(dims)}; "
                    f"valid ranks are 1..{max(limits)}."
                )
            return feasible([min(rank, lim) for lim in limits])

        def cost(r: int) -> int:
            return tucker_params(dims, (), feasible([min(r, lim) for lim in limits]))

        best = largest_within(cost, self.options.budget(m, n), max(limits), where, "tucker param_ratio")
        return feasible([min(best, lim) for lim in limits])

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        weight = compresskit.dense_weight(module)
        new = TuckerLinear(spec["out_factors"], spec["in_factors"], spec["ranks"], bool(spec["bias"]))
        new.to(device=weight.device, dtype=weight.dtype)
        if initialize:
            where = describe(module, "")
            prepare_init(module, where)
            tensor = tensorised_weight(module, (*new.out_shape, *new.in_shape))
            with pytorch_backend() as tl:
                core, factors = tl.decomposition.tucker(
                    tensor, rank=list(new.ranks), n_iter_max=self.options.iterations, init="svd"
                )
            with torch.no_grad():
                new.core.copy_(core)
                for param, factor in zip([*new.out_factors, *new.in_factors], factors, strict=True):
                    param.copy_(factor)
            copy_bias(new, module)
        return new

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        """Params and FLOPs of the contraction sequence in the module docstring."""
        out_shape, in_shape, ranks = spec["out_factors"], spec["in_factors"], spec["ranks"]
        d = len(out_shape)
        params = tucker_params(out_shape, in_shape, ranks) + bias_params(spec)
        return Cost(params, tokens * tucker_flops(out_shape, in_shape, ranks[:d], ranks[d:]))

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        """Full ranks min(dim_k, ∏ other dims) on a balanced (or 1-padded) factorisation: exact."""
        m, n = compresskit.linear_shape(module)
        out_shape, in_shape = lossless_factors(m, n)
        ranks = feasible(max_tucker_ranks((*out_shape, *in_shape)))
        return {"out_factors": out_shape, "in_factors": in_shape, "rank": ranks}


def tucker_flops(
    out_shape: Sequence[int], in_shape: Sequence[int], r: Sequence[int], s: Sequence[int]
) -> int:
    """FLOPs per token of :meth:`TuckerLinear.forward` (formula in the module docstring)."""
    flops = 0
    for j, n_j in enumerate(in_shape):
        outputs = math.prod(s[:j]) * s[j] * math.prod(in_shape[j + 1 :])
        flops += contraction_flops(outputs, n_j)
    flops += contraction_flops(math.prod(r), math.prod(s))
    for k, m_k in enumerate(out_shape):
        outputs = math.prod(out_shape[:k]) * m_k * math.prod(r[k + 1 :])
        flops += contraction_flops(outputs, r[k])
    return flops


def _check_explicit(
    rank: tuple[int, ...], dims: tuple[int, ...], limits: tuple[int, ...], where: str
) -> tuple[int, ...]:
    if len(rank) != len(dims):
        raise compresskit.DecompositionError(
            f"{where}: Tucker rank has {len(rank)} entries; give one per mode ({len(dims)}: the out "
            f"factors then the in factors {list(dims)}) or a single int."
        )
    for k, (r, lim) in enumerate(zip(rank, limits, strict=True)):
        if not 1 <= r <= lim:
            raise compresskit.DecompositionError(
                f"{where}: Tucker rank {r} of mode {k} (size {dims[k]}) is larger than possible; "
                f"valid ranks per mode are 1..{list(limits)}."
            )
    if feasible(rank) != rank:
        raise compresskit.DecompositionError(
            f"{where}: Tucker ranks {list(rank)} are inconsistent: each must be at most the product "
            f"of the others (e.g. {list(feasible(rank))})."
        )
    return rank
