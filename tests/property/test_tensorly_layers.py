"""Property tests of the tensorly-backed ``tucker``, ``cp`` and ``tensor_train`` decompositions."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import tensorly as tl
import torch
from compresskit_plugins.tensorly_layers.common import balanced_factors
from compresskit_plugins.tensorly_layers.tensor_train import max_tt_ranks
from compresskit_plugins.tensorly_layers.tucker import feasible, max_tucker_ranks
from torch import nn
from transformers.pytorch_utils import Conv1D

from compresskit import ConfigError, DecompositionError, Registry

NAMES = ("tucker", "cp", "tensor_train")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _create(registry: Registry, name: str, **options: Any) -> Any:
    return registry.create("decomposition", name, options)


def _linear(out_features: int = 24, in_features: int = 36, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def _error(registry: Registry, name: str, module: nn.Module, **options: Any) -> float:
    new = _create(registry, name, **options).decompose(module, "x")
    return torch.linalg.norm(module.weight.detach() - new.dense_weight().detach()).item()


def test_all_three_are_registered(registry: Registry) -> None:
    assert set(NAMES) <= set(registry.names("decomposition"))


@pytest.mark.parametrize(("size", "order"), [(24, 2), (36, 2), (384, 2), (64, 3), (120, 3)])
def test_balanced_factors_multiply_back_and_are_most_even(size: int, order: int) -> None:
    factors = balanced_factors(size, order)
    assert factors is not None and math.prod(factors) == size and len(factors) == order
    others = [c for c in itertools.product(range(2, size + 1), repeat=order) if math.prod(c) == size]
    assert max(factors) == min(max(c) for c in others)


def test_a_prime_has_no_balanced_factors() -> None:
    assert balanced_factors(37, 2) is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("conv1d", [False, True])
def test_forward_equals_the_dense_weight_product(registry: Registry, name: str, conv1d: bool) -> None:
    torch.manual_seed(1)
    module = Conv1D(24, 36) if conv1d else nn.Linear(36, 24)
    new = _create(registry, name).decompose(module, "x")
    x = torch.randn(2, 5, 36)
    torch.testing.assert_close(new(x), x @ new.dense_weight().T + module.bias, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tucker", "tensor_train"])
@pytest.mark.parametrize("factors", [None, ((2, 3, 4), (3, 3, 4))])
def test_exact_at_full_rank(registry: Registry, name: str, factors: Any) -> None:
    linear = _linear(seed=2)
    cls = registry.get("decomposition", name)
    options = cls.lossless_options(linear)
    if factors is not None:  # order 3: the full ranks of that factorisation
        out_shape, in_shape = factors
        full = (
            feasible(max_tucker_ranks((*out_shape, *in_shape)))
            if name == "tucker"
            else max_tt_ranks(out_shape, in_shape)[1:-1]
        )
        options = {"out_factors": out_shape, "in_factors": in_shape, "rank": full}
    new = _create(registry, name, **options).decompose(linear, "x")
    x = torch.randn(3, 36)
    torch.testing.assert_close(new(x), linear(x), atol=1e-5, rtol=1e-4)


def test_lossless_at_a_prime_dimension_uses_padded_factors(registry: Registry) -> None:
    linear = _linear(37, 24, seed=3)
    for name in ("tucker", "tensor_train"):
        options = registry.get("decomposition", name).lossless_options(linear)
        new = _create(registry, name, **options).decompose(linear, "x")
        x = torch.randn(3, 24)
        torch.testing.assert_close(new(x), linear(x), atol=1e-5, rtol=1e-4)


def _non_increasing(errors: list[float], slack: float = 1e-5) -> bool:
    return all(b <= a + slack for a, b in itertools.pairwise(errors))


def test_tucker_hosvd_error_is_non_increasing_in_rank(registry: Registry) -> None:
    linear = _linear(seed=4)
    errors = [_error(registry, "tucker", linear, rank=r, iterations=0) for r in range(1, 7)]
    assert _non_increasing(errors) and errors[-1] < 1e-4 < errors[0]


def test_tucker_hooi_never_worse_than_its_hosvd_start(registry: Registry) -> None:
    linear = _linear(seed=5)
    for rank in (2, 3, 4):
        hosvd = _error(registry, "tucker", linear, rank=rank, iterations=0)
        assert _error(registry, "tucker", linear, rank=rank, iterations=10) <= hosvd + 1e-5


def test_tensor_train_error_is_non_increasing_in_rank(registry: Registry) -> None:
    linear = _linear(seed=6)
    errors = [_error(registry, "tensor_train", linear, rank=r) for r in (1, 2, 4, 8, 16, 24)]
    assert _non_increasing(errors) and errors[-1] < 1e-4 < errors[0]


def test_cp_error_is_non_increasing_in_rank(registry: Registry) -> None:
    linear = _linear(seed=7)
    errors = [_error(registry, "cp", linear, rank=r) for r in (1, 2, 4, 8, 16, 32)]
    assert _non_increasing(errors, slack=1e-4) and errors[-1] < errors[0]


def test_cp_recovers_an_exact_low_rank_cp_weight(registry: Registry) -> None:
    torch.manual_seed(8)
    factors = [torch.randn(d, 2) for d in (4, 6, 6, 6)]
    linear = nn.Linear(36, 24)
    with torch.no_grad():
        linear.weight.copy_(torch.einsum("ar,br,cr,dr->abcd", *factors).reshape(24, 36))
    relative = _error(registry, "cp", linear, rank=2, iterations=500) / linear.weight.norm().item()
    assert relative < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_param_ratio_picks_the_largest_uniform_rank_within_budget(registry: Registry, name: str) -> None:
    linear = _linear(48, 64)
    budget = 0.2 * 48 * 64
    spec = _create(registry, name, param_ratio=0.2).make_spec(linear, "x")
    chosen = _create(registry, name, param_ratio=0.2).compressed_cost(linear, spec).params - 48
    assert chosen <= budget
    bigger = max(spec["ranks"] if "ranks" in spec else [spec["rank"]]) + 1
    spec_up = _create(registry, name, rank=bigger).make_spec(linear, "x")
    assert _create(registry, name, rank=bigger).compressed_cost(linear, spec_up).params - 48 > budget


def test_costs_of_order_one_layers_match_hand_counts(registry: Registry) -> None:
    linear = _linear(24, 36)
    tucker = _create(registry, "tucker", order=1, rank=(5, 5))  # two-sided projection, 5x5 core
    cost = tucker.compressed_cost(linear, tucker.make_spec(linear, "x"), tokens=1)
    assert cost.params == 5 * 5 + 24 * 5 + 36 * 5 + 24
    assert cost.flops == 5 * (2 * 36 - 1) + 5 * (2 * 5 - 1) + 24 * (2 * 5 - 1)
    cp = _create(registry, "cp", order=1, rank=5)
    cost = cp.compressed_cost(linear, cp.make_spec(linear, "x"), tokens=1)
    assert cost.params == 5 * (24 + 36) + 24
    assert cost.flops == 5 * (2 * 36 - 1) + 24 * (2 * 5 - 1)
    tt = _create(registry, "tensor_train", order=1, rank=())  # one core: the dense matrix
    cost = tt.compressed_cost(linear, tt.make_spec(linear, "x"), tokens=1)
    assert cost == type(cost)(24 * 36 + 24, 24 * (2 * 36 - 1))


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("tucker", {"rank": 500}, r"'enc\.q'.*valid ranks are 1\.\.6"),
        ("tucker", {"rank": (4, 6, 6, 7)}, r"'enc\.q'.*mode 3.*larger than possible"),
        ("cp", {"rank": 10_000}, r"'enc\.q'.*valid ranks are 1\.\.144"),
        ("tensor_train", {"rank": (25,)}, r"'enc\.q'.*larger than possible.*1\.\.\[24\]"),
        ("tensor_train", {"out_factors": (24,)}, r"'enc\.q'.*as many out_factors as in_factors"),
        ("cp", {"in_factors": (5, 7)}, r"'enc\.q'.*multiply to 36"),
    ],
)
def test_bad_ranks_and_factors_name_module_and_valid_range(
    registry: Registry, name: str, options: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(DecompositionError, match=pattern):
        _create(registry, name, **options).make_spec(_linear(), "enc.q")


@pytest.mark.parametrize("name", NAMES)
def test_a_prime_dimension_cannot_be_factored_automatically(registry: Registry, name: str) -> None:
    with pytest.raises(DecompositionError, match=r"'ffn'.*37 has no factorisation"):
        _create(registry, name).make_spec(_linear(37, 24), "ffn")
    spec = _create(registry, name, out_factors=(37, 1)).make_spec(_linear(37, 24), "ffn")
    assert spec["out_factors"] == [37, 1]


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_types_and_nan_weights_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(DecompositionError, match=r"'emb'.*Embedding"):
        _create(registry, name).make_spec(nn.Embedding(99, 32), "emb")
    linear = _linear()
    with torch.no_grad():
        linear.weight[1, 2] = math.inf
    with pytest.raises(DecompositionError, match=r"'bad'.*NaN/Inf"):
        _create(registry, name).make_spec(linear, "bad")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "options", [{"rnak": 3}, {"order": 0}, {"param_ratio": 0.0}, {"rank": 2, "param_ratio": 0.5}]
)
def test_bad_options_are_config_errors(registry: Registry, name: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _create(registry, name, **options)


@pytest.mark.parametrize("name", NAMES)
def test_tensorly_backend_is_left_as_it_was_and_dtype_kept(registry: Registry, name: str) -> None:
    before = tl.get_backend()
    new = _create(registry, name).decompose(_linear().double(), "x")
    assert tl.get_backend() == before
    assert all(p.dtype == torch.float64 for p in new.parameters())
