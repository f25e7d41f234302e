"""The algebra of the nearest-Kronecker initialisation (Van Loan & Pitsianis; KroneckerBERT Eqs. 2-5)."""

from __future__ import annotations

import itertools

import pytest
import torch
from compresskit_plugins.kronecker.nearest import kron_sum, nearest_kronecker, rearrange
from hypothesis import given, settings
from hypothesis import strategies as st

dims = st.integers(min_value=1, max_value=5)
shapes = st.tuples(dims, dims, dims, dims).filter(lambda s: s[0] * s[1] > 1 and s[2] * s[3] > 1)
seeds = st.integers(min_value=0, max_value=2**16)
FAST = settings(max_examples=30, deadline=None)


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@FAST
@given(shape=shapes, seed=seeds)
def test_an_exact_kronecker_product_is_recovered(shape: tuple[int, int, int, int], seed: int) -> None:
    m1, n1, m2, n2 = shape
    a, b = _random((m1, n1), seed), _random((m2, n2), seed + 1)
    weight = torch.kron(a, b)
    fa, fb = nearest_kronecker(weight, (m1, n1), 1)
    assert torch.allclose(kron_sum(fa, fb), weight, atol=1e-6 * weight.abs().max().item())


@FAST
@given(shape=shapes, seed=seeds, data=st.data())
def test_error_equals_the_tail_singular_values(shape: tuple[int, int, int, int], seed: int, data) -> None:
    m1, n1, m2, n2 = shape
    weight = _random((m1 * m2, n1 * n2), seed)
    terms = data.draw(st.integers(1, min(m1 * n1, m2 * n2)))
    fa, fb = nearest_kronecker(weight, (m1, n1), terms)
    error = torch.linalg.norm(weight - kron_sum(fa, fb))
    sigma = torch.linalg.svdvals(rearrange(weight, (m1, n1), (m2, n2)))
    assert error.item() == pytest.approx(sigma[terms:].pow(2).sum().sqrt().item(), abs=1e-9)


@FAST
@given(shape=shapes, seed=seeds)
def test_error_never_grows_with_more_terms_and_is_zero_at_full_rank(
    shape: tuple[int, int, int, int], seed: int
) -> None:
    m1, n1, m2, n2 = shape
    weight = _random((m1 * m2, n1 * n2), seed)
    full = min(m1 * n1, m2 * n2)
    errors = [
        torch.linalg.norm(weight - kron_sum(*nearest_kronecker(weight, (m1, n1), r))).item()
        for r in range(1, full + 1)
    ]
    assert all(later <= earlier + 1e-10 for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < 1e-9 * max(1.0, torch.linalg.norm(weight).item())


@FAST
@given(shape=shapes, seed=seeds, scale=st.floats(1e-4, 1.0))
def test_a_perturbation_of_the_factors_never_beats_the_initialisation(
    shape: tuple[int, int, int, int], seed: int, scale: float
) -> None:
    m1, n1, m2, n2 = shape
    weight = _random((m1 * m2, n1 * n2), seed)
    fa, fb = nearest_kronecker(weight, (m1, n1), 1)
    best = torch.linalg.norm(weight - kron_sum(fa, fb)).item()
    noisy_a = fa + scale * _random(tuple(fa.shape), seed + 2)
    noisy_b = fb + scale * _random(tuple(fb.shape), seed + 3)
    assert torch.linalg.norm(weight - kron_sum(noisy_a, noisy_b)).item() >= best - 1e-12


def test_rearrangement_turns_a_kronecker_product_into_a_rank_one_matrix() -> None:
    a, b = _random((3, 4), 0), _random((2, 5), 1)
    matrix = rearrange(torch.kron(a, b), (3, 4), (2, 5))
    assert torch.allclose(matrix, a.reshape(-1, 1) @ b.reshape(1, -1))


@pytest.mark.parametrize("backend", ["torch", "scipy", "tensorly"])
@pytest.mark.parametrize("size", [(24, 30), (600, 800)])  # exact SVD, then the partial/randomised path
def test_every_backend_finds_the_dominant_terms(backend: str, size: tuple[int, int]) -> None:
    m, n = size
    a_shape = (m // 2, n // 2) if m < 100 else (20, 40)
    b_shape = (m // a_shape[0], n // a_shape[1])
    signal = sum((3 - r) * torch.kron(_random(a_shape, r), _random(b_shape, 10 + r)) for r in range(2))
    weight = signal + 1e-3 * _random((m, n), 99)
    fa, fb = nearest_kronecker(weight, a_shape, 2, svd=backend)
    relative = torch.linalg.norm(weight - kron_sum(fa, fb)) / torch.linalg.norm(weight)
    sigma = torch.linalg.svdvals(rearrange(weight, a_shape, b_shape))
    optimum = sigma[2:].pow(2).sum().sqrt() / torch.linalg.norm(weight)
    assert relative.item() <= optimum.item() * 1.01 + 1e-12


@pytest.mark.parametrize(
    ("dtype", "a_shape", "b_shape"),
    [
        (torch.float32, (6, 5), (3, 2)),  # n2 = 2 floats: moved as one 8-byte word
        (torch.float32, (6, 5), (1, 2)),  # m2 = 1: a size-1 axis after the permute
        (torch.float16, (6, 5), (3, 4)),  # 4 halves: one 8-byte word
        (torch.bfloat16, (4, 3), (2, 2)),  # 2 halves: one 4-byte word
        (torch.float64, (4, 3), (2, 1)),  # one double: plain permute
        (torch.float32, (4, 3), (5, 7)),  # 28 bytes: plain permute
    ],
)
def test_rearrangement_is_the_block_vectorisation_for_every_packing(
    dtype: torch.dtype, a_shape: tuple[int, int], b_shape: tuple[int, int]
) -> None:
    (m1, n1), (m2, n2) = a_shape, b_shape
    weight = torch.randn(m1 * m2, n1 * n2).to(dtype)
    expected = torch.stack(
        [
            weight[i * m2 : (i + 1) * m2, j * n2 : (j + 1) * n2].reshape(-1)
            for i in range(m1)
            for j in range(n1)
        ]
    )
    assert torch.equal(rearrange(weight, a_shape, b_shape), expected)
    transposed = weight.t().contiguous().t()  # a Conv1D weight read as (out, in): not contiguous
    assert torch.equal(rearrange(transposed, a_shape, b_shape), expected)
