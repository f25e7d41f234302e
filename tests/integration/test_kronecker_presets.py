"""The KroneckerBERT presets reproduce the paper's counts on BERT-base and adapt to other sizes.

Counting rule: see ``compresskit_plugins/kronecker/counting.py`` (every parameter once; pooler, position /
token-type embeddings, biases and LayerNorms dense; no classifier; FLOPs of linear maps at 128 tokens).
"""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.kronecker import KroneckerEmbedding, KroneckerLinear, count
from compresskit_plugins.kronecker.counting import find_group
from transformers import BertConfig, BertForSequenceClassification, BertModel

from compresskit.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


@pytest.fixture(scope="module")
def bert_base() -> BertModel:
    with torch.device("meta"):
        return BertModel(BertConfig())


def _groups(registry: Registry, name: str):
    return registry.get("preset", name).groups


def test_bert_base_dense_totals(registry: Registry, bert_base: BertModel) -> None:
    result = count(bert_base, _groups(registry, "kroneckerbert21"))
    assert result.dense.params == 109_482_240
    assert round(result.dense.flops / 1e9, 1) == 21.7


def test_kroneckerbert21_reproduces_the_paper(registry: Registry, bert_base: BertModel) -> None:
    result = count(bert_base, _groups(registry, "kroneckerbert21"))
    assert result.compressed.params == 5_228_272
    assert round(result.compressed.flops / 1e9, 2) == 1.40
    assert result.skipped == {}
    spec = result.specs["encoder.layer.3.attention.self.value"]
    assert (spec["a_shape"], spec["b_shape"]) == ([384, 48], [2, 16])
    assert result.specs["encoder.layer.3.intermediate.dense"]["a_shape"] == [16, 2]
    assert result.specs["encoder.layer.3.intermediate.dense"]["b_shape"] == [192, 384]
    assert result.specs["encoder.layer.3.output.dense"]["b_shape"] == [384, 192]
    assert result.specs["embeddings.word_embeddings"]["a_shape"] == [30522, 48]
    assert "pooler.dense" not in result.specs and "embeddings.position_embeddings" not in result.specs


def test_kroneckerbert8_reproduces_the_printed_shapes(registry: Registry, bert_base: BertModel) -> None:
    result = count(bert_base, _groups(registry, "kroneckerbert8"))
    assert result.compressed.params == 14_654_216
    specs = result.specs
    assert specs["encoder.layer.0.attention.output.dense"]["a_shape"] == [384, 384]
    assert specs["encoder.layer.0.intermediate.dense"]["b_shape"] == [384, 384]
    assert specs["encoder.layer.0.output.dense"]["a_shape"] == [2, 8]
    assert specs["embeddings.word_embeddings"]["a_shape"] == [30522, 96]
    assert len(specs) == 12 * 6 + 1


def test_kroneckerbert5_is_about_20m_with_four_terms(registry: Registry, bert_base: BertModel) -> None:
    result = count(bert_base, _groups(registry, "kroneckerbert5"))
    assert result.compressed.params == 20_762_508  # reference §1.6: "20.76M, 5.27x"
    assert result.specs["encoder.layer.0.intermediate.dense"]["num_terms"] == 4


@pytest.mark.parametrize("preset", ["kroneckerbert8", "kroneckerbert21"])
def test_presets_adapt_to_minilm_at_the_same_per_matrix_ratios(registry: Registry, preset: str) -> None:
    with torch.device("meta"):
        minilm = BertModel(BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6))
    base = count(_meta_bert(), _groups(registry, preset))
    small = count(minilm, _groups(registry, preset))
    assert small.skipped == {} and len(small.specs) == 6 * 6 + 1
    for suffix in ("attention.self.query", "intermediate.dense", "output.dense"):
        big_spec, small_spec = (
            base.specs[f"encoder.layer.0.{suffix}"],
            small.specs[f"encoder.layer.0.{suffix}"],
        )
        assert _weight_ratio(small_spec) == pytest.approx(_weight_ratio(big_spec), rel=0.02), suffix


def _meta_bert() -> BertModel:
    with torch.device("meta"):
        return BertModel(BertConfig())


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
    groups = _groups(registry, "kroneckerbert21")
    result = count(model, groups)
    assert "bert.encoder.layer.0.intermediate.dense" in result.skipped
    assert "does not divide the 37x32" in result.skipped["bert.encoder.layer.0.intermediate.dense"]
    assert "classifier" not in result.specs

    ids = torch.randint(1, 99, (2, 6))
    before = model(input_ids=ids).logits
    kron = {}
    for name, module in list(model.named_modules()):
        found = find_group(name, module, groups)
        if found is None or name in result.skipped:
            continue
        decomposition = registry.create("decomposition", "kronecker", found[1])
        kron[name] = decomposition.build(module, result.specs[name])
    for name, new in kron.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    assert isinstance(model.bert.embeddings.word_embeddings, KroneckerEmbedding)
    assert isinstance(model.bert.encoder.layer[1].attention.self.query, KroneckerLinear)
    assert sum(p.numel() for p in model.parameters()) == result.compressed.params
    after = model(input_ids=ids).logits
    assert after.shape == before.shape and torch.isfinite(after).all()


def test_the_walker_applies_the_preset_with_the_same_totals(registry: Registry, bert_base: BertModel) -> None:
    from compresskit.walker import plan_compression

    plan = plan_compression(bert_base, "kroneckerbert21", registry=registry)
    assert (plan.model_params, plan.model_params_after) == (109_482_240, 5_228_272)
    assert len(plan.modules) == 12 * 6 + 1


def test_a_tied_gpt2_head_stays_tied_to_the_kronecker_embedding(registry: Registry) -> None:
    from compresskit_plugins.kronecker import KroneckerTiedHead
    from transformers import GPT2Config, GPT2LMHeadModel

    from compresskit.walker import decompose

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
