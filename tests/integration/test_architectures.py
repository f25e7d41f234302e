"""The walker on real architectures: tiny configs of 12 families (no download) and the real MiniLM-L6.

For each: the forward runs with the same output shapes, the parameter count drops exactly as planned,
and a lossless configuration (full-rank low_rank; Kronecker with every term) reproduces the outputs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from compresskit.registry import Registry
from compresskit.tiny_models import ARCHITECTURES, main_output, tiny_inputs, tiny_model
from compresskit.walker import TiedOutputProjection, decompose


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _groups(arch: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    linear: dict[str, Any] = {"name": "linear", "types": ["linear_except_head"], "decomposition": "low_rank"}
    embedding = {"name": "embedding", "types": ["Embedding"], "decomposition": "low_rank", "allow_tied": True}
    groups = [dict(linear, options=options)]
    return groups if arch == "vit" else [dict(embedding, options=options), *groups]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_full_rank_low_rank_reproduces_the_outputs(arch: str, registry: Registry) -> None:
    model, inputs = tiny_model(arch), tiny_inputs(arch)
    expected = main_output(model, inputs)
    report = decompose(model, _groups(arch, {"rank_ratio": 1.0}), registry=registry)
    assert len(report.plan.modules) >= 8
    for planned in report.plan.modules:
        assert type(model.get_submodule(planned.name)).__name__.startswith("LowRank")
        assert report.errors[planned.name] is not None and report.errors[planned.name] < 1e-5
    got = main_output(model, inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_small_rank_drops_the_parameters_exactly_as_planned(arch: str, registry: Registry) -> None:
    model, inputs = tiny_model(arch), tiny_inputs(arch)
    expected = main_output(model, inputs)
    before = _params(model)
    report = decompose(model, _groups(arch, {"rank": 2}), registry=registry)
    assert report.plan.model_params == before
    assert _params(model) == report.plan.model_params_after < before
    assert main_output(model, inputs).shape == expected.shape


def test_gpt2_conv1d_layers_are_replaced_and_the_head_stays_tied(registry: Registry) -> None:
    model = tiny_model("gpt2")
    report = decompose(model, _groups("gpt2", {"rank": 4}), registry=registry)
    classes = {m.class_name for m in report.plan.modules}
    assert classes == {"Conv1D", "Embedding"}
    assert report.plan.modules[0].tied_outputs == ("lm_head",)
    assert model.lm_head.source is model.transformer.wte


def test_t5_shared_embedding_is_one_replacement_for_encoder_decoder_and_head(registry: Registry) -> None:
    model = tiny_model("t5")
    groups = [{"names": ["shared"], "decomposition": "low_rank", "options": {"rank": 8}, "allow_tied": True}]
    report = decompose(model, groups, registry=registry)
    (planned,) = report.plan.modules
    assert set(planned.aliases) == {"encoder.embed_tokens", "decoder.embed_tokens"}
    assert model.encoder.embed_tokens is model.shared is model.decoder.embed_tokens
    assert isinstance(model.lm_head, TiedOutputProjection) and model.lm_head.source is model.shared


def test_albert_shared_layer_gets_one_replacement_used_by_every_layer(registry: Registry) -> None:
    model, inputs = tiny_model("albert"), tiny_inputs("albert")
    expected = main_output(model, inputs)
    groups = [{"types": ["linear_except_head"], "decomposition": "low_rank", "options": {"rank_ratio": 1.0}}]
    report = decompose(model, groups, registry=registry)
    names = [m.name for m in report.plan.modules]
    assert len(names) == len(set(names))
    shared_layer = model.albert.encoder.albert_layer_groups[0].albert_layers[0]
    # one layer object serves all hidden layers; its six linear maps are replaced once each
    assert sum(".albert_layers.0." in n for n in names) == 6
    assert type(shared_layer.ffn).__name__ == "LowRankLinear"
    torch.testing.assert_close(main_output(model, inputs), expected, atol=2e-5, rtol=1e-4)


def test_bart_scaled_embeddings_are_skipped_with_a_reason(registry: Registry) -> None:
    model = tiny_model("bart")
    groups = [{"types": ["Embedding"], "decomposition": "low_rank", "allow_tied": True}]
    report = decompose(model, groups, registry=registry)
    reasons = {s.name: s.reason for s in report.plan.skipped}
    assert "BartScaledWordEmbedding overrides Embedding.forward" in reasons["model.shared"]


def test_kronecker_with_every_term_is_lossless_and_prime_sizes_are_skipped(registry: Registry) -> None:
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    expected = main_output(model, inputs)
    options = {"a_shape": [4, 4], "b_shape": [8, 8], "num_terms": 16}  # min(4*4, 8*8) terms
    groups = [{"types": ["linear_except_head"], "decomposition": "kronecker", "options": options}]
    report = decompose(model, groups, registry=registry)
    assert len(report.plan.modules) == 9  # q, k, v, attention out per layer, and the pooler
    skipped = {s.name for s in report.plan.skipped}
    assert "bert.encoder.layer.0.intermediate.dense" in skipped  # 37 rows: no 4-way split
    torch.testing.assert_close(main_output(model, inputs), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_real_minilm_lossless_and_kroneckerbert_preset(minilm_path: Any, registry: Registry) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    inputs = dict(
        tokenizer(["compression keeps the meaning", "a second sentence"], return_tensors="pt", padding=True)
    )
    model = AutoModel.from_pretrained(str(minilm_path)).eval()
    expected = main_output(model, inputs)
    groups = [{"types": ["linear_except_head"], "decomposition": "low_rank", "options": {"rank_ratio": 1.0}}]
    report = decompose(model, groups, registry=registry)
    assert len(report.plan.modules) == 6 * 6 + 1
    torch.testing.assert_close(main_output(model, inputs), expected, atol=1e-4, rtol=1e-4)

    student = AutoModel.from_pretrained(str(minilm_path)).eval()
    report = decompose(student, "kroneckerbert21", registry=registry)
    assert _params(student) == report.plan.model_params_after < report.plan.model_params / 10
    assert main_output(student, inputs).shape == expected.shape


def test_kronecker_tied_embedding_uses_the_plugins_tied_head_and_is_lossless(registry: Registry) -> None:
    model, inputs = tiny_model("gpt2"), tiny_inputs("gpt2")
    expected = main_output(model, inputs)
    options = {"embedding_n": 8, "num_terms": 8}  # A: 99x4, b: 1x8 -> min(99*4, 1*8) = 8 terms
    groups = [{"names": ["wte"], "decomposition": "kronecker", "options": options, "allow_tied": True}]
    decompose(model, groups, registry=registry)
    assert not isinstance(model.lm_head, TiedOutputProjection)  # the plugin's own tied head
    assert model.lm_head.embedding is model.transformer.wte  # referenced, so its factors are saved once
    assert not list(model.lm_head.parameters())  # GPT-2's head has no bias: nothing of its own
    torch.testing.assert_close(main_output(model, inputs), expected, atol=2e-5, rtol=1e-4)
    model.lm_head(torch.randn(2, 32)).sum().backward()  # the head's gradient reaches the shared factors
    assert all(p.grad is not None for p in model.transformer.wte.parameters())


#: (tiny architecture, task model class, the head block's Linear modules, named as the class names them).
TASK_HEADS = [
    ("bart", "BartForSequenceClassification", ["classification_head.dense", "classification_head.out_proj"]),
    ("t5", "T5ForSequenceClassification", ["classification_head.dense", "classification_head.out_proj"]),
    ("t5", "T5ForQuestionAnswering", ["qa_outputs"]),
    ("roberta", "RobertaForSequenceClassification", ["classifier.dense", "classifier.out_proj"]),
    ("electra", "ElectraForSequenceClassification", ["classifier.dense", "classifier.out_proj"]),
    ("distilbert", "DistilBertForSequenceClassification", ["pre_classifier", "classifier"]),
    ("bert", "BertForMaskedLM", ["cls.predictions.transform.dense", "cls.predictions.decoder"]),
    ("bert", "BertForQuestionAnswering", ["qa_outputs"]),
    ("gpt2", "GPT2ForSequenceClassification", ["score"]),
    ("llama", "LlamaForSequenceClassification", ["score"]),
]


@pytest.mark.parametrize(("arch", "model_class", "head"), TASK_HEADS)
def test_except_head_never_selects_the_head_block(
    arch: str, model_class: str, head: list[str], registry: Registry
) -> None:
    import transformers

    from compresskit.tiny_models import tiny_config
    from compresskit.walker import plan_compression

    model = getattr(transformers, model_class)(tiny_config(arch))
    groups = [{"types": ["linear_except_head"], "decomposition": "low_rank", "options": {"rank": 2}}]
    plan = plan_compression(model, groups, registry=registry)
    planned = {module.name for module in plan.modules}
    assert planned, "the body's linear layers are selected"
    assert not planned & set(head)
    assert set(head) <= {module.name for module in plan.excluded}
