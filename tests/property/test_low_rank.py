"""Property tests of the ``low_rank`` decomposition: Eckart–Young optimality and its bad-input errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compresskit import ConfigError, DecompositionError, Registry

torch.manual_seed(0)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _low_rank(registry: Registry, **options: object):  # type: ignore[no-untyped-def]
    return registry.create("decomposition", "low_rank", options)


def _linear(out_features: int = 24, in_features: int = 36, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def test_is_registered_through_the_plugin_hook(registry: Registry) -> None:
    assert "low_rank" in registry.names("decomposition")


@pytest.mark.parametrize("rank", [1, 3, 10, 23])
def test_frobenius_error_equals_the_tail_singular_values(registry: Registry, rank: int) -> None:
    linear = _linear()
    sigma = torch.linalg.svdvals(linear.weight.detach().double())
    new = _low_rank(registry, rank=rank).decompose(linear, "q")
    error = torch.linalg.norm(linear.weight.detach() - new.dense_weight().detach()).item()
    assert error == pytest.approx(sigma[rank:].pow(2).sum().sqrt().item(), rel=1e-4)


def test_partial_scipy_svd_is_as_good_as_the_full_one(registry: Registry) -> None:
    linear = _linear(40, 64, seed=1)
    weight = linear.weight.detach()
    errors = {
        method: torch.linalg.norm(
            weight - _low_rank(registry, rank=4, svd=method).decompose(linear, "x").dense_weight().detach()
        ).item()
        for method in ("torch", "scipy")
    }
    assert errors["scipy"] == pytest.approx(errors["torch"], rel=1e-4)


def test_error_is_non_increasing_in_rank(registry: Registry) -> None:
    linear = _linear(seed=2)
    weight = linear.weight.detach()
    errors = [
        torch.linalg.norm(weight - _low_rank(registry, rank=r).decompose(linear, "x").dense_weight()).item()
        for r in range(1, 25)
    ]
    assert all(later <= earlier + 1e-5 for earlier, later in itertools.pairwise(errors))
    assert errors[0] > errors[-1]


@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
def test_exact_at_full_rank(registry: Registry, kind: str) -> None:
    torch.manual_seed(3)
    module: nn.Module
    if kind == "embedding":
        module, inputs = nn.Embedding(99, 32, padding_idx=0), torch.randint(0, 99, (2, 7))
    else:
        module = nn.Linear(36, 24) if kind == "linear" else Conv1D(24, 36)
        inputs = torch.randn(2, 7, 36)
    options = registry.get("decomposition", "low_rank").lossless_options(module)
    new = _low_rank(registry, **options).decompose(module, "m")
    torch.testing.assert_close(new(inputs), module(inputs), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(new.to_dense()(inputs), module(inputs), atol=1e-5, rtol=1e-4)


def test_factors_do_not_alias_the_original(registry: Registry) -> None:
    linear = _linear()
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    new = _low_rank(registry, rank=24).decompose(linear, "x")
    old_ptrs = {p.data_ptr() for p in linear.parameters()}
    assert not old_ptrs & {p.data_ptr() for p in new.parameters()}
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    for key, value in linear.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_forward_matches_the_dense_weight_of_the_factors(registry: Registry) -> None:
    linear = _linear()
    new = _low_rank(registry, rank=6).decompose(linear, "x")
    x = torch.randn(5, 36)
    torch.testing.assert_close(new(x), x @ new.dense_weight().T + linear.bias, atol=1e-5, rtol=1e-4)


def test_param_ratio_picks_the_largest_rank_within_budget(registry: Registry) -> None:
    linear = _linear(48, 64)
    decomposition = _low_rank(registry, param_ratio=0.25)
    spec = decomposition.make_spec(linear, "x")
    weights = 48 * 64
    assert spec["rank"] * (48 + 64) <= 0.25 * weights < (spec["rank"] + 1) * (48 + 64)
    _, after = decomposition.estimate(linear, "x")
    assert after.params == sum(p.numel() for p in decomposition.decompose(linear, "x").parameters())


def test_rank_ratio_is_a_fraction_of_the_smaller_dimension(registry: Registry) -> None:
    assert _low_rank(registry, rank_ratio=0.5).make_spec(_linear(24, 36), "x")["rank"] == 12


def test_costs_follow_the_paper_convention(registry: Registry) -> None:
    linear = _linear(24, 36)
    spec = _low_rank(registry, rank=5).make_spec(linear, "x")
    cost = _low_rank(registry, rank=5).compressed_cost(linear, spec, tokens=128)
    assert cost.params == 5 * (24 + 36) + 24
    assert cost.flops == ((2 * 36 - 1) * 5 + (2 * 5 - 1) * 24) * 128


def test_rank_larger_than_possible_names_module_and_range(registry: Registry) -> None:
    with pytest.raises(DecompositionError, match=r"'encoder\.q'.*valid ranks are 1\.\.24"):
        _low_rank(registry, rank=25).make_spec(_linear(), "encoder.q")


def test_param_ratio_too_small_says_the_valid_range(registry: Registry) -> None:
    with pytest.raises(DecompositionError, match=r"'x'.*at least"):
        _low_rank(registry, param_ratio=0.001).make_spec(_linear(), "x")


def test_unsupported_module_type_names_it(registry: Registry) -> None:
    with pytest.raises(DecompositionError, match=r"'enc\.norm'.*LayerNorm"):
        _low_rank(registry, rank=2).make_spec(nn.LayerNorm(8), "enc.norm")


def test_nan_weights_are_refused_with_the_module_name(registry: Registry) -> None:
    linear = _linear()
    with torch.no_grad():
        linear.weight[0, 0] = math.nan
    with pytest.raises(DecompositionError, match=r"'bad'.*NaN/Inf"):
        _low_rank(registry, rank=2).make_spec(linear, "bad")


@pytest.mark.parametrize(
    "options",
    [{"rnak": 3}, {"rank": 0}, {"rank_ratio": 1.5}, {"param_ratio": -1.0}, {"rank": 2, "param_ratio": 0.5}],
)
def test_bad_options_are_config_errors(registry: Registry, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        _low_rank(registry, **options)


def test_build_without_initialize_loads_a_saved_state(registry: Registry) -> None:
    linear = _linear()
    decomposition = _low_rank(registry, rank=4)
    spec = decomposition.make_spec(linear, "x")
    trained = decomposition.build(linear, spec)
    empty = decomposition.build(linear, spec, initialize=False)
    empty.load_state_dict(trained.state_dict())
    x = torch.randn(3, 36)
    torch.testing.assert_close(empty(x), trained(x), rtol=0, atol=0)


def test_keeps_dtype(registry: Registry) -> None:
    linear = _linear().to(torch.float64)
    new = _low_rank(registry, rank=3).decompose(linear, "x")
    assert all(p.dtype == torch.float64 for p in new.parameters())
