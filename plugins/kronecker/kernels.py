"""Exact formulations of y = x·(Σ_r A_r⊗B_r)ᵀ + bias, each with a hand-written backward.

Notation (row-major, as in ``layers.py``): N tokens, x reshaped to X (N, n1, n2), A_r m1×n1, B_r m2×n2,
Y (N, m1, m2) = Σ_r A_r·X_t·B_rᵀ per token t (the row-major form of KroneckerBERT Eq. 6). The product with
B contracts the *inner* axis of X: for all tokens at once it is one GEMM on X viewed (N·n1, n2) (a "fold").
The product with A contracts the *middle* axis, which no single GEMM over the token layout can do; it is
done either as a batched product over the tokens (``*_bmm``: no copies, good when A is small) or as one
GEMM on a transposed layout that the B-fold writes for free (``*_gemm``: one transposing copy of the output
in the forward and of the output gradient in the backward, good when A is large). ``a_first`` / ``b_first``
is the association order of Eq. 7. ``dense`` builds W = Σ_r A_r⊗B_r (m·n values) and runs one ``F.linear``;
it never loses to the dense layer it replaces and wins at large A·B with tiny factors.

Every formulation computes the same map; they differ only in floating-point rounding (relative
differences ~1e-6 in float32, ~1e-15 in float64; see ``tests/unit/test_kronecker_kernels.py``).

Backward formulas (G = dL/dY, T = X·Bᵀ, Z = A·X, per token t; Σ over tokens and terms as written):

    dX_t = Σ_r A_rᵀ·G_t·B_r,    dA_r = Σ_t G_t·T_{r,t}ᵀ,    dB_r = Σ_t G_tᵀ·Z_{r,t},    dbias = Σ_t G_t

computed so that every sum over tokens is inside a GEMM (never a per-token product summed afterwards).
Why our own autograd functions: autograd of the forward ops computes dB of the batched form as one
product per token followed by a sum over an (N, m2, n2) tensor, which made training slower than dense.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .nearest import kron_sum

#: name -> forward-only implementation (plain tensor ops: traceable by torch.compile and ONNX export).
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _dims(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int, int, int]:
    terms, m1, n1 = a.shape
    _, m2, n2 = b.shape
    return int(terms), int(m1), int(n1), int(m2), int(n2)


def _a_cat_columns(a: torch.Tensor) -> torch.Tensor:
    """(m1, n1·R) with column j·R + r holding A_r[:, j] (matches T's (n1, R) row order)."""
    terms, m1, n1 = a.shape
    return a.permute(1, 2, 0).reshape(m1, n1 * terms)


def _a_cat_rows(a: torch.Tensor) -> torch.Tensor:
    """(m1·R, n1) with row i·R + r holding A_r[i, :] (Z's (m1, R) layout)."""
    terms, m1, n1 = a.shape
    return a.permute(1, 0, 2).reshape(m1 * terms, n1)


def _b_cat(b: torch.Tensor) -> torch.Tensor:
    """(R·n2, m2) with row r·n2 + l holding B_r[:, l]."""
    terms, m2, n2 = b.shape
    return b.transpose(1, 2).reshape(terms * n2, m2)


# ---------------------------------------------------------------- forward-only maths (plain tensor ops)


def dense_forward(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return F.linear(x2, kron_sum(a, b), bias)


def dense_train(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear`` with W = Σ_r A_r⊗B_r built by :class:`KronSum` (its backward costs O(m·n))."""
    return F.linear(x2, KronSum.apply(a, b), bias)


class KronSum(torch.autograd.Function):
    """W = Σ_r A_r⊗B_r with the gradient read from the rearranged gradient R(dW) (Van Loan & Pitsianis):

    R(W) = Σ_r vec(A_r)·vec(B_r)ᵀ, so dA_r = R(dW)·vec(B_r) and dB_r = R(dW)ᵀ·vec(A_r): one copy of
    the m×n gradient and two thin GEMMs (autograd of the einsum broadcasts an R·m·n product instead).
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return kron_sum(a, b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, b = ctx.saved_tensors
        terms, m1, n1, m2, n2 = _dims(a, b)
        rearranged = grad.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = (rearranged @ b.reshape(terms, m2 * n2).t()).t().reshape(terms, m1, n1)
        if ctx.needs_input_grad[1]:
            grad_b = (a.reshape(terms, m1 * n1) @ rearranged).reshape(terms, m2, n2)
        return grad_a, grad_b


def b_first_bmm_forward(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _b_first_bmm(x2, a, b, bias)[0]


def _b_first_bmm(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """T = X·Bᵀ as one GEMM (N·n1, R·m2); Y_t = [A_r]_cat · T_t per token, bias added by the same op."""
    terms, m1, n1, m2, n2 = _dims(a, b)
    tokens = x2.shape[0]
    t = x2.reshape(tokens * n1, n2) @ b.reshape(terms * m2, n2).t()  # (N·n1, R·m2) = (N, n1·R, m2)
    t3 = t.view(tokens, n1 * terms, m2)
    a_cat = _a_cat_columns(a).expand(tokens, m1, n1 * terms)
    y = torch.bmm(a_cat, t3) if bias is None else torch.baddbmm(bias.view(1, m1, m2), a_cat, t3)
    return y.view(tokens, m1 * m2), t3


def a_first_bmm_forward(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _a_first_bmm(x2, a, b, bias)[0]


def _a_first_bmm(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z_t = [A_r]_rows · X_t per token (N, m1·R, n2); Y = Z (N·m1, R·n2) · [B_r]_cat as one GEMM."""
    terms, m1, n1, m2, n2 = _dims(a, b)
    tokens = x2.shape[0]
    x3 = x2.reshape(tokens, n1, n2)
    z = torch.bmm(_a_cat_rows(a).expand(tokens, m1 * terms, n1), x3)  # (N, m1·R, n2)
    z2 = z.view(tokens * m1, terms * n2)
    y = (z2 @ _b_cat(b)).view(tokens, m1 * m2)
    return (y if bias is None else y.add_(bias)), z2


def b_first_gemm_forward(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _b_first_gemm(x2, a, b, bias)[0]


def _b_first_gemm(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tᵀ = B·Xᵀ written as (R·m2, N·n1), i.e. (m2·N, n1) per term; Y' = Σ_r Tᵀ_r·A_rᵀ (m2·N, m1); one
    transposing copy gives Y (N, m1, m2)."""
    terms, m1, n1, m2, n2 = _dims(a, b)
    tokens = x2.shape[0]
    tt = b.reshape(terms * m2, n2) @ x2.reshape(tokens * n1, n2).t()  # (R·m2, N·n1)
    tt3 = tt.view(terms, m2 * tokens, n1)
    y_t = tt3[0] @ a[0].t()
    for r in range(1, terms):
        y_t = y_t.addmm(tt3[r], a[r].t())
    y = y_t.view(m2, tokens, m1).permute(1, 2, 0)
    out = y.clone(memory_format=torch.contiguous_format)  # token-major, whatever y's strides
    if bias is not None:
        out.add_(bias.view(m1, m2))
    return out.view(tokens, m1 * m2), tt3


def a_first_gemm_forward(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _a_first_gemm(x2, a, b, bias)[0]


def _a_first_gemm(
    x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One transposing copy X → Xᵗ (n2·N, n1); Zᵗ_r = Xᵗ·A_rᵀ (n2, N·m1) per term; Y = Zᵗᵀ·[B_r]_cat."""
    terms, m1, n1, m2, n2 = _dims(a, b)
    tokens = x2.shape[0]
    xt = x2.reshape(tokens, n1, n2).permute(2, 0, 1).reshape(n2 * tokens, n1)
    zt = torch.stack([xt @ a[r].t() for r in range(terms)]) if terms > 1 else (xt @ a[0].t()).unsqueeze(0)
    zt2 = zt.view(terms * n2, tokens * m1)
    y = (zt2.t() @ _b_cat(b)).view(tokens, m1 * m2)
    return (y if bias is None else y.add_(bias)), xt, zt2


# ---------------------------------------------------------------- autograd functions


class _BFirstBmm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        y, t3 = _b_first_bmm(x2, a, b, bias)
        ctx.save_for_backward(x2, a, b, t3)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, a, b, t3 = ctx.saved_tensors
        terms, m1, n1, m2, n2 = _dims(a, b)
        tokens = x2.shape[0]
        g3 = grad.reshape(tokens, m1, m2)
        need_x, need_a, need_b, need_bias = ctx.needs_input_grad
        grad_x = grad_a = grad_b = grad_bias = None
        if need_a:  # Σ_t G_t·T_tᵀ: (N, m1, n1·R) is small because this path is chosen for a small A
            g_cat = torch.bmm(g3, t3.transpose(1, 2)).sum(0)
            grad_a = g_cat.view(m1, n1, terms).permute(2, 0, 1)
        if need_x or need_b:
            a_cat = _a_cat_columns(a)
            gt = torch.bmm(a_cat.t().expand(tokens, n1 * terms, m1), g3)  # (N, n1·R, m2)
            gt2 = gt.view(tokens * n1, terms * m2)
            b2 = b.reshape(terms * m2, n2)
            if need_x:
                grad_x = gt2 @ b2
            if need_b:
                grad_b = (gt2.t() @ x2.reshape(tokens * n1, n2)).view(terms, m2, n2)
        if need_bias and ctx.has_bias:
            grad_bias = grad.reshape(tokens, m1 * m2).sum(0)
        return _shape_x(grad_x, x2), grad_a, grad_b, grad_bias


class _AFirstBmm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        y, z2 = _a_first_bmm(x2, a, b, bias)
        ctx.save_for_backward(x2, a, b, z2)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, a, b, z2 = ctx.saved_tensors
        terms, m1, n1, m2, n2 = _dims(a, b)
        tokens = x2.shape[0]
        g2 = grad.reshape(tokens * m1, m2)
        need_x, need_a, need_b, need_bias = ctx.needs_input_grad
        grad_x = grad_a = grad_b = grad_bias = None
        if need_b:  # Σ_t Z_tᵀ·G_t as one GEMM over all tokens
            grad_b = (z2.t() @ g2).view(terms, n2, m2).transpose(1, 2)
        if need_x or need_a:
            gz = (g2 @ _b_cat(b).t()).view(tokens, m1 * terms, n2)  # (N, m1·R, n2)
            if need_x:
                grad_x = torch.bmm(_a_cat_rows(a).t().expand(tokens, n1, m1 * terms), gz)
            if need_a:
                g_rows = torch.bmm(gz, x2.reshape(tokens, n1, n2).transpose(1, 2)).sum(0)  # (m1·R, n1)
                grad_a = g_rows.view(m1, terms, n1).transpose(0, 1)
        if need_bias and ctx.has_bias:
            grad_bias = grad.reshape(tokens, m1 * m2).sum(0)
        return _shape_x(grad_x, x2), grad_a, grad_b, grad_bias


class _BFirstGemm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        y, tt3 = _b_first_gemm(x2, a, b, bias)
        ctx.save_for_backward(x2, a, b, tt3)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, a, b, tt3 = ctx.saved_tensors
        terms, m1, n1, m2, n2 = _dims(a, b)
        tokens = x2.shape[0]
        need_x, need_a, need_b, need_bias = ctx.needs_input_grad
        grad_x = grad_a = grad_b = grad_bias = None
        g_t = grad.reshape(tokens, m1, m2).permute(2, 0, 1).reshape(m2 * tokens, m1)  # the one copy
        if need_a:
            grad_a = torch.stack([g_t.t() @ tt3[r] for r in range(terms)])
        if need_x or need_b:
            s = torch.stack([g_t @ a[r] for r in range(terms)]).view(terms * m2, tokens * n1)
            if need_x:
                grad_x = s.t() @ b.reshape(terms * m2, n2)
            if need_b:
                grad_b = (s @ x2.reshape(tokens * n1, n2)).view(terms, m2, n2)
        if need_bias and ctx.has_bias:
            grad_bias = grad.reshape(tokens, m1 * m2).sum(0)
        return _shape_x(grad_x, x2), grad_a, grad_b, grad_bias


class _AFirstGemm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        y, xt, zt2 = _a_first_gemm(x2, a, b, bias)
        ctx.save_for_backward(xt, a, b, zt2)
        ctx.has_bias = bias is not None
        ctx.x_shape = x2.shape
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xt, a, b, zt2 = ctx.saved_tensors
        terms, m1, n1, m2, n2 = _dims(a, b)
        tokens = ctx.x_shape[0]
        g2 = grad.reshape(tokens * m1, m2)
        need_x, need_a, need_b, need_bias = ctx.needs_input_grad
        grad_x = grad_a = grad_b = grad_bias = None
        if need_b:
            grad_b = (zt2 @ g2).view(terms, n2, m2).transpose(1, 2)
        if need_x or need_a:
            gzt = (_b_cat(b) @ g2.t()).view(terms, n2 * tokens, m1)  # (R, n2·N, m1)
            if need_a:
                grad_a = torch.stack([gzt[r].t() @ xt for r in range(terms)])
            if need_x:
                gxt = gzt[0] @ a[0]
                for r in range(1, terms):
                    gxt = gxt.addmm(gzt[r], a[r])
                grad_x = gxt.view(n2, tokens, n1).permute(1, 2, 0).reshape(tokens, n1 * n2)
        if need_bias and ctx.has_bias:
            grad_bias = grad.reshape(tokens, m1 * m2).sum(0)
        return grad_x, grad_a, grad_b, grad_bias


def _shape_x(grad_x: torch.Tensor | None, x2: torch.Tensor) -> torch.Tensor | None:
    return None if grad_x is None else grad_x.reshape(x2.shape)


#: formulation name -> (forward-only maths, autograd function or None for plain autograd)
FORMULATIONS: dict[str, tuple[Forward, type[torch.autograd.Function] | None]] = {
    "dense": (dense_forward, None),
    "b_first_bmm": (b_first_bmm_forward, _BFirstBmm),
    "a_first_bmm": (a_first_bmm_forward, _AFirstBmm),
    "b_first_gemm": (b_first_gemm_forward, _BFirstGemm),
    "a_first_gemm": (a_first_gemm_forward, _AFirstGemm),
}


def kronecker_linear(
    x2: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    formulation: str,
) -> torch.Tensor:
    """y (N, m1·m2) for x2 (N, n1·n2) with the named formulation; custom backward when grads are needed."""
    forward, function = FORMULATIONS[formulation]
    if (
        not torch.is_grad_enabled()
        or not (
            x2.requires_grad
            or a.requires_grad
            or b.requires_grad
            or (bias is not None and bias.requires_grad)
        )
        or torch.is_autocast_enabled(x2.device.type)
    ):  # no backward, or mixed precision: plain autograd of the same maths (autocast casts each op)
        return forward(x2, a, b, bias)
    if function is None:
        return dense_train(x2, a, b, bias)
    return function.apply(x2, a, b, bias)
