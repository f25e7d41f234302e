"""``KroneckerEmbedding``: a v×d table E ≈ Σ_r A_r⊗b_r with A_r v×(d/n) and a row vector b_r 1×n.

KroneckerBERT §3.3 (Eq. 8) uses one term: token i's vector is A_i⊗b, i.e. the d/n entries of row i of
A each scaling the same n-vector b, an O(d) lookup. With k = d/n,

    E[v, j·n + l] = Σ_r A_r[v, j]·b_r[l]     and so     (h·Eᵀ)[v] = Σ_r Σ_j A_r[v, j]·(H·b_rᵀ)[j]

with H = h reshaped (k, n): the tied output projection (logits = h·Eᵀ) is one (k·R)-wide matmul
against A, never building E (see :meth:`KroneckerEmbedding.project`). Both the lookup's outer product
with b and the projection's contraction with b are single GEMMs over all tokens (K = R and N = R), so
their gradients are GEMMs too. In inference, measured dispatch (``paths.py``) may use the table E
rebuilt once and cached instead; ``formulation`` pins ``"factored"`` or ``"dense"``.

The R tables are stored side by side as one (v, R·k) lookup table, so ``padding_idx`` works exactly as in
``nn.Embedding``: that row gets no gradient (and, initialised from a zero row, stays a zero vector).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from compresskit import CompressedModuleMixin, DecompositionError
from compresskit.plugin import WeightCache, needs_grad, probe_generator, tracing

from .nearest import nearest_kronecker
from .paths import EMBEDDING, TIED_HEAD, choose_simple
from .shapes import check_terms


class KroneckerEmbedding(CompressedModuleMixin, nn.Module):
    """Embedding lookup from Kronecker factors: ``a`` (v, R·d/n) table, ``b`` (R, 1, n) row vectors."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        n: int,
        num_terms: int = 1,
        padding_idx: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if n < 1 or embedding_dim % n:
            raise DecompositionError(f"KroneckerEmbedding: n={n} must divide embedding_dim={embedding_dim}.")
        check_terms(num_terms, (num_embeddings, embedding_dim // n), (1, n), "KroneckerEmbedding")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.n, self.k, self.num_terms = n, embedding_dim // n, num_terms
        self.padding_idx = _normalise_padding(padding_idx, num_embeddings)
        factory = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(num_embeddings, num_terms * self.k, **factory))  # type: ignore[arg-type]
        self.b = nn.Parameter(torch.empty(num_terms, 1, n, **factory))  # type: ignore[arg-type]
        #: ``"factored"`` or ``"dense"`` to always run that formulation, or None for measured dispatch.
        self.formulation: str | None = None
        self._dense_cache = WeightCache()
        self.reset_parameters()

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.num_embeddings, self.k)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (1, self.n)

    def reset_parameters(self) -> None:
        """Normal factors whose product has unit-ish scale; the padding row is zero."""
        nn.init.normal_(self.a)
        nn.init.normal_(self.b, std=self.num_terms**-0.5)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.a[self.padding_idx].zero_()

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        n: int,
        num_terms: int = 1,
        *,
        svd: str = "auto",
        initialize: bool = True,
        name: str = "",
    ) -> KroneckerEmbedding:
        """A new layer approximating ``embedding`` by nearest-Kronecker SVD; the old one is not touched."""
        weight = embedding.weight
        args = (embedding.num_embeddings, embedding.embedding_dim, n, num_terms, embedding.padding_idx)
        if not initialize:
            return cls(*args, device=weight.device, dtype=weight.dtype)
        new = skip_init(cls, *args, device=weight.device, dtype=weight.dtype)  # the SVD sets every value
        new.load_dense(weight, svd=svd, where=name or "Embedding")
        return new

    @torch.no_grad()
    def load_dense(self, weight: torch.Tensor, *, svd: str = "auto", where: str = "embedding") -> None:
        """Set the factors to the nearest Kronecker sum of the (v, d) table ``weight``."""
        a, b = nearest_kronecker(weight, (self.num_embeddings, self.k), self.num_terms, svd=svd, where=where)  # type: ignore[arg-type]
        self.a.copy_(a.permute(1, 0, 2).reshape(self.num_embeddings, -1))
        self.b.copy_(b)

    def _factors(self) -> torch.Tensor:
        return self.a.reshape(self.num_embeddings, self.num_terms, self.k)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        training = needs_grad(self.a, self.b)
        if self._formulation(EMBEDDING, ids, ids.numel(), training) == "dense":
            return F.embedding(ids, self._table(training), self.padding_idx)
        rows = F.embedding(ids, self.a, self.padding_idx)  # (..., R·k)
        return self.expand_rows(rows).reshape(*ids.shape, self.embedding_dim)

    def expand_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows (..., R·k) of A → token vectors (N·k, n) = Σ_r A_r[token, j]·b_r, one GEMM with K = R."""
        tokens = rows.numel() // (self.num_terms * self.k)
        grid = rows.reshape(tokens, self.num_terms, self.k).transpose(1, 2).reshape(tokens * self.k, -1)
        return grid @ self.b.reshape(self.num_terms, self.n)

    def project(self, hidden: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Logits h·Eᵀ (+ bias) (..., v) for hidden states (..., d), without building E (a tied output layer).

        H (N·k, n)·[b_r]ᵀ gives (N, k, R) in one GEMM, then one GEMM against A (v, R·k).
        """
        tokens = hidden.numel() // self.embedding_dim
        training = needs_grad(hidden, self.a, self.b, bias)
        if self._formulation(TIED_HEAD, hidden, tokens, training) == "dense":
            return F.linear(hidden, self._table(training), bias)
        return self._project_factored(hidden, bias)

    def _project_factored(self, hidden: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        tokens = hidden.numel() // self.embedding_dim
        reduced = hidden.reshape(tokens * self.k, self.n) @ self.b.reshape(self.num_terms, self.n).t()
        if self.num_terms > 1:
            reduced = reduced.view(tokens, self.k, self.num_terms).transpose(1, 2)
        logits = F.linear(reduced.reshape(tokens, self.num_terms * self.k), self.a, bias)
        return logits.reshape(*hidden.shape[:-1], self.num_embeddings)

    def _formulation(self, family: str, x: torch.Tensor, tokens: int, training: bool) -> str:
        if self.formulation is not None:
            return self.formulation
        if tracing():
            return "factored"
        return choose_simple(
            family,
            f"v{self.num_embeddings} d{self.embedding_dim} n{self.n} R{self.num_terms}",
            self.a,
            tokens,
            training,
            lambda name: self._probe(family, name, tokens, training),
        )

    @torch.no_grad()
    def _probe(self, family: str, name: str, tokens: int, training: bool) -> Callable[[], object]:
        """One inference call of ``name`` on random ids / hidden states (the dense table prebuilt)."""
        gen = probe_generator(self.a.device)
        count = min(tokens, 4096)
        table = self.dense_weight() if name == "dense" else None
        if family == EMBEDDING:
            ids = torch.randint(0, self.num_embeddings, (count,), generator=gen, device=self.a.device)
            if table is not None:
                return lambda: F.embedding(ids, table, self.padding_idx)
            return lambda: self.expand_rows(F.embedding(ids, self.a, self.padding_idx))
        hidden = torch.randn(
            count, self.embedding_dim, generator=gen, device=self.a.device, dtype=self.a.dtype
        )
        if table is not None:
            return lambda: F.linear(hidden, table)
        return lambda: self._project_factored(hidden, None)

    def _table(self, training: bool) -> torch.Tensor:
        return self.dense_weight() if training or tracing() else self.cached_dense_weight()

    def cached_dense_weight(self) -> torch.Tensor:
        """E for inference, rebuilt only when a factor changed (in place, moved or reloaded)."""
        return self._dense_cache.get((self.a, self.b), self.dense_weight)

    def dense_weight(self) -> torch.Tensor:
        """The (v, d) table Σ_r A_r⊗b_r."""
        return (
            (self._factors().unsqueeze(-1) * self.b.unsqueeze(0))
            .sum(dim=1)
            .reshape(self.num_embeddings, self.embedding_dim)
        )

    def to_dense(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` with the reconstructed table and the same ``padding_idx``."""
        dense = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            self.padding_idx,
            device=self.a.device,
            dtype=self.a.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
        return dense

    def tied_head(self, bias: torch.Tensor | None = None) -> KroneckerTiedHead:
        """An output layer sharing this embedding's factors (logits = h·Eᵀ + bias)."""
        return KroneckerTiedHead(self, bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, a_shape={self.a_shape}, b_shape={self.b_shape}, "
            f"num_terms={self.num_terms}, padding_idx={self.padding_idx}"
        )


class KroneckerTiedHead(CompressedModuleMixin, nn.Module):
    """A Linear-like output layer (d → v) whose weight *is* a :class:`KroneckerEmbedding`'s table.

    It owns no factor of its own, so the head stays tied to the embedding (a gradient through either
    reaches the same factors); the embedding is referenced, not registered as a child, so its factors
    are saved once. A bias parameter is kept as the same object, so a bias tie (BERT's MLM
    ``decoder.bias`` is ``predictions.bias``) survives. Per token it costs one d → R·k contraction with
    the b_r and one (R·k) → v matmul with A, instead of the dense d → v matmul.
    """

    embedding: KroneckerEmbedding

    def __init__(self, embedding: KroneckerEmbedding, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        if bias is None or isinstance(bias, nn.Parameter):
            self.bias = bias
        else:
            self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embedding.project(hidden, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The (v, d) weight, equal to the embedding table."""
        return self.embedding.dense_weight()

    def factor_tensor(self) -> torch.Tensor:
        return self.embedding.a

    def to_dense(self) -> nn.Linear:
        """A plain (untied) ``nn.Linear`` with the reconstructed weight."""
        weight = self.dense_weight()
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


def _normalise_padding(padding_idx: int | None, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise DecompositionError(
            f"KroneckerEmbedding: padding_idx={padding_idx} is outside the vocabulary of {num_embeddings}."
        )
    return padding_idx % num_embeddings
