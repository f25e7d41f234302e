"""Top-k singular triplets by shape: the error of each method against the optimum; the fast finite check."""

from __future__ import annotations

import pytest
import torch

from compresskit import DecompositionError
from compresskit.linalg import all_finite, choose_method, top_singular_triplets


def _matrix(rows: int, cols: int, spikes: int, seed: int = 0) -> torch.Tensor:
    """Noise plus a few strong directions (a flat tail, the hard case for a randomized SVD)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(rows, cols, generator=gen) / 30
    strong = torch.randn(rows, spikes, generator=gen) @ torch.randn(spikes, cols, generator=gen) / 20
    return noise + strong


def _errors(matrix: torch.Tensor, k: int, method: str) -> tuple[float, float, float]:
    """(‖M − U·S·Vh‖_F, the optimum sqrt(Σ_{i>k} σ_i²), ‖M‖_F), in float64."""
    u, s, vh = top_singular_triplets(matrix, k, method)
    exact = torch.linalg.svdvals(matrix.double())
    error = (matrix.double() - (u.double() * s.double()) @ vh.double()).norm()
    return error.item(), exact[k:].pow(2).sum().sqrt().item(), exact.pow(2).sum().sqrt().item()


def _excess(matrix: torch.Tensor, k: int, method: str) -> float:
    """How much the rank-k error exceeds the optimum, relative to ‖M‖_F."""
    error, optimum, norm = _errors(matrix, k, method)
    return (error - optimum) / norm


@pytest.mark.parametrize(
    ("shape", "k"), [((4000, 16), 1), ((16, 5000), 1), ((3000, 32), 4), ((2000, 6), 6), ((300, 40), 3)]
)
def test_gram_reaches_the_optimum_on_lopsided_matrices(shape: tuple[int, int], k: int) -> None:
    matrix = _matrix(*shape, spikes=2)
    assert abs(_excess(matrix, k, "gram")) < 1e-6
    u, s, vh = top_singular_triplets(matrix, k, "gram")
    assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1])
    assert torch.all(s[:-1] >= s[1:])
    assert torch.allclose(u.T @ u, torch.eye(k), atol=1e-4) and torch.allclose(
        vh @ vh.T, torch.eye(k), atol=1e-4
    )


def test_gram_is_exact_in_float64() -> None:
    matrix = _matrix(500, 12, spikes=3).double()
    assert abs(_excess(matrix, 3, "gram")) < 1e-12


def test_randomized_stays_within_one_percent_of_the_optimum_on_a_flat_spectrum() -> None:
    matrix = _matrix(384, 1536, spikes=8)
    error, optimum, _ = _errors(matrix, 20, "randomized")
    assert optimum <= error < 1.01 * optimum
    assert abs(_excess(matrix, 20, "full")) < 1e-6


def test_randomized_is_deterministic_and_leaves_the_global_generator_alone() -> None:
    matrix = _matrix(384, 700, spikes=4)
    state = torch.get_rng_state()
    first = top_singular_triplets(matrix, 5, "randomized")
    second = top_singular_triplets(matrix, 5, "randomized")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert torch.equal(torch.get_rng_state(), state)


def test_auto_chooses_by_shape() -> None:
    assert choose_method((1_465_056, 16), 1) == "gram"  # BERT-base KB21 embedding rearrangement
    assert choose_method((18432, 32), 1) == "gram"  # KB21 attention
    assert choose_method((768, 3072), 21) == "randomized"  # low rank at KB21's size
    assert choose_method((768, 768), 600) == "full"


def test_bad_requests_are_refused() -> None:
    with pytest.raises(DecompositionError, match="cannot take 5 singular triplets of a 4x3 matrix"):
        top_singular_triplets(torch.ones(4, 3), 5)
    with pytest.raises(DecompositionError, match="unknown SVD method 'exact'"):
        top_singular_triplets(torch.ones(4, 3), 1, "exact")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_every_non_finite_value(bad: float) -> None:
    weight = torch.randn(50, 40)
    assert all_finite(weight)
    weight[17, 3] = bad  # changed in place after a positive check: scanned again
    assert not all_finite(weight)
    assert all_finite(torch.empty(3, 3, device="meta")) and all_finite(torch.arange(4))
