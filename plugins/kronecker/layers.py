"""``KroneckerLinear``: y = (Σ_r A_r⊗B_r)·x + b without building the dense weight (KroneckerBERT §3.2.3).

With W = Σ_r A_r⊗B_r (A_r m1×n1, B_r m2×n2, row-major ``torch.kron`` layout, W[(i·m2+k), (j·n2+l)] =
A[i, j]·B[k, l]) and X the input reshaped row-major to (n1, n2), the output reshaped to (m1, m2) is

    Y = Σ_r A_r · X · B_rᵀ     (the row-major form of Eq. 6)

evaluated in the cheaper of the two association orders of Eq. 7: ``"b_first"`` computes X·Bᵀ then A·(…),
``"a_first"`` computes A·X then (…)·Bᵀ. The factors are stacked, a (R, m1, n1) and b (R, m2, n2), and
the product with A is either one GEMM over all tokens (``path="gemm"``, when A is the larger factor: a
per-token batch of 384×384 products, as in KB8's attention, was 6× slower on CPU) or a per-token batched
product (``path="broadcast"``, when A is small: it avoids two transposing copies).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from compresskit import CompressedModuleMixin, dense_bias, dense_weight, linear_shape

from .nearest import SvdBackend, kron_sum, nearest_kronecker
from .shapes import Shape, check_terms, resolve_shapes, term_flops

Order = Literal["a_first", "b_first"]
Path = Literal["gemm", "broadcast"]


def cheaper_order(a_shape: Shape, b_shape: Shape) -> Order:
    """The association order with fewer FLOPs by Eq. 7 (``b_first`` on a tie)."""
    b_first, a_first = term_flops(a_shape, b_shape)
    return "a_first" if a_first < b_first else "b_first"


class KroneckerLinear(CompressedModuleMixin, nn.Module):
    """A linear layer whose weight is Σ_{r=1..R} A_r⊗B_r; input (..., n1·n2), output (..., m1·m2)."""

    def __init__(
        self,
        a_shape: Shape,
        b_shape: Shape,
        num_terms: int = 1,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.a_shape, self.b_shape = (int(a_shape[0]), int(a_shape[1])), (int(b_shape[0]), int(b_shape[1]))
        check_terms(num_terms, self.a_shape, self.b_shape, "KroneckerLinear")
        self.num_terms = num_terms
        self.in_features = self.a_shape[1] * self.b_shape[1]
        self.out_features = self.a_shape[0] * self.b_shape[0]
        self.order: Order = cheaper_order(self.a_shape, self.b_shape)
        #: "gemm" multiplies by A with one GEMM over all tokens (a large A), "broadcast" per token.
        self.path: Path = (
            "gemm" if self.a_shape[0] * self.a_shape[1] > self.b_shape[0] * self.b_shape[1] else "broadcast"
        )
        factory = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(num_terms, *self.a_shape, **factory))  # type: ignore[arg-type]
        self.b = nn.Parameter(torch.empty(num_terms, *self.b_shape, **factory))  # type: ignore[arg-type]
        self.bias = nn.Parameter(torch.zeros(self.out_features, **factory)) if bias else None  # type: ignore[arg-type]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors whose product has roughly ``nn.Linear``'s default scale."""
        scale = (3.0 / self.in_features) ** 0.25 / self.num_terms**0.25
        nn.init.uniform_(self.a, -scale, scale)
        nn.init.uniform_(self.b, -scale, scale)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        a_shape: Shape | None = None,
        b_shape: Shape | None = None,
        num_terms: int = 1,
        *,
        svd: SvdBackend = "auto",
        initialize: bool = True,
        name: str = "",
    ) -> KroneckerLinear:
        """A new layer approximating ``linear`` (``nn.Linear`` or HF ``Conv1D``) by nearest-Kronecker SVD.

        Give ``a_shape`` or ``b_shape``; the other follows from the matrix. The old layer is not touched.
        """
        where = name or type(linear).__name__
        m, n = linear_shape(linear)
        a, b = resolve_shapes(m, n, a_shape, b_shape, where)
        weight, bias = dense_weight(linear), dense_bias(linear)
        new = cls(a, b, num_terms, bias is not None, device=weight.device, dtype=weight.dtype)
        if initialize:
            new.load_dense(weight, bias, svd=svd, where=where)
        return new

    @torch.no_grad()
    def load_dense(
        self, weight: torch.Tensor, bias: torch.Tensor | None, *, svd: SvdBackend = "auto", where: str = ""
    ) -> None:
        """Set the factors to the nearest Kronecker sum of ``weight`` (out, in) and copy ``bias``."""
        a, b = nearest_kronecker(weight, self.a_shape, self.num_terms, svd=svd, where=where or "weight")
        self.a.copy_(a)
        self.b.copy_(b)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, tokens = x.shape[:-1], x.reshape(-1, self.in_features).shape[0]
        grid = x.reshape(tokens, *self.grid_shape)  # X: (N, n1, n2)
        if self.path == "broadcast":
            out = self._broadcast(grid)
        else:
            out = self._b_first(grid) if self.order == "b_first" else self._a_first(grid)
        out = out.reshape(*lead, self.out_features)
        return out + self.bias if self.bias is not None else out

    @property
    def grid_shape(self) -> Shape:
        return (self.a_shape[1], self.b_shape[1])

    def _broadcast(self, grid: torch.Tensor) -> torch.Tensor:
        """Y = Σ_r A_r·X·B_rᵀ with A_r broadcast over the tokens (N small products; best for a small A)."""
        grid = grid.unsqueeze(1)  # (N, 1, n1, n2), broadcast over the R terms
        if self.order == "b_first":
            y = self.a @ (grid @ self.b.transpose(1, 2))  # (R,m1,n1)@(N,R,n1,m2) -> (N,R,m1,m2)
        else:
            y = (self.a @ grid) @ self.b.transpose(1, 2)  # (N,R,m1,n2)@(R,n2,m2) -> (N,R,m1,m2)
        return y.sum(dim=1) if self.num_terms > 1 else y.squeeze(1)

    def _b_first(self, grid: torch.Tensor) -> torch.Tensor:
        """Y = Σ_r A_r·(X·B_rᵀ), as two large GEMMs (all tokens at once) instead of N small ones."""
        (m1, n1), (m2, n2), terms = self.a_shape, self.b_shape, self.num_terms
        tokens = grid.shape[0]
        right = grid.reshape(tokens * n1, n2) @ self.b.reshape(terms * m2, n2).t()  # (N·n1, R·m2)
        right = right.reshape(tokens, n1, terms, m2).permute(2, 1, 0, 3).reshape(terms, n1, tokens * m2)
        y = (self.a @ right).sum(dim=0)  # (m1, N·m2)
        return y.reshape(m1, tokens, m2).permute(1, 0, 2)

    def _a_first(self, grid: torch.Tensor) -> torch.Tensor:
        """Y = Σ_r (A_r·X)·B_rᵀ, as two large GEMMs."""
        (m1, n1), (_, n2), terms = self.a_shape, self.b_shape, self.num_terms
        tokens = grid.shape[0]
        left = self.a.reshape(terms * m1, n1) @ grid.permute(1, 0, 2).reshape(n1, tokens * n2)
        left = left.reshape(terms, m1, tokens, n2).permute(0, 2, 1, 3).reshape(terms, tokens * m1, n2)
        return (left @ self.b.transpose(1, 2)).sum(dim=0)  # (N·m1, m2)

    def dense_weight(self) -> torch.Tensor:
        """W = Σ_r A_r⊗B_r in ``nn.Linear`` (out, in) layout."""
        return kron_sum(self.a, self.b)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the reconstructed weight and the same bias."""
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.a.device,
            dtype=self.a.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, a_shape={self.a_shape}, "
            f"b_shape={self.b_shape}, num_terms={self.num_terms}, order={self.order}, path={self.path}, "
            f"bias={self.bias is not None}"
        )
