"""Capture of hidden states and pre-softmax attention scores on a tiny BERT."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compresskit.capture import (
    capture_outputs,
    enable_score_capture,
    find_encoder_parts,
    model_outputs,
)
from compresskit.errors import ConfigError

HEADS = 4


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=37,
        num_labels=2,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": mask}


def test_finds_embeddings_and_layers() -> None:
    parts = find_encoder_parts(tiny_bert())
    assert parts.embeddings == "bert.embeddings"
    assert parts.layers == ("bert.encoder.layer.0", "bert.encoder.layer.1")


def test_hidden_states_equal_transformers_hidden_states() -> None:
    model = tiny_bert()
    out = model_outputs(model, inputs())
    reference = model(**inputs(), output_hidden_states=True).hidden_states
    assert len(out.hidden_states or ()) == 3
    for mine, theirs in zip(out.hidden_states or (), reference, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_scores_equal_manual_qk_and_logits_unchanged() -> None:
    model = tiny_bert()
    eager_logits = model(**inputs()).logits
    enable_score_capture(model)
    out = model_outputs(model, inputs(), attention_scores=True)
    torch.testing.assert_close(out.logits, eager_logits)
    head_dim = 32 // HEADS
    for layer in range(2):
        attention = model.bert.encoder.layer[layer].attention.self
        h = (out.hidden_states or ())[layer]
        q = attention.query(h).view(2, 6, HEADS, head_dim).transpose(1, 2)
        k = attention.key(h).view(2, 6, HEADS, head_dim).transpose(1, 2)
        manual = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        torch.testing.assert_close((out.attention_scores or ())[layer], manual)


def test_scores_without_enabling_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="enable_score_capture"):
        model_outputs(tiny_bert(), inputs(), attention_scores=True)


def test_capture_outputs_by_path_and_unknown_path() -> None:
    model = tiny_bert()
    with capture_outputs(model, ["bert.encoder.layer.1.intermediate"]) as captured:
        model(**inputs())
    assert captured["bert.encoder.layer.1.intermediate"].shape == (2, 6, 37)
    with (
        pytest.raises(ConfigError, match=r"no module 'bert\.encoder\.layer\.9'"),
        capture_outputs(model, ["bert.encoder.layer.9"]),
    ):
        pass


def test_extra_paths_and_gradients_flow_through_captured_scores() -> None:
    model = tiny_bert()
    model.train()
    enable_score_capture(model)
    out = model_outputs(model, inputs(), attention_scores=True, extra_paths=["bert.pooler"])
    assert out.captured["bert.pooler"].shape == (2, 32)
    (out.attention_scores or ())[0].sum().backward()
    grad = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_restore_attention_puts_back_the_original_implementation() -> None:
    from compresskit.capture import ATTENTION_IMPLEMENTATION, restore_attention

    model = tiny_bert()
    original = model.config._attn_implementation
    previous = enable_score_capture(model)
    assert model.config._attn_implementation == ATTENTION_IMPLEMENTATION
    assert previous == original
    restore_attention(model, previous)
    assert model.config._attn_implementation == original
    model_outputs(model, inputs())  # still runs with its own attention
