"""Tensor-train-matrix (TT-matrix) linear layer (the ``tensor_train`` decomposition).

Novikov et al. 2015, "Tensorizing Neural Networks" (§3-5): with m = ∏ m_k and n = ∏ n_k (the same
number d of factors on both sides),

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] · G_2[:, i_2, j_2, :] ··· G_d[:, i_d, j_d, :],

cores G_k of shape (r_{k-1}, m_k, n_k, r_k), r_0 = r_d = 1. The cores are initialised by TT-SVD
(Oseledets 2011) of W with its row and column modes interleaved
(``tensorly.decomposition.tensor_train_matrix``). The forward contracts the input, reshaped to
(n_1..n_d), with one core at a time (Novikov et al. §5) and never builds W.

Params: Σ_k r_{k-1}·m_k·n_k·r_k (+ bias). FLOPs per token: core k turns (∏_{i<k} m_i, r_{k-1}, n_k,
∏_{i>k} n_i) into (∏_{i≤k} m_i, r_k, ∏_{i>k} n_i), summing r_{k-1}·n_k products per output:
Σ_k (∏_{i≤k} m_i)·r_k·(∏_{i>k} n_i)·(2·r_{k-1}·n_k − 1). Exact at the full ranks
r_k = min(∏_{i≤k} m_i n_i, ∏_{i>k} m_i n_i) (:meth:`TensorTrain.lossless_options`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import compresskit
from compresskit import Cost, DecompositionError

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
class TensorTrainOptions(FactorOptions):
    """``rank``: one TT rank for every inner bond (capped where a bond allows less), or d − 1 ranks.

    See :class:`.common.FactorOptions` for the factor and budget options.
    """

    rank: int | tuple[int, ...] | None = None


class TTMatrixLinear(TensorisedLinear):
    """y = x·Wᵀ + b with W held as a chain of TT-matrix cores."""

    dispatch_family = "tensor_train_linear"

    def __init__(
        self, out_factors: Sequence[int], in_factors: Sequence[int], ranks: Sequence[int], bias: bool
    ):
        super().__init__(math.prod(out_factors), math.prod(in_factors), bias)
        self.out_shape, self.in_shape, self.ranks = tuple(out_factors), tuple(in_factors), tuple(ranks)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.ranks[k], m, n, self.ranks[k + 1]))
            for k, (m, n) in enumerate(zip(self.out_shape, self.in_shape, strict=True))
        )

    def factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        t = x.reshape(-1, 1, 1, self.in_features)  # (B, M, r_0, N)
        for core in self.cores:  # (B, M, r, n_k, N') -> (B, M·m_k, r', N')
            r, m, n, _ = core.shape
            t = t.reshape(t.shape[0], t.shape[1], r, n, -1)
            t = torch.einsum("bMrnN,rmns->bMmsN", t, core)
            t = t.reshape(t.shape[0], t.shape[1] * m, t.shape[3], t.shape[4])
        return self.add_bias(t.reshape(*lead, self.out_features))

    def dense_weight(self) -> torch.Tensor:
        """The product of the cores as an (m, n) matrix, via ``tensorly.tt_matrix_to_tensor``."""
        with pytorch_backend() as tl:
            full = tl.tt_matrix_to_tensor(list(self.cores))
        return full.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"out={self.out_shape}, in={self.in_shape}, ranks={self.ranks}"


def max_tt_ranks(out_shape: Sequence[int], in_shape: Sequence[int]) -> tuple[int, ...]:
    """Full TT ranks (1, r_1, ..., r_{d-1}, 1): r_k = min(∏_{i≤k} m_i n_i, ∏_{i>k} m_i n_i)."""
    sizes = [m * n for m, n in zip(out_shape, in_shape, strict=True)]
    inner = [min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1)]
    return (1, *inner, 1)


def capped(rank: int, limits: Sequence[int]) -> tuple[int, ...]:
    """(1, min(rank, r_1^max), ..., 1): one rank for every inner bond."""
    return (1, *(min(rank, lim) for lim in limits[1:-1]), 1)


def tt_params(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Σ_k r_{k-1}·m_k·n_k·r_k."""
    return sum(
        ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(out_shape, in_shape, strict=True))
    )


class TensorTrain(compresskit.Decomposition):
    """TT-matrix factorisation (Novikov et al. 2015), initialised by TT-SVD through tensorly."""

    name = "tensor_train"
    Options = TensorTrainOptions
    module_types = ("Linear", "Conv1D")
    options: TensorTrainOptions

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        where = describe(module, name)
        m, n = linear_dims(self, module, where)
        out_shape, in_shape = self.options.factors(m, n, where)
        if len(out_shape) != len(in_shape):
            raise DecompositionError(
                f"{where}: a TT-matrix needs as many out_factors as in_factors, got {list(out_shape)} "
                f"and {list(in_shape)}."
            )
        return {
            "out_features": m,
            "in_features": n,
            "out_factors": list(out_shape),
            "in_factors": list(in_shape),
            "ranks": list(self._ranks(out_shape, in_shape, m, n, where)),
            "bias": compresskit.dense_bias(module) is not None,
        }

    def _ranks(
        self, out_shape: tuple[int, ...], in_shape: tuple[int, ...], m: int, n: int, where: str
    ) -> tuple[int, ...]:
        limits = max_tt_ranks(out_shape, in_shape)
        rank = self.options.rank
        top = max(limits)
        if isinstance(rank, tuple):
            return _check_explicit(
                rank, limits, [a * b for a, b in zip(out_shape, in_shape, strict=True)], where
            )
        if rank is not None:
            if not 1 <= rank <= top:
                raise DecompositionError(
                    f"{where}: TT rank {rank} is out of range for factors {list(out_shape)} x "
                    f"{list(in_shape)}; valid ranks are 1..{top}."
                )
            return capped(rank, limits)

        def cost(r: int) -> int:
            return tt_params(out_shape, in_shape, capped(r, limits))

        return capped(largest_within(cost, self.options.budget(m, n), top, where, "tt param_ratio"), limits)

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        weight = compresskit.dense_weight(module)
        new = TTMatrixLinear(spec["out_factors"], spec["in_factors"], spec["ranks"], bool(spec["bias"]))
        new.to(device=weight.device, dtype=weight.dtype)
        if initialize:
            where = describe(module, "")
            prepare_init(module, where)
            tensor = tensorised_weight(module, (*new.out_shape, *new.in_shape))
            with pytorch_backend() as tl:
                cores = tl.decomposition.tensor_train_matrix(tensor, list(new.ranks)).factors
            with torch.no_grad():
                for param, core in zip(new.cores, cores, strict=True):
                    if param.shape != core.shape:
                        raise DecompositionError(
                            f"{where}: TT-SVD gave a core of shape {tuple(core.shape)}, expected "
                            f"{tuple(param.shape)}; choose lower ranks."
                        )
                    param.copy_(core)
            copy_bias(new, module)
        return new

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        """Params and FLOPs of the contraction sequence in the module docstring."""
        out_shape, in_shape, ranks = spec["out_factors"], spec["in_factors"], spec["ranks"]
        params = tt_params(out_shape, in_shape, ranks) + bias_params(spec)
        return Cost(params, tokens * tt_flops(out_shape, in_shape, ranks))

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        """Full TT ranks on a balanced (or 1-padded) factorisation reproduce W exactly."""
        m, n = compresskit.linear_shape(module)
        out_shape, in_shape = lossless_factors(m, n)
        ranks = max_tt_ranks(out_shape, in_shape)[1:-1]
        return {"out_factors": out_shape, "in_factors": in_shape, "rank": ranks}


def tt_flops(out_shape: Sequence[int], in_shape: Sequence[int], ranks: Sequence[int]) -> int:
    """FLOPs per token of :meth:`TTMatrixLinear.forward` (formula in the module docstring)."""
    flops = 0
    for k, n_k in enumerate(in_shape):
        outputs = math.prod(out_shape[: k + 1]) * ranks[k + 1] * math.prod(in_shape[k + 1 :])
        flops += contraction_flops(outputs, ranks[k] * n_k)
    return flops


def _check_explicit(
    rank: tuple[int, ...], limits: tuple[int, ...], sizes: Sequence[int], where: str
) -> tuple[int, ...]:
    inner = limits[1:-1]
    if len(rank) != len(inner):
        raise DecompositionError(
            f"{where}: give {len(inner)} TT ranks (one per inner bond) or a single int, not {len(rank)}."
        )
    ranks = (1, *rank, 1)
    for k, r in enumerate(rank, start=1):
        if not 1 <= r <= inner[k - 1]:
            raise DecompositionError(
                f"{where}: TT rank {r} of bond {k} is larger than possible; valid ranks per bond are "
                f"1..{list(inner)}."
            )
    for k in range(1, len(ranks) - 1):
        if ranks[k] > ranks[k - 1] * sizes[k - 1] or ranks[k] > ranks[k + 1] * sizes[k]:
            raise DecompositionError(
                f"{where}: TT ranks {list(rank)} are inconsistent at bond {k}: r_k must be at most "
                "r_(k-1)·m_k·n_k and r_(k+1)·m_(k+1)·n_(k+1)."
            )
    return ranks
