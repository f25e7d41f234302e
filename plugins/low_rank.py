"""Truncated-SVD low-rank factorisation of linear layers and embeddings (the ``low_rank`` decomposition).

A dense m×n weight W = U Σ Vᵀ is replaced by its best rank-r approximation (Eckart & Young 1936)

    W_r = (U_r Σ_r^½)(Σ_r^½ V_rᵀ) = L·R,   L: m×r,  R: r×n,
    ‖W − W_r‖_F = sqrt(Σ_{k>r} σ_k²),

so ``y = x Wᵀ + b`` becomes two thin matrix products ``y = (x Rᵀ) Lᵀ + b``. The singular values are
split evenly between the factors so that both are equally scaled for fine-tuning.

Cost (compresskit convention, KroneckerBERT §3.2.3): params ``r·(m + n)`` (+ bias), FLOPs per token
``(2n − 1)·r + (2r − 1)·m``. An embedding table E (v×d) ≈ A·B is a lookup in A (v×r) followed by the
projection B (r×d): params ``r·(v + d)``, FLOPs per token ``(2r − 1)·d`` (the lookup itself is free).
At ``r = min(m, n)`` the factorisation is exact (see :meth:`LowRank.lossless_options`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import compresskit
from compresskit import (
    Cost,
    DecompositionError,
    class_names,
    dense_bias,
    dense_linear_flops,
    dense_weight,
    hookimpl,
    linear_shape,
)
from compresskit.plugin import (
    FACTORED_OR_DENSE,
    PROBE_MAX_TOKENS,
    FactoredOrDense,
    WeightCache,
    all_finite,
    choose,
    needs_grad,
    probe_generator,
    regime,
    register_family,
    top_singular_triplets,
    tracing,
)

LINEAR_FAMILY, EMBEDDING_FAMILY = "low_rank_linear", "low_rank_embedding"
register_family(LINEAR_FAMILY, FACTORED_OR_DENSE)
register_family(EMBEDDING_FAMILY, FACTORED_OR_DENSE)

#: Rank as a fraction of min(m, n) when no rank option is given.
DEFAULT_RANK_RATIO = 0.25


@dataclass(frozen=True)
class LowRankOptions:
    """Options of ``low_rank``; give at most one of ``rank``, ``rank_ratio`` and ``param_ratio``.

    - ``rank``: the rank r, 1 ≤ r ≤ min(m, n).
    - ``rank_ratio``: r = round(rank_ratio · min(m, n)), 0 < rank_ratio ≤ 1.
    - ``param_ratio``: fraction of the dense weight's parameters to keep (0.25 = 4× smaller); the
      largest r with r·(m + n) ≤ param_ratio·m·n is used, capped at min(m, n).
    - ``svd``: ``"torch"`` (full ``torch.linalg.svd``), ``"scipy"`` (partial ARPACK ``svds``) or
      ``"auto"`` (``compresskit.linalg.top_singular_triplets``: a Gram eigendecomposition for a short
      side, the randomized range finder for r ≪ min(m, n), else the full SVD).

    With none of the three, r = round(0.25 · min(m, n)).
    """

    rank: int | None = None
    rank_ratio: float | None = None
    param_ratio: float | None = None
    svd: Literal["auto", "torch", "scipy"] = "auto"

    def __post_init__(self) -> None:
        given = [k for k in ("rank", "rank_ratio", "param_ratio") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of rank, rank_ratio, param_ratio (got {', '.join(given)})")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise ValueError(f"rank_ratio must be in (0, 1], got {self.rank_ratio}")
        if self.param_ratio is not None and not self.param_ratio > 0:
            raise ValueError(f"param_ratio must be positive, got {self.param_ratio}")


class _LowRankBase(compresskit.CompressedModuleMixin, nn.Module):
    """Holds the factors ``left`` (rows×r) and ``right`` (r×cols); their product is the dense weight."""

    def __init__(self, rows: int, cols: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.left = nn.Parameter(torch.empty(rows, rank))
        self.right = nn.Parameter(torch.empty(rank, cols))

    def dense_weight(self) -> torch.Tensor:
        """``left @ right``: the (out, in) weight or the (vocab, dim) table."""
        return self.left @ self.right


class LowRankLinear(_LowRankBase, FactoredOrDense):
    """``y = (x Rᵀ) Lᵀ + b`` with L (out×r) and R (r×in): a rank-r linear layer.

    Measured dispatch (``compresskit.dispatch``, family ``low_rank_linear``) runs these two thin
    products (``factored``) or one product with L·R (``dense``, cached in inference) when that is faster.
    """

    dispatch_family = LINEAR_FAMILY

    def __init__(self, out_features: int, in_features: int, rank: int, bias: bool) -> None:
        super().__init__(out_features, in_features, rank)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatched_forward(x)

    def factored_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x2, self.right), self.left, self.bias)

    def dispatch_signature(self) -> str:
        return f"{self.out_features}x{self.in_features} r{self.rank} bias{int(self.bias is not None)}"

    def quantized_dynamic(self) -> nn.Module:
        """Both thin products as int8 dynamic linear layers (``compresskit.quantize_dynamic``)."""
        right = nn.Linear(self.in_features, self.rank, bias=False)
        left = nn.Linear(self.rank, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            right.weight.copy_(self.right)
            left.weight.copy_(self.left)
            if self.bias is not None:
                left.bias.copy_(self.bias)
        pair = nn.Sequential(right, left).float().eval()
        return torch.ao.quantization.quantize_dynamic(pair, {nn.Linear}, dtype=torch.qint8)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``L·R`` and the bias."""
        weight = self.dense_weight().detach()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None and dense.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankEmbedding(_LowRankBase):
    """``E[ids] ≈ A[ids] · B``: a lookup in A (vocab×r) projected by B (r×dim).

    In inference, measured dispatch (family ``low_rank_embedding``) may look rows up in the table A·B
    built once (``dense``) instead; ``formulation`` pins ``"factored"`` or ``"dense"``.
    """

    formulation: str | None = None

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None) -> None:
        super().__init__(num_embeddings, embedding_dim, rank)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self._table_cache = WeightCache()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        training = needs_grad(self.left, self.right)
        if self._formulation(ids, training) == "dense":
            table = (
                self.dense_weight()
                if training or tracing()
                else self._table_cache.get((self.left, self.right), self.dense_weight)
            )
            return F.embedding(ids, table, self.padding_idx)
        return F.embedding(ids, self.left, self.padding_idx) @ self.right

    def _formulation(self, ids: torch.Tensor, training: bool) -> str:
        if self.formulation is not None:
            return self.formulation
        if tracing() or training:
            return "factored"
        count = min(ids.numel(), PROBE_MAX_TOKENS)
        sample = torch.randint(
            0, self.num_embeddings, (count,), generator=probe_generator(ids.device), device=ids.device
        )

        def probe(name: str) -> Callable[[], object]:
            saved = self.formulation
            return lambda: _pinned(self, name, saved, sample)

        current = regime(ids.numel(), self.left.dtype, self.left.device, False)
        signature = f"{self.num_embeddings}x{self.embedding_dim} r{self.rank}"
        return choose(EMBEDDING_FAMILY, signature, current, "factored", FACTORED_OR_DENSE, probe)

    def to_dense(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` holding ``A·B``."""
        weight = self.dense_weight().detach()
        dense = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        dense.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
        return dense

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"


def _pinned(layer: LowRankEmbedding, name: str, saved: str | None, ids: torch.Tensor) -> torch.Tensor:
    """One lookup with ``name`` pinned (the probe of :class:`LowRankEmbedding`)."""
    layer.formulation = name
    try:
        return layer(ids)
    finally:
        layer.formulation = saved


def truncated_svd(
    weight: torch.Tensor, rank: int, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_r, σ_r, V_rᵀ)`` of ``weight`` in float32 (float64 if given), singular values descending.

    ``method="scipy"`` computes only the r leading triplets (ARPACK); it needs r < min(m, n) and
    falls back to the full SVD otherwise. ``"auto"``: see :class:`LowRankOptions`.
    """
    work = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    smallest = min(work.shape)
    if method == "auto":
        return top_singular_triplets(work, rank)
    if method == "scipy" and rank < smallest:
        return _scipy_svds(work, rank)
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def _scipy_svds(work: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from scipy.sparse.linalg import svds

    matrix = work.cpu().numpy().astype(np.float64)
    u, s, vh = svds(matrix, k=rank, random_state=0)
    order = np.argsort(s)[::-1]
    parts = (u[:, order], s[order], vh[order])
    return tuple(torch.from_numpy(np.ascontiguousarray(p)).to(work) for p in parts)  # type: ignore[return-value]


def describe(module: nn.Module, name: str) -> str:
    """``"'encoder.layer.0.query' (Linear 24x36)"`` for error messages."""
    weight = getattr(module, "weight", None)
    shape = "x".join(str(d) for d in weight.shape) if isinstance(weight, torch.Tensor) else "?"
    return f"{name!r} ({type(module).__name__} {shape})" if name else f"{type(module).__name__} {shape}"


def check_finite(weight: torch.Tensor, where: str) -> None:
    """Raise :class:`DecompositionError` if a materialised ``weight`` holds NaN or Inf."""
    if all_finite(weight):
        return
    bad = int((~torch.isfinite(weight)).sum())
    raise DecompositionError(
        f"{where}: the weight holds {bad} NaN/Inf value(s); a factorisation needs finite weights. "
        "Check the checkpoint, or exclude this module from the group."
    )


class LowRank(compresskit.Decomposition):
    """Truncated-SVD low-rank factorisation W ≈ L·R (Eckart–Young optimal in Frobenius norm)."""

    name = "low_rank"
    Options = LowRankOptions
    module_types = ("Linear", "Conv1D", "Embedding")
    options: LowRankOptions

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        """``{"kind": "linear"|"embedding", "rows", "cols", "rank", ...}`` from shapes alone."""
        where = describe(module, name)
        if not self.handles(module):
            raise DecompositionError(
                f"{where}: low_rank handles {', '.join(self.module_types)} modules, not "
                f"{type(module).__name__}. Exclude it from the group or use another decomposition."
            )
        is_embedding = _is_embedding(module)
        rows, cols = _matrix_shape(module, where, is_embedding)
        check_finite(dense_weight(module), where)
        spec: dict[str, Any] = {
            "kind": "embedding" if is_embedding else "linear",
            "rows": rows,
            "cols": cols,
            "rank": self._rank(rows, cols, where),
        }
        if is_embedding:
            if getattr(module, "max_norm", None) is not None:
                raise DecompositionError(
                    f"{where}: embeddings with max_norm renormalise their table on lookup and "
                    "cannot be factorised; exclude this module."
                )
            spec["padding_idx"] = getattr(module, "padding_idx", None)
        else:
            spec["bias"] = dense_bias(module) is not None
        return spec

    def _rank(self, rows: int, cols: int, where: str) -> int:
        """The rank chosen by the options for a rows×cols matrix (see :class:`LowRankOptions`)."""
        full = min(rows, cols)
        opts = self.options
        if opts.rank is not None:
            if opts.rank > full:
                raise DecompositionError(
                    f"{where}: rank {opts.rank} is larger than possible for a {rows}x{cols} matrix; "
                    f"valid ranks are 1..{full} ({full} is lossless)."
                )
            return opts.rank
        if opts.param_ratio is not None:
            rank = math.floor(opts.param_ratio * rows * cols / (rows + cols))
            if rank < 1:
                smallest = (rows + cols) / (rows * cols)
                raise DecompositionError(
                    f"{where}: param_ratio {opts.param_ratio} leaves less than rank 1 for a "
                    f"{rows}x{cols} matrix; valid param_ratio is at least {smallest:.4g}."
                )
            return min(rank, full)
        ratio = opts.rank_ratio if opts.rank_ratio is not None else DEFAULT_RANK_RATIO
        return max(1, min(full, round(ratio * full)))

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        """A :class:`LowRankLinear` / :class:`LowRankEmbedding`; SVD-initialised if ``initialize``."""
        weight = dense_weight(module)
        rows, cols, rank = int(spec["rows"]), int(spec["cols"]), int(spec["rank"])
        new: _LowRankBase
        if spec["kind"] == "embedding":
            new = LowRankEmbedding(rows, cols, rank, spec.get("padding_idx"))
        else:
            new = LowRankLinear(rows, cols, rank, bool(spec["bias"]))
        new.to(device=weight.device, dtype=weight.dtype)
        if initialize:
            self._initialize(new, module, weight)
        return new

    def _initialize(self, new: _LowRankBase, module: nn.Module, weight: torch.Tensor) -> None:
        where = describe(module, "")
        if weight.is_meta:
            raise DecompositionError(f"{where}: the weight is on the meta device; load real weights first.")
        if tuple(weight.shape) != (new.left.shape[0], new.right.shape[1]):
            raise DecompositionError(
                f"{where}: the spec is for a {new.left.shape[0]}x{new.right.shape[1]} matrix, "
                f"the module's weight is {tuple(weight.shape)}."
            )
        check_finite(weight, where)
        u, s, vh = truncated_svd(weight, new.rank, self.options.svd)
        root = s.sqrt()
        with torch.no_grad():
            new.left.copy_(u * root)
            new.right.copy_(root[:, None] * vh)
            bias = dense_bias(module)
            if isinstance(new, LowRankLinear) and new.bias is not None and bias is not None:
                new.bias.copy_(bias)

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        """Params ``r·(rows + cols)`` (+ bias); FLOPs of the two thin products (module docstring)."""
        rows, cols, rank = int(spec["rows"]), int(spec["cols"]), int(spec["rank"])
        params = rank * (rows + cols)
        if spec["kind"] == "embedding":
            return Cost(params, dense_linear_flops(cols, rank, tokens))
        params += rows if spec.get("bias") else 0
        flops = dense_linear_flops(rank, cols, tokens) + dense_linear_flops(rows, rank, tokens)
        return Cost(params, flops)

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        """``{"rank": min(m, n)}``: the full-rank factorisation reproduces W exactly."""
        weight = dense_weight(module)
        return {"rank": int(min(weight.shape))}


def _is_embedding(module: nn.Module) -> bool:
    return "Embedding" in class_names(module)


def _matrix_shape(module: nn.Module, where: str, is_embedding: bool) -> tuple[int, int]:
    try:
        if is_embedding:
            weight = dense_weight(module)
            if weight.dim() != 2:
                raise DecompositionError("an embedding needs a 2-D table")
            return int(weight.shape[0]), int(weight.shape[1])
        return linear_shape(module)
    except DecompositionError as exc:
        raise DecompositionError(f"{where}: {exc}") from None


@hookimpl
def compresskit_register_decompositions() -> list[type[compresskit.Decomposition]]:
    return [LowRank]
