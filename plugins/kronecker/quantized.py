"""Dynamic int8 quantisation of a ``KroneckerLinear``: the GEMM against its large factor runs in int8.

The large factor (A or B, whichever has more values) becomes the weight of a
``torch.ao.nn.quantized.dynamic.Linear`` (int8 weights per output channel, activations quantised per
batch by FBGEMM / oneDNN); the small factor's product stays in float (it is a few percent of the work):

* large B (KroneckerBERT's FFN matrices): in the Eq. 7 cheaper order, either T = X·Bᵀ as one int8
  GEMM over the rows (N·n1, n2) followed by the float product with A per token (``b_first``), or the
  float product with A first and then one int8 GEMM with [B_r] (``a_first``);
* large A (the attention matrices): Tᵀ = B·Xᵀ in float, then Σ_r Tᵀ_r·A_rᵀ as int8 GEMMs, and one
  transposing copy to the token-major output (``b_first_gemm`` in ``kernels.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from .kernels import _a_cat_columns, _a_cat_rows, _b_cat


def int8_linear(weight: torch.Tensor) -> DynamicLinear:
    """A dynamic int8 linear layer (no bias) whose float weight is ``weight`` (out, in)."""
    float_linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        float_linear.weight.copy_(weight.detach().float())
    float_linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # type: ignore[assignment]
    return DynamicLinear.from_float(float_linear)


class QuantizedKroneckerLinear(nn.Module):
    """Inference-only int8 version of a ``KroneckerLinear`` (see the module docstring)."""

    a_int8: nn.ModuleList
    b_int8: DynamicLinear
    a_cat: torch.Tensor
    a_rows: torch.Tensor
    b: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: Any) -> None:
        super().__init__()
        a, b = layer.a.detach().float(), layer.b.detach().float()
        self.terms, self.m1, self.n1 = (int(s) for s in a.shape)
        _, self.m2, self.n2 = (int(s) for s in b.shape)
        self.in_features, self.out_features = self.n1 * self.n2, self.m1 * self.m2
        self.large_a = a[0].numel() > b[0].numel()
        self.order = layer.order
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())
        if self.large_a:
            self.register_buffer("b", b.clone())
            self.a_int8 = nn.ModuleList(int8_linear(a[r]) for r in range(self.terms))
        elif self.order == "b_first":
            self.register_buffer("a_cat", _a_cat_columns(a).contiguous())
            self.b_int8 = int8_linear(b.reshape(self.terms * self.m2, self.n2))
        else:
            self.register_buffer("a_rows", _a_cat_rows(a).contiguous())
            self.b_int8 = int8_linear(_b_cat(b).t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        tokens = x2.shape[0]
        if self.large_a:
            y = self._large_a(x2, tokens)
        elif self.order == "b_first":
            t = self.b_int8(x2.reshape(tokens * self.n1, self.n2)).view(tokens, self.n1 * self.terms, self.m2)
            y = torch.bmm(self.a_cat.expand(tokens, -1, -1), t).view(tokens, self.out_features)
        else:
            z = torch.bmm(self.a_rows.expand(tokens, -1, -1), x2.view(tokens, self.n1, self.n2))
            y = self.b_int8(z.view(tokens * self.m1, self.terms * self.n2)).view(tokens, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _large_a(self, x2: torch.Tensor, tokens: int) -> torch.Tensor:
        tt = self.b.reshape(self.terms * self.m2, self.n2) @ x2.reshape(tokens * self.n1, self.n2).t()
        tt3 = tt.view(self.terms, self.m2 * tokens, self.n1)
        y_t = self.a_int8[0](tt3[0])
        for r in range(1, self.terms):
            y_t = y_t + self.a_int8[r](tt3[r])
        return y_t.view(self.m2, tokens, self.m1).permute(1, 2, 0).reshape(tokens, self.out_features)
