"""Low-rank and tensorly layers: both formulations (factored, dense) agree, forward and gradients."""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.low_rank import LowRank
from compresskit_plugins.tensorly_layers import CP, TensorTrain, Tucker
from torch import nn

from compresskit import dispatch

LINEAR_DECOMPOSITIONS = [
    (LowRank, {"rank": 5}),
    (Tucker, {"rank": 3}),
    (CP, {"rank": 4}),
    (TensorTrain, {"rank": 3}),
]


@pytest.fixture(autouse=True)
def _fresh_dispatch(monkeypatch: pytest.MonkeyPatch):
    for name in (dispatch.ENV_MODE, dispatch.ENV_FORCE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(dispatch.ENV_CACHE, "off")  # every test probes afresh unless it sets a file
    dispatch.clear()
    yield
    dispatch.clear()


def _layer(cls: type, options: dict) -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Linear(24, 36).double()
    decomposition = cls(options)
    return decomposition.build(dense, decomposition.make_spec(dense, "layer"))


@pytest.mark.parametrize(("cls", "options"), LINEAR_DECOMPOSITIONS)
def test_factored_and_dense_give_the_same_outputs_and_gradients(cls: type, options: dict) -> None:
    results = []
    for name in ("factored", "dense"):
        layer = _layer(cls, options)
        layer.formulation = name
        x = torch.randn(2, 5, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        out = layer(x)
        out.pow(2).sum().backward()
        with torch.no_grad():
            cached = layer(x)
        grads = [p.grad for p in layer.parameters()]
        results.append((out.detach(), cached, x.grad, *grads))
    expected = x.detach() @ layer.dense_weight().detach().T + layer.bias.detach()
    assert torch.allclose(results[0][0], expected, atol=1e-10)
    for got, want in zip(results[0], results[1], strict=True):
        assert torch.allclose(got, want, atol=1e-9)


@pytest.mark.parametrize(("cls", "options"), LINEAR_DECOMPOSITIONS)
def test_a_training_probe_leaves_the_real_gradients_alone(cls: type, options: dict) -> None:
    layer = _layer(cls, options)
    x = torch.randn(3, 24, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    reference = _layer(cls, options)
    reference.formulation = "factored"
    reference(x.detach().requires_grad_()).sum().backward()
    for got, want in zip(layer.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(got.grad, want.grad, atol=1e-10)
    (row,) = dispatch.table()
    assert row["regime"]["training"] and set(row["ms"]) == {"factored", "dense"}


def test_the_cached_weight_follows_an_in_place_update() -> None:
    layer = _layer(LowRank, {"rank": 5})
    layer.formulation = "dense"
    x = torch.randn(4, 24, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        layer.left.mul_(3.0)
        assert torch.allclose(layer(x) - layer.bias, 3 * (before - layer.bias), atol=1e-10)


def test_low_rank_embedding_lookups_agree_in_both_formulations() -> None:
    torch.manual_seed(0)
    table = nn.Embedding(50, 16, padding_idx=1)
    decomposition = LowRank({"rank": 6})
    layer = decomposition.build(table, decomposition.make_spec(table, "emb"))
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        measured = layer(ids)
        layer.formulation = "dense"
        dense = layer(ids)
    assert torch.allclose(measured, dense, atol=1e-6)
    assert torch.allclose(dense, layer.dense_weight()[ids], atol=1e-6)
    assert [r["family"] for r in dispatch.table()] == ["low_rank_embedding"]
