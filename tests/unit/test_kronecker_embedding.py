"""KroneckerEmbedding: O(d) lookups, padding_idx, and a tied output projection that never builds E."""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerEmbedding
from torch import nn

from compresskit import DecompositionError


def _table(vocab: int = 50, dim: int = 12, padding_idx: int | None = 3) -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(vocab, dim, padding_idx=padding_idx)


@pytest.mark.parametrize("terms", [1, 3])
def test_lookup_is_a_row_of_the_reconstructed_table(terms: int) -> None:
    layer = KroneckerEmbedding.from_embedding(_table(), n=4, num_terms=terms)
    ids = torch.randint(0, 50, (2, 7))
    assert layer(ids).shape == (2, 7, 12)
    assert torch.allclose(layer(ids), layer.dense_weight()[ids], atol=1e-6)


def test_one_term_is_a_row_of_a_times_the_row_vector_b() -> None:
    layer = KroneckerEmbedding.from_embedding(_table(), n=4)
    assert layer.a.shape == (50, 3) and layer.b.shape == (1, 1, 4)
    token = 7
    assert torch.allclose(layer(torch.tensor(token)), torch.kron(layer.a[token], layer.b[0, 0]))


def test_all_terms_reconstruct_the_table_exactly() -> None:
    old = _table()
    layer = KroneckerEmbedding.from_embedding(old, n=4, num_terms=4)
    assert torch.allclose(layer.dense_weight(), old.weight, atol=1e-5)
    assert torch.allclose(layer.to_dense().weight, old.weight, atol=1e-5)


def test_padding_row_stays_zero_and_gets_no_gradient() -> None:
    layer = KroneckerEmbedding.from_embedding(_table(padding_idx=3), n=4, num_terms=2)
    assert layer.padding_idx == 3
    assert layer(torch.tensor([3])).abs().max().item() == 0.0
    layer(torch.tensor([3, 3, 5])).sum().backward()
    assert layer.a.grad is not None and layer.a.grad[3].abs().max().item() == 0.0
    assert layer.a.grad[5].abs().max().item() > 0
    assert layer.to_dense().padding_idx == 3


def test_tied_projection_gives_h_times_e_transposed_and_shares_the_factors() -> None:
    layer = KroneckerEmbedding.from_embedding(_table(), n=4, num_terms=2)
    head = layer.tied_head(bias=torch.zeros(50))
    hidden = torch.randn(2, 5, 12)
    assert torch.allclose(head(hidden), hidden @ layer.dense_weight().T, atol=1e-5)
    assert not any(p is layer.a or p is layer.b for p in head.parameters(recurse=False))
    with torch.no_grad():
        layer.b.mul_(2.0)  # training the embedding moves the head too: it is tied
    assert torch.allclose(head(hidden), hidden @ layer.dense_weight().T, atol=1e-5)
    head(hidden).sum().backward()
    assert layer.a.grad is not None and layer.b.grad is not None
    assert type(head.to_dense()) is nn.Linear


def test_gradients_reach_both_factors() -> None:
    layer = KroneckerEmbedding.from_embedding(_table(padding_idx=None), n=6)
    layer(torch.tensor([[1, 2], [3, 4]])).pow(2).sum().backward()
    assert layer.a.grad.abs().sum() > 0 and layer.b.grad.abs().sum() > 0


def test_n_must_divide_the_dimension_and_terms_are_bounded() -> None:
    with pytest.raises(DecompositionError, match="n=5 must divide embedding_dim=12"):
        KroneckerEmbedding.from_embedding(_table(), n=5)
    with pytest.raises(DecompositionError, match=r"num_terms=5 .* choose 1\.\.4"):
        KroneckerEmbedding.from_embedding(_table(), n=4, num_terms=5)
