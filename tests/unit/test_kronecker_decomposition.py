"""The ``kronecker`` decomposition through the registry: specs, build, reload, costs and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerEmbedding, KroneckerLinear
from torch import nn
from transformers.pytorch_utils import Conv1D

from compresskit import ConfigError, DecompositionError
from compresskit.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _kron(registry: Registry, **options):
    return registry.create("decomposition", "kronecker", options, where="steps[0].groups[0].options")


def test_linear_spec_is_json_shapes_only(registry: Registry) -> None:
    spec = _kron(registry, b_shape=[2, 16]).make_spec(nn.Linear(768, 768), "layer.0.query")
    assert json.loads(json.dumps(spec)) == spec
    assert spec["a_shape"] == [384, 48] and spec["b_shape"] == [2, 16]
    assert spec["kind"] == "linear" and spec["num_terms"] == 1 and spec["bias"] is True


def test_spec_of_a_meta_module_needs_no_weights(registry: Registry) -> None:
    with torch.device("meta"):
        layer = nn.Linear(3072, 768)
    spec = _kron(registry, a_shape=[2, 16]).make_spec(layer, "output.dense")
    assert spec["b_shape"] == [384, 192]  # KroneckerBERT21 W2: A 2×16 ⊗ B 384×192


def test_build_without_initialize_reloads_a_state_dict_exactly(registry: Registry) -> None:
    kron = _kron(registry, a_shape=[4, 3], num_terms=2)
    old = nn.Linear(12, 8)
    spec = kron.make_spec(old, "fc")
    trained = kron.build(old, spec)
    empty = kron.build(old, json.loads(json.dumps(spec)), initialize=False)
    empty.load_state_dict(trained.state_dict())
    x = torch.randn(3, 12)
    assert torch.equal(empty(x), trained(x))


def test_costs_follow_the_paper_convention(registry: Registry) -> None:
    kron = _kron(registry, b_shape=[2, 16])
    layer = nn.Linear(768, 768)
    before, after = kron.estimate(layer, "q")
    assert before.params == 768 * 768 + 768 and before.flops == (2 * 768 - 1) * 768 * 128
    # KroneckerBERT21 attention (reference §1.6): 18,464 factor parameters, 75,936 FLOPs per token.
    assert after.params == 18_464 + 768 and after.flops == 75_936 * 128
    built = kron.decompose(layer, "q")
    assert after.params == sum(p.numel() for p in built.parameters())


def test_conv1d_and_embedding_are_handled(registry: Registry) -> None:
    conv = _kron(registry, a_shape=[8, 2]).decompose(Conv1D(nf=64, nx=32), "attn.c_attn")
    assert isinstance(conv, KroneckerLinear) and conv.out_features == 64 and conv.in_features == 32
    kronecker_of = _kron(registry, embedding_n=4).decompose(nn.Embedding(99, 32, padding_idx=0), "wte")
    assert isinstance(kronecker_of, KroneckerEmbedding) and kronecker_of.a.shape == (99, 8)


def test_shape_that_does_not_divide_names_module_and_alternatives(registry: Registry) -> None:
    kron = _kron(registry, a_shape=[5, 7])
    with pytest.raises(
        DecompositionError, match=r"encoder.layer.0.intermediate.dense: a_shape \(5, 7\).*Nearest valid"
    ):
        kron.make_spec(nn.Linear(32, 37), "encoder.layer.0.intermediate.dense")
    reason = kron.check(nn.Linear(32, 37), "ffn")
    assert reason is not None and "does not divide the 37x32" in reason


def test_too_many_terms_is_refused(registry: Registry) -> None:
    with pytest.raises(DecompositionError, match=r"q: num_terms=9 .*choose 1\.\.8"):
        _kron(registry, a_shape=[4, 2], num_terms=9).make_spec(nn.Linear(16, 8), "q")


def test_embedding_b_must_be_a_row_vector(registry: Registry) -> None:
    with pytest.raises(DecompositionError, match=r"wte: an embedding's B must be a row vector \(1, n\)"):
        _kron(registry, b_shape=[2, 4]).make_spec(nn.Embedding(99, 32), "wte")
    with pytest.raises(DecompositionError, match=r"valid n .*1, 2, 4, 8, 16, 32"):
        _kron(registry, embedding_n=5).make_spec(nn.Embedding(99, 32), "wte")


def test_nan_or_inf_weights_are_refused_at_plan_time(registry: Registry) -> None:
    layer = nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight[1, 2] = float("inf")
    with pytest.raises(DecompositionError, match=r"blocks\.3\.fc: the weight holds 1 NaN/Inf"):
        _kron(registry, a_shape=[2, 2]).make_spec(layer, "blocks.3.fc")


def test_bad_options_are_config_errors(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"a_shap: unknown option.*a_shape"):
        registry.create("decomposition", "kronecker", {"a_shap": [2, 2]}, where="g")
    with pytest.raises(ConfigError, match="target_ratio, not both"):
        _kron(registry, a_shape=[2, 2], target_ratio=4.0)
    with pytest.raises(ConfigError, match="svd: expected one of"):
        _kron(registry, a_shape=[2, 2], svd="lapack")


def test_a_spec_for_another_shape_is_refused_at_build(registry: Registry) -> None:
    kron = _kron(registry, a_shape=[4, 3])
    spec = kron.make_spec(nn.Linear(12, 8), "fc")
    with pytest.raises(DecompositionError, match="module's is 16x12"):
        kron.build(nn.Linear(12, 16), spec)


def test_target_ratio_picks_a_shape_per_matrix(registry: Registry) -> None:
    kron = _kron(registry, target_ratio=8.0)
    layer = nn.Linear(96, 64)
    spec = kron.make_spec(layer, "fc")
    _, after = kron.estimate(layer, "fc")
    weight_ratio = 96 * 64 / (after.params - 96)
    assert 8.0 / 1.05 <= weight_ratio <= 8.0 * 1.05, spec
    with pytest.raises(
        DecompositionError, match="fc: 37x32 cannot be factored: the output dimension 37 is prime"
    ):
        kron.make_spec(nn.Linear(32, 37), "fc")


def test_error_objective_prefers_the_shape_that_fits_the_weight(registry: Registry) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 16)
    with torch.no_grad():  # an exact (4x4)⊗(4x4) structure: 32 params, ratio 8
        layer.weight.copy_(torch.kron(torch.randn(4, 4), torch.randn(4, 4)))
    spec = _kron(registry, target_ratio=8.0, objective="error").make_spec(layer, "fc")
    assert spec["a_shape"] == [4, 4] and spec["num_terms"] == 1
    flops_spec = _kron(registry, target_ratio=8.0).make_spec(layer, "fc")
    assert flops_spec["a_shape"] != [4, 4]
