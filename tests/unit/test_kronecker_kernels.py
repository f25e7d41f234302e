"""Every Kronecker formulation equals the dense product, forward and gradients; dispatch is controllable."""

from __future__ import annotations

import json

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerEmbedding, KroneckerLinear
from compresskit_plugins.kronecker.kernels import FORMULATIONS, KronSum, kronecker_linear
from compresskit_plugins.kronecker.nearest import kron_sum
from compresskit_plugins.kronecker.paths import LINEAR, linear_candidates, static_formulation
from torch import nn

from compresskit import dispatch

SHAPES = [((3, 4), (5, 2)), ((4, 3), (2, 5)), ((1, 6), (7, 1)), ((6, 1), (1, 7)), ((2, 2), (3, 3))]


@pytest.fixture(autouse=True)
def _fresh_dispatch(monkeypatch: pytest.MonkeyPatch):
    for name in (dispatch.ENV_MODE, dispatch.ENV_FORCE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(dispatch.ENV_CACHE, "off")  # every test probes afresh unless it sets a file
    dispatch.clear()
    dispatch.set_mode(None)
    yield
    dispatch.clear()
    dispatch.set_mode(None)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(FORMULATIONS))
@pytest.mark.parametrize(("a_shape", "b_shape"), SHAPES)
@pytest.mark.parametrize("terms", [1, 2, 3])
@pytest.mark.parametrize("has_bias", [True, False])
def test_forward_and_every_gradient_equal_the_dense_product(
    name: str, a_shape: tuple[int, int], b_shape: tuple[int, int], terms: int, has_bias: bool
) -> None:
    if terms > min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1]):
        pytest.skip("more terms than the rank of the rearranged matrix")
    gen = torch.Generator().manual_seed(terms)
    f64 = {"dtype": torch.float64, "generator": gen}
    a = torch.randn(terms, *a_shape, **f64).requires_grad_()
    b = torch.randn(terms, *b_shape, **f64).requires_grad_()
    bias = torch.randn(a_shape[0] * b_shape[0], **f64).requires_grad_() if has_bias else None
    x = torch.randn(7, a_shape[1] * b_shape[1], **f64).requires_grad_()
    grad = torch.randn(7, a_shape[0] * b_shape[0], **f64)
    inputs = [x, a, b] + ([bias] if bias is not None else [])
    reference = x @ kron_sum(a, b).t() + (bias if bias is not None else 0)
    expected = torch.autograd.grad(reference, inputs, grad)
    out = kronecker_linear(x, a, b, bias, name)
    got = torch.autograd.grad(out, inputs, grad)
    assert _relative(out, reference) < 1e-12
    for g, e in zip(got, expected, strict=True):
        assert _relative(g, e) < 1e-12
    with torch.no_grad():  # the forward-only maths (also what tracing runs)
        assert _relative(kronecker_linear(x, a, b, bias, name), reference) < 1e-12


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_a_frozen_factor_gets_no_gradient_and_the_others_stay_exact(name: str) -> None:
    a = torch.randn(1, 4, 3, dtype=torch.float64)
    b = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, 15, dtype=torch.float64, requires_grad=True)
    out = kronecker_linear(x, a, b, None, name)
    out.pow(2).sum().backward()
    ref_x, ref_b = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (ref_x @ kron_sum(a, ref_b).t()).pow(2).sum().backward()
    assert a.grad is None
    assert _relative(x.grad, ref_x.grad) < 1e-12 and _relative(b.grad, ref_b.grad) < 1e-12


def test_kron_sum_gradient_is_read_from_the_rearranged_gradient() -> None:
    a = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(KronSum.apply, (a, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_formulation_of_a_layer_agrees_in_low_precision(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = KroneckerLinear.from_linear(nn.Linear(48, 32).to(dtype), a_shape=(4, 6), num_terms=2)
    x = torch.randn(2, 9, 48).to(dtype)
    reference = x.double() @ layer.dense_weight().double().T + layer.bias.double()
    for name in FORMULATIONS:
        layer.formulation = name
        assert _relative(layer(x).double(), reference) < (2e-2 if dtype == torch.bfloat16 else 1e-5), name


def test_static_choice_and_candidates_follow_the_size_of_a() -> None:
    assert static_formulation((8, 2), (192, 192), 1) == "b_first_bmm"  # KB8 FFN in: expand at the end
    assert static_formulation((2, 8), (192, 192), 1) == "a_first_bmm"  # KB8 FFN out: reduce first
    assert static_formulation((192, 24), (2, 16), 1) == "b_first_gemm"  # KB21 attention: large A
    assert "b_first_bmm" not in linear_candidates((192, 24), 1)
    assert set(linear_candidates((8, 2), 1)) == set(FORMULATIONS)


def test_measured_dispatch_caches_one_choice_per_regime() -> None:
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    x = torch.randn(5, 12)
    layer(x).sum().backward()
    layer(x)
    with torch.no_grad():
        layer(x)
        layer(torch.randn(40, 12))
    rows = dispatch.table()
    assert [(r["regime"]["training"], r["regime"]["tokens"]) for r in rows] == [
        (True, 8),
        (False, 8),
        (False, 64),
    ]
    assert all(r["how"] == "measured" and r["chosen"] in r["ms"] for r in rows)
    assert set(rows[0]["ms"]) == set(FORMULATIONS)


def test_probing_does_not_move_the_global_random_state() -> None:
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    x = torch.randn(5, 12)
    state = torch.get_rng_state()
    layer(x).sum().backward()
    assert dispatch.table() and torch.equal(torch.get_rng_state(), state)


def test_a_forced_formulation_is_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    calls: list[str] = []
    original = FORMULATIONS["a_first_gemm"]

    def spy(*args):  # type: ignore[no-untyped-def]
        calls.append("a_first_gemm")
        return original[0](*args)

    monkeypatch.setitem(FORMULATIONS, "a_first_gemm", (spy, original[1]))
    with torch.no_grad(), dispatch.force({LINEAR: "a_first_gemm"}):
        layer(torch.randn(3, 12))
    assert calls == ["a_first_gemm"] and dispatch.table() == []
    monkeypatch.setenv(dispatch.ENV_FORCE, f"{LINEAR}=a_first_gemm")
    with torch.no_grad():
        layer(torch.randn(3, 12))
    assert calls == ["a_first_gemm"] * 2 and dispatch.table() == []


def test_heuristic_mode_times_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_MODE, "heuristic")
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    layer(torch.randn(3, 12)).sum().backward()
    assert dispatch.table() == []


def test_bad_dispatch_settings_say_what_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    with (
        pytest.raises(dispatch.DispatchError, match=r"kronecker_linear has no formulation 'fast'.*dense"),
        dispatch.force({LINEAR: "fast"}),
    ):
        pass
    monkeypatch.setenv(dispatch.ENV_FORCE, "kronecker_linear")
    with pytest.raises(dispatch.DispatchError, match="not family=formulation"):
        layer(torch.randn(3, 12))
    monkeypatch.delenv(dispatch.ENV_FORCE)
    monkeypatch.setenv(dispatch.ENV_MODE, "fastest")
    with pytest.raises(dispatch.DispatchError, match=r"COMPRESSKIT_DISPATCH='fastest'.*measure, heuristic"):
        layer(torch.randn(3, 12))


def test_a_cache_file_replays_the_same_choices_without_probing(tmp_path, monkeypatch) -> None:
    path = tmp_path / "dispatch.json"
    monkeypatch.setenv(dispatch.ENV_CACHE, str(path))
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    with torch.no_grad():
        layer(torch.randn(3, 12))
    saved = json.loads(path.read_text())
    assert len(saved) == 1
    saved[0]["chosen"] = "a_first_gemm"  # a different choice than any probe made: it must be replayed
    path.write_text(json.dumps(saved))
    dispatch.clear()
    with torch.no_grad():
        layer(torch.randn(3, 12))
    assert [r["chosen"] for r in dispatch.table()] == ["a_first_gemm"]
    path.write_text("not json")
    dispatch.clear()
    with pytest.raises(dispatch.DispatchError, match="not a dispatch cache"), torch.no_grad():
        layer(torch.randn(3, 12))


def test_the_cached_dense_weight_follows_every_change_of_the_factors() -> None:
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    layer.formulation = "dense"
    x = torch.randn(4, 12)
    with torch.no_grad():
        first = layer(x)
        layer.a.mul_(2.0)
        assert torch.allclose(layer(x) - layer.bias, 2 * (first - layer.bias), atol=1e-6)
        layer.load_state_dict({k: v * 0 for k, v in layer.state_dict().items()})
        assert layer(x).abs().max().item() == 0.0


@pytest.mark.parametrize("terms", [1, 3])
def test_embedding_and_tied_head_formulations_agree_with_gradients(terms: int) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (2, 5))
    hidden = torch.randn(2, 5, 12)
    results = {}
    for name in ("factored", "dense"):
        torch.manual_seed(1)
        layer = KroneckerEmbedding(30, 12, 4, terms, padding_idx=2)
        layer.formulation = name
        head = layer.tied_head(torch.randn(30))
        loss = layer(ids).pow(2).sum() + head(hidden).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            frozen = (layer(ids), head(hidden))
        results[name] = (loss.detach(), layer.a.grad, layer.b.grad, head.bias.grad, *frozen)
    for got, expected in zip(results["factored"], results["dense"], strict=True):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_every_formulation_trains_under_bfloat16_autocast(name: str) -> None:
    torch.manual_seed(0)
    layer = KroneckerLinear.from_linear(nn.Linear(48, 32), a_shape=(4, 6), num_terms=2)
    layer.formulation = name
    x = torch.randn(5, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().pow(2).sum().backward()
    reference = x.detach() @ kron_sum(layer.a, layer.b).t() + layer.bias
    expected_a = torch.autograd.grad(reference.pow(2).sum(), layer.a)[0]
    assert out.dtype == torch.bfloat16 and layer.a.grad.dtype == torch.float32
    assert _relative(out.float(), reference.detach()) < 2e-2
    assert _relative(layer.a.grad, expected_a) < 5e-2


def test_choices_persist_per_user_by_default_and_processes_merge(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(dispatch.ENV_CACHE)  # unset: the per-user default
    path = tmp_path / "compresskit" / "dispatch.json"
    assert dispatch.default_cache_path() == path
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8), a_shape=(2, 3))
    with torch.no_grad():
        layer(torch.randn(3, 12))
    first = json.loads(path.read_text())
    assert len(first) == 1
    first.append({**first[0], "signature": "written-by-another-process"})
    path.write_text(json.dumps(first))
    dispatch.clear()
    with torch.no_grad():
        layer(torch.randn(40, 12))  # a new token bucket: a new choice, merged with the file's two
    assert {e["signature"] for e in json.loads(path.read_text())} >= {"written-by-another-process"}
    assert len(json.loads(path.read_text())) == 3
    monkeypatch.setenv(dispatch.ENV_CACHE, "off")
    path.unlink()
    dispatch.clear()
    with torch.no_grad():
        layer(torch.randn(3, 12))
    assert not path.exists()
