"""ONNX export checked in ONNX Runtime, int8 dynamic quantisation of compressed layers, save refusal."""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerLinear
from compresskit_plugins.kronecker.quantized import QuantizedKroneckerLinear
from compresskit_plugins.low_rank import LowRank
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import BertConfig, BertForSequenceClassification

import compresskit
from compresskit import CheckpointError
from compresskit.cli import main
from compresskit.export import example_inputs, ort_session

TINY = BertConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=300,
    max_position_embeddings=64,
)


def _student(preset: str = "kroneckerbert8") -> BertForSequenceClassification:
    torch.manual_seed(0)
    model = BertForSequenceClassification(TINY).eval()
    compresskit.decompose(model, preset)
    return model


def test_cli_exports_a_saved_compressed_model_that_onnx_runtime_runs_with_dynamic_axes(
    tmp_path, capsys
) -> None:
    model = _student()
    compresskit.save(model, tmp_path / "student")
    out = tmp_path / "kb8.onnx"
    code = main(["export", "--model", str(tmp_path / "student"), "--output", str(out), "--quantize", "int8"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    session = ort_session(out)
    for batch, length in ((1, 7), (5, 33)):  # neither is the traced shape: the axes are dynamic
        inputs = example_inputs(model, batch, length, seed=batch)
        names = [i.name for i in session.get_inputs()]
        (logits,) = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
        with torch.no_grad():
            expected = model(*inputs).logits
        assert logits.shape == (batch, 2)
        assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-5)  # stated tolerance: 1e-5 abs
    quantized = ort_session(tmp_path / "kb8.int8.onnx")
    inputs = example_inputs(model, 2, 9)
    (q_logits,) = quantized.run(
        None, {i.name: t.numpy() for i, t in zip(quantized.get_inputs(), inputs, strict=True)}
    )
    assert q_logits.shape == (2, 2)


@pytest.mark.parametrize(("a_shape", "terms"), [((8, 2), 1), ((2, 8), 1), ((32, 32), 2)])
def test_int8_kronecker_layer_stays_close_to_float(a_shape: tuple[int, int], terms: int) -> None:
    torch.manual_seed(0)
    layer = KroneckerLinear.from_linear(
        nn.Linear(64, 128 if a_shape[0] > a_shape[1] else 32), a_shape=a_shape, num_terms=terms
    )
    quantized = layer.quantized_dynamic()
    assert isinstance(quantized, QuantizedKroneckerLinear)
    assert any(isinstance(m, DynamicLinear) for m in quantized.modules())  # a factor GEMM runs in int8
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        expected = layer(x)
    got = quantized(x)
    assert ((got - expected).norm() / expected.norm()).item() < 0.03


def test_quantize_dynamic_composes_with_compression_and_save_refuses_it(tmp_path) -> None:
    model = _student("kroneckerbert21")
    torch.manual_seed(0)
    low_rank = BertForSequenceClassification(TINY).eval()
    group = {
        "name": "ffn_in",
        "types": ["Linear"],
        "names": r".*intermediate\.dense",
        "decomposition": LowRank.name,
        "options": {"rank": 8},
    }
    compresskit.decompose(low_rank, [group])
    for float_model in (model, low_rank):
        quantized = compresskit.quantize_dynamic(float_model)
        kinds = {type(m).__name__ for m in quantized.modules()}
        assert "KroneckerLinear" not in kinds and "LowRankLinear" not in kinds  # factors quantised too
        inputs = example_inputs(float_model, 2, 12)
        with torch.no_grad():
            expected = float_model(*inputs).logits
        assert torch.allclose(quantized(*inputs).logits, expected, atol=0.05)
        with pytest.raises(CheckpointError, match=r"dynamically quantised .* compresskit.quantize_dynamic"):
            compresskit.save(quantized, tmp_path / "q")
