"""A tiny BERT teacher and a tiny strategy over the GLUE samples, shared by the run-layer tests.

``make_tiny_teacher(folder, data_dir)`` writes a pre-trained-style BERT (hidden 32, FFN 37, 2 layers,
vocab 99) with a matching WordPiece tokenizer; ``tiny_strategy_dict(teacher, data_dir)`` is a whole
strategy (fine-tune → low-rank FFN → logits KD → evaluate → measure) that runs in seconds on a CPU.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_teacher(folder: Path, data_dir: Path) -> Path:
    """Write the tiny teacher (weights seeded with 0) and its tokenizer into ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words: Counter[str] = Counter()
    for line in (data_dir / "glue-sample" / "SST-2" / "train.tsv").read_text().splitlines()[1:]:
        words.update(line.split("\t")[0].lower().split())
    vocab = SPECIALS + [w for w, _ in words.most_common(99 - len(SPECIALS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
        BertModel(config).save_pretrained(folder)
    return folder


def tiny_strategy_dict(teacher: Path, data_dir: Path, **extra: Any) -> dict[str, Any]:
    """The tiny strategy as a config mapping (``Strategy.from_dict`` / ``compresskit.compress``)."""
    glue = {"task": "sst2", "data_dir": str(data_dir / "glue-sample")}
    training = {"batch_size": 16, "num_epochs": 1.0, "learning_rate": 1e-3, "log_every": 1}
    return {
        "name": "tiny",
        "device": "cpu",
        "model": {"teacher": str(teacher)},
        "task": {"name": "glue", "options": glue},
        "finetune": {"max_length": 32, "training": dict(training)},
        "steps": [
            {
                "kind": "decompose",
                "groups": [
                    {
                        "name": "ffn",
                        "types": ["Linear"],
                        "names": ["intermediate.dense", "output.dense"],
                        "decomposition": "low_rank",
                        "options": {"rank": 4},
                    },
                ],
            },
            {"kind": "distill", "distiller": "logits_kd", "options": {"training": dict(training)}},
        ],
        "evaluation": {"batch_size": 32},
        "measure": {"seq_len": 16, "repeats": 2, "warmup": 1},
        "tracking": {"tracker": "none"},
        **extra,
    }


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``folder/model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(first: Path, second: Path) -> None:
    """The two folders hold bit-identical weights (same names, shapes, dtypes and values)."""
    a, b = load_weights(first), load_weights(second)
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"weights differ between {first} and {second}: {different[:5]}"
