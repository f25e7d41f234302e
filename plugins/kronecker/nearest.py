"""Nearest Kronecker product (Van Loan & Pitsianis 1993), as used by KroneckerBERT (§3.2.1, Eqs. 2-5).

For W (m×n) with m = m1·m2 and n = n1·n2, the rearrangement

    R(W) = W.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1·n1, m2·n2)

has the vectorised m2×n2 blocks of W as rows. It keeps the Frobenius norm and maps A⊗B to the rank-1
matrix vec(A)·vec(B)ᵀ, so the best sum of R Kronecker products is the rank-R truncated SVD of R(W):
A_r = √σ_r·u_r (reshaped m1×n1) and B_r = √σ_r·v_r (reshaped m2×n2), with error
‖W − Σ_r A_r⊗B_r‖_F = sqrt(Σ_{k>R} σ_k²) (Eckart-Young).

Backends: ``auto`` (default) is ``compresskit.linalg.top_singular_triplets``, which picks by shape: the
rearranged matrices of BERT-like models are very lopsided (e.g. 18432×32 or 1465056×16), and there the
eigendecomposition of the small q×q Gram matrix plus one Rayleigh–Ritz step costs O(p·q²) and reaches
the optimum (tests compare with the full SVD). ``torch``, ``scipy`` and ``tensorly`` use an exact thin
SVD, or a partial/randomised one when few terms are wanted from a large rearrangement (see
:func:`use_partial_svd`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from compresskit import DecompositionError
from compresskit.plugin import all_finite
from compresskit.plugin import top_singular_triplets as shape_aware_triplets

from .shapes import check_terms

SvdBackend = Literal["auto", "torch", "scipy", "tensorly"]
SVD_BACKENDS: tuple[str, ...] = ("auto", "torch", "scipy", "tensorly")

#: A partial SVD is used only when the smaller side of R(W) is at least this long ...
PARTIAL_MIN_SIDE = 256
#: ... and the number of terms is at most this fraction of it; otherwise the thin SVD is exact and cheap.
PARTIAL_MAX_FRACTION = 0.1


#: Integer dtypes by size in bytes: a row of n2 ≤ 8 bytes is moved as one element (see :func:`rearrange`).
_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def rearrange(weight: torch.Tensor, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> torch.Tensor:
    """R(W), the (m1·n1)×(m2·n2) rearrangement of W whose rows are its vectorised m2×n2 blocks.

    When a block row (n2 values) fits in 8 bytes it is copied as one integer word: the same bytes in
    the same order, but a permuted copy of 8-byte words is ~8× faster on CPU than one of 4-byte floats
    in pairs (KB8's attention has n2 = 2).
    """
    (m1, n1), (m2, n2) = a_shape, b_shape
    word = _WORDS.get(n2 * weight.element_size())
    if word is not None and n2 > 1 and weight.is_contiguous() and weight.device.type != "meta":
        packed = weight.view(word).reshape(m1, m2, n1).permute(0, 2, 1).contiguous().reshape(-1)
        return packed.view(weight.dtype).reshape(m1 * n1, m2 * n2)
    return weight.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def kron_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_r A_r ⊗ B_r for stacked factors a (R, m1, n1) and b (R, m2, n2), row-major like ``torch.kron``."""
    _, m1, n1 = a.shape
    _, m2, n2 = b.shape
    return torch.einsum("rij,rkl->ikjl", a, b).reshape(m1 * m2, n1 * n2)


def use_partial_svd(shape: tuple[int, int], num_terms: int) -> bool:
    """Whether a partial/randomised SVD is worth it: a large rearrangement and few terms wanted."""
    side = min(shape)
    return side >= PARTIAL_MIN_SIDE and num_terms <= PARTIAL_MAX_FRACTION * side


def check_finite(weight: torch.Tensor, where: str) -> None:
    """Raise :class:`DecompositionError` if ``weight`` holds NaN or Inf (never on the meta device)."""
    if not all_finite(weight):
        bad = int((~torch.isfinite(weight)).sum())
        raise DecompositionError(
            f"{where}: the weight holds {bad} NaN/Inf value(s); the nearest-Kronecker SVD needs finite "
            "weights. Fix or re-load the checkpoint, or exclude this module from the group."
        )


def nearest_kronecker(
    weight: torch.Tensor,
    a_shape: tuple[int, int],
    num_terms: int = 1,
    *,
    svd: SvdBackend = "auto",
    where: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(a, b)`` of shapes (R, m1, n1), (R, m2, n2) minimising ‖W − Σ_r a_r⊗b_r‖_F.

    Computed in float64 for float64 weights and float32 otherwise, returned in the weight's dtype and
    device. Singular vectors get a deterministic sign (largest |entry| of u_r positive).
    """
    m, n = weight.shape
    m1, n1 = a_shape
    if m % m1 or n % n1:
        raise DecompositionError(f"{where}: A shape {a_shape} does not divide the {m}x{n} weight.")
    b_shape = (m // m1, n // n1)
    check_terms(num_terms, a_shape, b_shape, where)
    check_finite(weight, where)
    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    matrix = rearrange(weight.detach().to(work_dtype), a_shape, b_shape)
    u, s, vh = top_singular_triplets(matrix, num_terms, svd)
    u, vh = _fix_signs(u, vh)
    root = s.clamp_min(0).sqrt()
    a = (u * root).t().reshape(num_terms, m1, n1)
    b = (vh * root[:, None]).reshape(num_terms, *b_shape)
    return a.to(weight.dtype), b.to(weight.dtype)


def top_singular_triplets(
    matrix: torch.Tensor, k: int, backend: SvdBackend = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_k, S_k, Vh_k)`` of the top ``k`` singular triplets, in decreasing order, on matrix's device."""
    if backend not in SVD_BACKENDS:
        raise DecompositionError(f"unknown svd backend {backend!r}; choose one of {', '.join(SVD_BACKENDS)}.")
    if backend == "auto":
        return shape_aware_triplets(matrix, k)
    partial = use_partial_svd((int(matrix.shape[0]), int(matrix.shape[1])), k)
    if backend == "torch":
        return _torch_svd(matrix, k, partial)
    array = matrix.cpu().numpy()
    u, s, vh = _scipy_svd(array, k, partial) if backend == "scipy" else _tensorly_svd(array, k, partial)
    order = np.argsort(-s)
    as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(matrix)  # noqa: E731
    return as_tensor(u[:, order]), as_tensor(s[order]), as_tensor(vh[order])


Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _torch_svd(matrix: torch.Tensor, k: int, partial: bool) -> Triplets:
    if partial:
        u, s, v = torch.svd_lowrank(matrix, q=min(k + 10, min(matrix.shape)), niter=6)
        return u[:, :k], s[:k], v[:, :k].t()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :k], s[:k], vh[:k]


def _scipy_svd(array: np.ndarray, k: int, partial: bool) -> tuple[np.ndarray, ...]:
    import scipy.linalg
    import scipy.sparse.linalg

    if partial:
        u, s, vh = scipy.sparse.linalg.svds(array, k=k, random_state=0)
        return u, s, vh
    u, s, vh = scipy.linalg.svd(array, full_matrices=False, lapack_driver="gesdd")
    return u[:, :k], s[:k], vh[:k]


def _tensorly_svd(array: np.ndarray, k: int, partial: bool) -> tuple[np.ndarray, ...]:
    import tensorly
    from tensorly.tenalg import svd_interface

    method = "randomized_svd" if partial else "truncated_svd"
    with tensorly.backend_context("numpy"):
        u, s, vh = svd_interface(array, method=method, n_eigenvecs=k, flip_sign=False, random_state=0)
    return np.asarray(u), np.asarray(s), np.asarray(vh)


def _fix_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (u_r, v_r) pair so that the largest-magnitude entry of u_r is positive."""
    pivot = u.gather(0, u.abs().argmax(dim=0, keepdim=True)).squeeze(0)
    sign = torch.where(pivot < 0, -1.0, 1.0).to(u)
    return u * sign, vh * sign[:, None]
