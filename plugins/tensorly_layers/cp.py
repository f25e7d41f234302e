"""CP (CANDECOMP/PARAFAC)-factorised linear layer (the ``cp`` decomposition).

The tensorised weight (see :mod:`.common`) is approximated by a sum of R rank-one tensors
(Kolda & Bader 2009, "Tensor Decompositions and Applications", §3)

    W[i_1..i_d, j_1..j_e] ≈ Σ_r A_1[i_1, r] ··· A_d[i_d, r] · B_1[j_1, r] ··· B_e[j_e, r],

initialised by CP-ALS (``tensorly.decomposition.parafac``, SVD start, CP weights folded into A_1).
The forward never builds W: the input is contracted with B_1, then multiplied and summed with each
B_j sharing the index r (giving one coefficient per term), then expanded by the A_k, the last one
summing over r.

Params: R·(Σ m_k + Σ n_j) (+ bias). FLOPs per token: Σ_j (∏_{i>j} n_i)·R·(2n_j − 1)
+ Σ_{k<d} (∏_{i≤k} m_i)·R + m·(2R − 1). CP has no guaranteed lossless rank, so
:meth:`CP.lossless_options` is ``None``.
"""

from __future__ import annotations

import math
import warnings
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
    prepare_init,
    pytorch_backend,
    tensorised_weight,
)


@dataclass(frozen=True)
class CPOptions(FactorOptions):
    """``rank``: the number R of rank-one terms; ``iterations``: CP-ALS sweeps (at most).

    One sweep costs about R·(m·n)·(d + e) multiply-adds plus R×R solves: at the default budget a
    1536×384 FFN matrix gets R ≈ 1200 and a sweep takes seconds on a CPU, hence the modest default.

    See :class:`.common.FactorOptions` for the factor and budget options.
    """

    rank: int | None = None
    iterations: int = 25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be at least 0, got {self.iterations}")


class CPLinear(TensorisedLinear):
    """y = x·Wᵀ + b with W held as R rank-one terms over the tensor modes."""

    dispatch_family = "cp_linear"

    def __init__(self, out_factors: Sequence[int], in_factors: Sequence[int], rank: int, bias: bool):
        super().__init__(math.prod(out_factors), math.prod(in_factors), bias)
        self.out_shape, self.in_shape, self.rank = tuple(out_factors), tuple(in_factors), rank
        self.out_factors = nn.ParameterList(nn.Parameter(torch.empty(m, rank)) for m in self.out_shape)
        self.in_factors = nn.ParameterList(nn.Parameter(torch.empty(n, rank)) for n in self.in_shape)

    def factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        first, *rest = self.in_factors
        t = x.reshape(-1, first.shape[0], self.in_features // first.shape[0])
        t = torch.einsum("bnN,nr->bNr", t, first)
        for factor in rest:  # (B, n_j, N, R) -> (B, N, R), sharing r
            t = torch.einsum("bnNr,nr->bNr", t.reshape(t.shape[0], factor.shape[0], -1, self.rank), factor)
        t = t.reshape(t.shape[0], 1, self.rank)
        *expand, last = self.out_factors
        for factor in expand:  # (B, M, R) -> (B, M·m_k, R)
            t = torch.einsum("bMr,mr->bMmr", t, factor).reshape(t.shape[0], -1, self.rank)
        y = torch.einsum("bMr,mr->bMm", t, last)
        return self.add_bias(y.reshape(*lead, self.out_features))

    def dense_weight(self) -> torch.Tensor:
        """Σ_r of the outer products, reshaped to (m, n), via ``tensorly.cp_to_tensor``."""
        factors = [*self.out_factors, *self.in_factors]
        with pytorch_backend() as tl:
            full = tl.cp_to_tensor((None, factors))
        return full.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"out={self.out_shape}, in={self.in_shape}, rank={self.rank}"


def max_cp_rank(dims: Sequence[int]) -> int:
    """Upper bound on the CP rank of any tensor of these mode sizes: ∏dims / max(dims)."""
    return math.prod(dims) // max(dims)


class CP(compresskit.Decomposition):
    """CP (PARAFAC) factorisation of the tensorised weight, initialised by CP-ALS through tensorly."""

    name = "cp"
    Options = CPOptions
    module_types = ("Linear", "Conv1D")
    options: CPOptions

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        where = describe(module, name)
        m, n = linear_dims(self, module, where)
        out_shape, in_shape = self.options.factors(m, n, where)
        dims = (*out_shape, *in_shape)
        limit = max_cp_rank(dims)
        rank = self.options.rank
        if rank is not None and rank > limit:
            raise compresskit.DecompositionError(
                f"{where}: CP rank {rank} is larger than possible for mode sizes {list(dims)}; "
                f"valid ranks are 1..{limit}."
            )
        if rank is None:
            budget = self.options.budget(m, n)
            rank = largest_within(lambda r: r * sum(dims), budget, limit, where, "cp param_ratio")
        return {
            "out_features": m,
            "in_features": n,
            "out_factors": list(out_shape),
            "in_factors": list(in_shape),
            "rank": rank,
            "bias": compresskit.dense_bias(module) is not None,
        }

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        weight = compresskit.dense_weight(module)
        new = CPLinear(spec["out_factors"], spec["in_factors"], int(spec["rank"]), bool(spec["bias"]))
        new.to(device=weight.device, dtype=weight.dtype)
        if initialize:
            prepare_init(module, describe(module, ""))
            tensor = tensorised_weight(module, (*new.out_shape, *new.in_shape))
            with pytorch_backend() as tl, warnings.catch_warnings():
                # tensorly warns when R exceeds a mode size; it then pads the SVD start randomly.
                warnings.simplefilter("ignore", UserWarning)
                weights, factors = tl.decomposition.parafac(
                    tensor, new.rank, n_iter_max=self.options.iterations, init="svd", random_state=0
                )
            factors = [factors[0] * weights, *factors[1:]]
            with torch.no_grad():
                for param, factor in zip([*new.out_factors, *new.in_factors], factors, strict=True):
                    param.copy_(factor)
            copy_bias(new, module)
        return new

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        """Params and FLOPs of the contraction sequence in the module docstring."""
        out_shape, in_shape, rank = spec["out_factors"], spec["in_factors"], int(spec["rank"])
        params = rank * (sum(out_shape) + sum(in_shape)) + bias_params(spec)
        return Cost(params, tokens * cp_flops(out_shape, in_shape, rank))


def cp_flops(out_shape: Sequence[int], in_shape: Sequence[int], rank: int) -> int:
    """FLOPs per token of :meth:`CPLinear.forward` (formula in the module docstring)."""
    flops = sum(contraction_flops(math.prod(in_shape[j + 1 :]) * rank, n_j) for j, n_j in enumerate(in_shape))
    flops += sum(math.prod(out_shape[: k + 1]) * rank for k in range(len(out_shape) - 1))
    return flops + contraction_flops(math.prod(out_shape), rank)
