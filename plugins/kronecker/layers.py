"""``KroneckerLinear``: y = (Σ_r A_r⊗B_r)·x + b without building the dense weight (KroneckerBERT §3.2.3).

With W = Σ_r A_r⊗B_r (A_r m1×n1, B_r m2×n2, row-major ``torch.kron`` layout, W[(i·m2+k), (j·n2+l)] =
A[i, j]·B[k, l]) and X the input reshaped row-major to (n1, n2), the output reshaped to (m1, m2) is

    Y = Σ_r A_r · X · B_rᵀ     (the row-major form of Eq. 6)

``order`` is the cheaper of the two association orders of Eq. 7 (``"b_first"``: X·Bᵀ then A·(…);
``"a_first"``: A·X then (…)·Bᵀ). How the products are carried out (one GEMM over all tokens or a batched
product per token, or a dense weight) is chosen per call among exact formulations with their own backward
(``kernels.py``) by measured dispatch (``paths.py``); ``formulation`` pins one for this layer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from compresskit import CompressedModuleMixin, dense_bias, dense_weight, linear_shape
from compresskit.plugin import WeightCache, needs_grad, tracing

from .kernels import kronecker_linear
from .nearest import SvdBackend, kron_sum, nearest_kronecker
from .paths import choose_linear, static_formulation
from .shapes import Shape, check_terms, resolve_shapes, term_flops

Order = Literal["a_first", "b_first"]


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
        #: A formulation name from ``kernels.FORMULATIONS`` to always run, or None for measured dispatch.
        self.formulation: str | None = None
        self._dense_cache = WeightCache()
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
        if not initialize:
            return cls(a, b, num_terms, bias is not None, device=weight.device, dtype=weight.dtype)
        # skip_init: no random initialisation of factors that the SVD overwrites next
        new = skip_init(cls, a, b, num_terms, bias is not None, device=weight.device, dtype=weight.dtype)
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
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        training = needs_grad(x2, self.a, self.b, self.bias)
        name = self.formulation or (
            static_formulation(self.a_shape, self.b_shape, self.num_terms)
            if tracing()
            else choose_linear(self.a, self.b, self.bias, x2, training)
        )
        if name == "dense" and not training and not tracing():
            y = F.linear(x2, self.cached_dense_weight(), self.bias)
        else:
            y = kronecker_linear(x2, self.a, self.b, self.bias, name)
        return y.reshape(*lead, self.out_features)

    @property
    def grid_shape(self) -> Shape:
        return (self.a_shape[1], self.b_shape[1])

    def cached_dense_weight(self) -> torch.Tensor:
        """W for inference, rebuilt only when a factor changed (in place, moved or reloaded)."""
        return self._dense_cache.get((self.a, self.b), self.dense_weight)

    def quantized_dynamic(self) -> nn.Module:
        """An inference-only copy whose large-factor GEMM runs in int8 (``compresskit.quantize_dynamic``)."""
        from .quantized import QuantizedKroneckerLinear

        return QuantizedKroneckerLinear(self)

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
            f"b_shape={self.b_shape}, num_terms={self.num_terms}, order={self.order}, "
            f"bias={self.bias is not None}"
        )
