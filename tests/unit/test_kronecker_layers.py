"""KroneckerLinear: the vec-trick forward equals the dense product, Conv1D, dtypes, gradients, compile, ONNX."""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerLinear
from compresskit_plugins.kronecker.kernels import FORMULATIONS
from compresskit_plugins.kronecker.layers import cheaper_order
from compresskit_plugins.kronecker.shapes import term_flops
from torch import nn
from transformers.pytorch_utils import Conv1D

from compresskit import DecompositionError


def _linear(out_features: int, in_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize(
    ("a_shape", "terms"), [((4, 3), 1), ((2, 6), 3), ((8, 1), 2), ((1, 12), 1), ((4, 12), 1)]
)
@pytest.mark.parametrize("batch", [(), (5,), (2, 3, 4)])
def test_forward_equals_the_reconstructed_dense_layer(
    a_shape: tuple[int, int], terms: int, batch: tuple[int, ...]
) -> None:
    layer = KroneckerLinear.from_linear(_linear(8, 12), a_shape=a_shape, num_terms=terms)
    x = torch.randn(*batch, 12)
    expected = x @ layer.dense_weight().T + layer.bias
    assert layer(x).shape == (*batch, 8)
    assert _relative(layer(x), expected) < 1e-5


@pytest.mark.parametrize("formulation", list(FORMULATIONS))
@pytest.mark.parametrize("terms", [1, 2])
def test_every_formulation_computes_the_same_map(formulation: str, terms: int) -> None:
    layer = KroneckerLinear.from_linear(_linear(12, 20), a_shape=(3, 4), num_terms=terms)
    x = torch.randn(2, 7, 20)
    reference = x @ layer.dense_weight().T + layer.bias
    layer.formulation = formulation
    assert _relative(layer(x), reference) < 1e-5


def test_the_cheaper_order_is_chosen_by_eq7() -> None:
    # Eq. 7 by hand: A 4×2, B 3×50 -> X·Bᵀ first: 99·3·2 + 3·3·4 = 630; A·X first: 3·50·4 + 99·3·4 = 1788.
    assert term_flops((4, 2), (3, 50)) == (630, 1788)
    assert cheaper_order((4, 2), (3, 50)) == "b_first"
    assert term_flops((3, 50), (4, 2)) == (1788, 630)
    assert cheaper_order((3, 50), (4, 2)) == "a_first"
    assert KroneckerLinear((3, 50), (4, 2)).order == "a_first"


def test_conv1d_is_read_in_its_in_out_layout() -> None:
    torch.manual_seed(0)
    conv = Conv1D(nf=8, nx=12)  # GPT-2 layout: weight (in=12, out=8)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    layer = KroneckerLinear.from_linear(conv, a_shape=(4, 3), num_terms=8)  # full rank: exact
    x = torch.randn(3, 5, 12)
    assert layer.in_features == 12 and layer.out_features == 8
    assert _relative(layer(x), conv(x)) < 1e-5


def test_from_linear_does_not_touch_or_alias_the_old_layer() -> None:
    old = _linear(8, 12)
    before = old.weight.detach().clone()
    layer = KroneckerLinear.from_linear(old, b_shape=(2, 3))
    with torch.no_grad():
        layer.bias.add_(1.0)
    assert torch.equal(old.weight, before)
    assert layer.a_shape == (4, 4) and layer.b_shape == (2, 3)
    assert layer.bias.data_ptr() != old.bias.data_ptr()


def test_to_dense_is_a_plain_linear_with_the_same_outputs() -> None:
    layer = KroneckerLinear.from_linear(_linear(8, 12), a_shape=(2, 3), num_terms=2)
    dense = layer.to_dense()
    x = torch.randn(4, 12)
    assert type(dense) is nn.Linear
    assert _relative(dense(x), layer(x)) < 1e-6


def test_a_layer_without_bias_stays_without_bias() -> None:
    layer = KroneckerLinear.from_linear(nn.Linear(12, 8, bias=False), a_shape=(2, 3))
    assert layer.bias is None and layer.to_dense().bias is None


def test_gradients_reach_every_factor() -> None:
    layer = KroneckerLinear.from_linear(_linear(8, 12), a_shape=(2, 3), num_terms=3)
    layer(torch.randn(5, 12)).pow(2).sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
def test_half_precision_matches_the_dense_product(dtype: torch.dtype, tolerance: float) -> None:
    layer = KroneckerLinear.from_linear(_linear(32, 48).to(dtype), a_shape=(4, 6), num_terms=2)
    assert layer.a.dtype == dtype
    x = torch.randn(2, 9, 48).to(dtype)
    expected = x.double() @ layer.dense_weight().double().T + layer.bias.double()
    assert _relative(layer(x), expected) < tolerance


def test_bad_shapes_name_the_module_and_nearest_factor_pairs() -> None:
    with pytest.raises(DecompositionError, match=r"ffn: a_shape \(5, 7\) does not divide the 8x12.*\(4, 6\)"):
        KroneckerLinear.from_linear(_linear(8, 12), a_shape=(5, 7), name="ffn")
    with pytest.raises(DecompositionError, match=r"num_terms=9 .* choose 1\.\.6"):
        KroneckerLinear.from_linear(_linear(8, 12), a_shape=(2, 3), num_terms=9, name="ffn")


def test_nan_weights_are_refused_with_the_module_name() -> None:
    old = _linear(8, 12)
    with torch.no_grad():
        old.weight[0, 0] = float("nan")
    with pytest.raises(DecompositionError, match=r"encoder\.q: the weight holds 1 NaN/Inf"):
        KroneckerLinear.from_linear(old, a_shape=(2, 3), name="encoder.q")


def test_works_under_torch_compile() -> None:
    # aot_eager traces through dynamo and AOT autograd without a C++ build (inductor: the benchmark).
    layer = KroneckerLinear.from_linear(_linear(8, 12), a_shape=(2, 3), num_terms=2)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 12)
    assert _relative(compiled(x), layer(x)) < 1e-5


def test_exports_to_onnx_with_the_same_outputs(tmp_path) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator

    layer = KroneckerLinear.from_linear(_linear(8, 12), a_shape=(2, 3), num_terms=2).eval()
    x = torch.randn(2, 5, 12)
    path = tmp_path / "kron.onnx"
    torch.onnx.export(layer, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    (result,) = ReferenceEvaluator(onnx.load(str(path))).run(None, {"x": x.numpy()})
    assert _relative(torch.from_numpy(result), layer(x).detach()) < 1e-5
