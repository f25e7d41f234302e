"""The KroneckerBERT presets reproduce the paper's counts on BERT-base and adapt to other sizes.

Counted with the walker's plan (every parameter once; pooler, position / token-type embeddings, biases and
LayerNorms dense; the base ``BertModel``, so no classifier; FLOPs of linear maps at 128 tokens).
"""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead
from transformers import BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel

from compresskit.registry import Registry
from compresskit.report import CompressionPlan
from compresskit.walker import decompose, plan_compression


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _meta_bert(hidden: int = 768, ffn: int = 3072, layers: int = 12) -> BertModel:
    with torch.device("meta"):
        return BertModel(BertConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers))


@pytest.fixture(scope="module")
def bert_base() -> BertModel:
    return _meta_bert()


def _specs(plan: CompressionPlan) -> dict[str, dict]:
    return {m.name: dict(m.spec) for m in plan.modules}


def test_kroneckerbert21_reproduces_the_paper(registry: Registry, bert_base: BertModel) -> None:
    plan = plan_compression(bert_base, "kroneckerbert21", registry=registry)
    assert (plan.model_params, plan.model_params_after) == (109_482_240, 5_228_272)
    assert round(plan.before.flops / 1e9, 1) == 21.7  # every encoder linear map is replaced
    assert round(plan.after.flops / 1e9, 2) == 1.40
    assert plan.skipped == ()
    specs = _specs(plan)
    assert len(specs) == 12 * 6 + 1
    assert (
        specs["encoder.layer.3.attention.self.value"]["a_shape"],
        specs["encoder.layer.3.attention.self.value"]["b_shape"],
    ) == ([384, 48], [2, 16])
    assert specs["encoder.layer.3.intermediate.dense"]["a_shape"] == [16, 2]
    assert specs["encoder.layer.3.intermediate.dense"]["b_shape"] == [192, 384]
    assert specs["encoder.layer.3.output.dense"]["b_shape"] == [384, 192]
    assert specs["embeddings.word_embeddings"]["a_shape"] == [30522, 48]
    assert "pooler.dense" not in specs and "embeddings.position_embeddings" not in specs


def test_kroneckerbert8_reproduces_the_printed_shapes(registry: Registry, bert_base: BertModel) -> None:
    plan = plan_compression(bert_base, "kroneckerbert8", registry=registry)
    assert plan.model_params_after == 14_654_216
    specs = _specs(plan)
    assert specs["encoder.layer.0.attention.output.dense"]["a_shape"] == [384, 384]
    assert specs["encoder.layer.0.intermediate.dense"]["b_shape"] == [384, 384]
    assert specs["encoder.layer.0.output.dense"]["a_shape"] == [2, 8]
    assert specs["embeddings.word_embeddings"]["a_shape"] == [30522, 96]
    assert len(specs) == 12 * 6 + 1


def test_kroneckerbert5_is_the_documented_four_term_assumption(
    registry: Registry, bert_base: BertModel
) -> None:
    plan = plan_compression(bert_base, "kroneckerbert5", registry=registry)
    assert plan.model_params_after == 20_762_508  # reference §1.6: "20.76M, 5.27x"
    assert _specs(plan)["encoder.layer.0.intermediate.dense"]["num_terms"] == 4


@pytest.mark.parametrize("preset", ["kroneckerbert8", "kroneckerbert21"])
def test_presets_adapt_to_minilm_at_the_same_per_matrix_ratios(
    registry: Registry, bert_base: BertModel, preset: str
) -> None:
    base = _specs(plan_compression(bert_base, preset, registry=registry))
    small_plan = plan_compression(_meta_bert(384, 1536, 6), preset, registry=registry)
    small = _specs(small_plan)
    assert small_plan.skipped == () and len(small) == 6 * 6 + 1
    for suffix in ("attention.self.query", "intermediate.dense", "output.dense"):
        big_spec, small_spec = base[f"encoder.layer.0.{suffix}"], small[f"encoder.layer.0.{suffix}"]
        assert _weight_ratio(small_spec) == pytest.approx(_weight_ratio(big_spec), rel=0.02), suffix


def _weight_ratio(spec) -> float:
    (m1, n1), (m2, n2) = spec["a_shape"], spec["b_shape"]
    return (m1 * m2 * n1 * n2) / (m1 * n1 + m2 * n2)


def test_tiny_bert_with_a_prime_ffn_is_compressed_where_possible(registry: Registry) -> None:
    """Real weights: hidden 32, FFN 37 (prime), 2 layers, vocab 99; built modules replace the dense ones."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, vocab_size=99
    )
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(1, 99, (2, 6))
    before = model(input_ids=ids).logits
    report = decompose(model, "kroneckerbert21", registry=registry)
    skipped = {s.name: s.reason for s in report.plan.skipped}
    assert "does not divide the 37x32" in skipped["bert.encoder.layer.0.intermediate.dense"]
    assert "does not divide the 32x37" in skipped["bert.encoder.layer.0.output.dense"]
    assert isinstance(model.bert.embeddings.word_embeddings, KroneckerEmbedding)
    assert isinstance(model.bert.encoder.layer[1].attention.self.query, KroneckerLinear)
    assert type(model.classifier) is torch.nn.Linear
    assert sum(p.numel() for p in model.parameters()) == report.plan.model_params_after
    after = model(input_ids=ids).logits
    assert after.shape == before.shape and torch.isfinite(after).all()


def test_a_tied_gpt2_head_stays_tied_to_the_kronecker_embedding(registry: Registry) -> None:
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 99, (2, 6))
    before = model(ids).logits
    group = {
        "name": "wte",
        "types": ["Embedding"],
        "names": ["transformer.wte"],
        "decomposition": "kronecker",
        "options": {"embedding_n": 4, "num_terms": 4},  # all terms: exact, so logits must not move
        "allow_tied": True,
    }
    decompose(model, [group], registry=registry)
    assert isinstance(model.transformer.wte, KroneckerEmbedding)
    assert isinstance(model.lm_head, KroneckerTiedHead) and model.lm_head.embedding is model.transformer.wte
    assert torch.allclose(model(ids).logits, before, atol=1e-4)
    model(ids).logits.sum().backward()
    assert model.transformer.wte.b.grad is not None
