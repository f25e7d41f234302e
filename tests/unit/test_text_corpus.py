"""The ``text`` task: sources, fixed-length blocks, seeded BERT-style MLM masking, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from compresskit_plugins.text_corpus import MaskingCollator, TextCorpusTask, default_documents

from compresskit import ConfigError, DataError, Registry


@pytest.fixture(scope="module")
def tokenizer(minilm_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    lines = [f"document number {i} talks about topic {i % 7} at some length." for i in range(40)]
    path.write_text("\n\n".join(lines) + "\n")
    return path


def test_text_is_registered() -> None:
    task = Registry.from_plugins().create("task", "text", {"block_size": 32})
    assert task.problem_type == "language_modeling" and not task.greater_is_better


def test_offline_default_is_squad_contexts_then_qnli_sentences(data_dir: Path) -> None:
    docs = default_documents(data_dir)
    assert docs[0].startswith("Super Bowl 50 was an American football game")
    assert len(docs) == len(set(docs))  # deduplicated: SQuAD repeats each context per question
    assert "As of that day, the new constitution heralding the Second Republic came into force." in docs


def test_blocks_have_fixed_length_and_special_tokens(corpus: Path, tokenizer: Any) -> None:
    task = TextCorpusTask({"files": [str(corpus)], "block_size": 16, "dev_fraction": 0.1})
    assert len(task.load_split("train")) == 36 and len(task.load_split("dev")) == 4
    blocks = task.blocks("train", tokenizer)
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and len(blocks[-1]["input_ids"]) <= 16
    assert all(
        b["input_ids"][0] == tokenizer.cls_token_id and b["input_ids"][-1] == tokenizer.sep_token_id
        for b in blocks
    )
    inner = [t for b in blocks for t in b["input_ids"][1:-1]]
    expected = []
    for text in task.load_split("train")["text"]:
        expected += [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
    assert inner == expected  # nothing lost or reordered between blocks
    assert len(task.blocks("train", tokenizer, limit=3)) == 3


def test_without_masking_batches_have_no_labels(corpus: Path, tokenizer: Any) -> None:
    task = TextCorpusTask({"files": [str(corpus)], "block_size": 16})
    batch = next(iter(task.dataloader("train", tokenizer, batch_size=4)))
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (4, 16) and bool(batch["attention_mask"].all())


def test_masking_follows_80_10_10_and_is_seeded(tokenizer: Any) -> None:
    examples = [
        {"input_ids": [101, *range(1000, 1000 + 198), 102], "attention_mask": [1] * 200} for _ in range(50)
    ]
    batch = MaskingCollator(tokenizer, 0.15, seed=1)(examples)
    original = torch.tensor([e["input_ids"] for e in examples])
    selected = batch["labels"] != -100
    assert 0.13 < selected.float().mean() < 0.17
    assert torch.equal(batch["labels"][selected], original[selected])
    assert not selected[:, 0].any() and not selected[:, -1].any()  # special tokens are never masked
    became_mask = (batch["input_ids"] == tokenizer.mask_token_id) & selected
    unchanged = (batch["input_ids"] == original) & selected
    assert 0.75 < became_mask.sum() / selected.sum() < 0.85
    assert 0.06 < unchanged.sum() / selected.sum() < 0.14
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    again = MaskingCollator(tokenizer, 0.15, seed=1)(examples)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    other = MaskingCollator(tokenizer, 0.15, seed=2)(examples)
    assert not torch.equal(other["labels"], batch["labels"])


def test_padding_is_never_masked(tokenizer: Any) -> None:
    examples = [{"input_ids": [101, 2000, 102], "attention_mask": [1, 1, 1]},
                {"input_ids": [101, *[2001] * 30, 102], "attention_mask": [1] * 32}]  # fmt: skip
    batch = MaskingCollator(tokenizer, 0.5, seed=0)(examples)
    assert batch["input_ids"].shape == (2, 32)
    assert (batch["labels"][0, 3:] == -100).all()


class UniformMLM(torch.nn.Module):
    """Uniform logits over the vocabulary: MLM loss must be log(V), perplexity V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.p
        return type("Out", (), {"logits": logits})()


def test_evaluate_reports_loss_and_perplexity(corpus: Path, tokenizer: Any) -> None:
    task = TextCorpusTask({"files": [str(corpus)], "block_size": 16, "dev_fraction": 0.5})
    metrics = task.evaluate(UniformMLM(len(tokenizer)), tokenizer, "dev", batch_size=4)
    assert metrics["mlm_loss"] == pytest.approx(
        torch.log(torch.tensor(float(len(tokenizer)))).item(), rel=1e-5
    )
    assert metrics["perplexity"] == pytest.approx(len(tokenizer), rel=1e-4)
    assert task.compute_metrics([[5, 6, 7]], [[5, -100, 8]]) == {"mlm_accuracy": 0.5}


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        TextCorpusTask({"files": [str(tmp_path / "missing.txt")]}).documents()
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        TextCorpusTask({"files": [str(binary)]}).documents()
    with pytest.raises(ConfigError, match="mlm_probability"):
        TextCorpusTask({"mlm_probability": 1.5})


def test_hub_dataset_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load the Hub dataset 'wikitext'"):
        TextCorpusTask({"hub_dataset": "wikitext", "hub_config": "wikitext-103-raw-v1"}).documents()
