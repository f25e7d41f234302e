"""The ``text`` task: a general-domain corpus in fixed-length blocks, for stage-1 (general) distillation.

Sources, in order of precedence: ``files`` (UTF-8 text files, one document per non-empty line), a
Hub dataset (``hub_dataset``, ``hub_config``, ``hub_split``, ``text_column``; needs a network), or
the offline default: the Wikipedia paragraphs of the SQuAD v1.1 dev contexts (deduplicated) followed
by the Wikipedia sentences of GLUE QNLI dev (the ``sentence`` column, deduplicated).

Documents are split deterministically: the last ``ceil(dev_fraction * N)`` documents form ``dev``.
Each split is tokenised without special tokens, documents are joined with the separator token, and
the stream is cut into blocks of ``block_size - 2`` tokens, each wrapped as ``[CLS] ... [SEP]``
(the grouping of BERT-style pre-training data; Devlin et al., 2019). With ``mlm_probability > 0``
the batches carry masked-language-model ``labels`` (see :class:`MaskingCollator`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from compresskit import DataError, Task, hookimpl
from compresskit.plugin import PaddingCollator, check_limit, collect_outputs, list_dataloader, shared_data_dir

from .glue.reader import read_tsv
from .glue.specs import GLUE_TASKS
from .squad.data import load_articles


@dataclasses.dataclass(frozen=True)
class TextOptions:
    """Options of the ``text`` task (see the module docstring)."""

    files: tuple[str, ...] = ()
    hub_dataset: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    block_size: int = 128
    mlm_probability: float = 0.0
    dev_fraction: float = 0.05
    limit: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.block_size < 8:
            raise ValueError(f"block_size must be at least 8, got {self.block_size}.")
        if not 0.0 <= self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1), got {self.mlm_probability}.")
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be strictly between 0 and 1, got {self.dev_fraction}.")
        check_limit(self.limit, "limit")


class TextCorpusTask(Task):
    """General text chunked into fixed-length blocks (optionally MLM-masked) for general distillation."""

    name = "text"
    Options = TextOptions
    problem_type = "language_modeling"
    primary_metric = "perplexity"
    greater_is_better = False

    def __init__(self, options: dict[str, Any] | None = None, *, where: str = "") -> None:
        super().__init__(options, where=where)
        self._documents: list[str] | None = None

    def documents(self) -> list[str]:
        """Every document of the corpus, in a fixed order."""
        if self._documents is None:
            if self.options.files:
                docs = read_text_files([Path(f).expanduser() for f in self.options.files])
            elif self.options.hub_dataset:
                docs = self._hub_documents()
            else:
                docs = default_documents(shared_data_dir())
            if not docs:
                raise DataError(f"text task: the corpus is empty ({self.describe()}).")
            self._documents = docs
        return self._documents

    def load_split(self, split: str) -> Any:
        """The documents of ``split`` as a dataset with one ``text`` column."""
        import datasets

        self.check_split(split)
        docs = self.documents()
        n_dev = min(max(math.ceil(self.options.dev_fraction * len(docs)), 1), max(len(docs) - 1, 1))
        part = docs[: len(docs) - n_dev] if split == "train" else docs[len(docs) - n_dev :]
        return datasets.Dataset.from_dict({"text": part or docs})

    def blocks(self, split: str, tokenizer: Any, *, block_size: int | None = None, limit: int | None = None
               ) -> list[dict[str, list[int]]]:  # fmt: skip
        """Fixed-length ``[CLS] tokens [SEP]`` blocks of ``split`` (the last one may be shorter)."""
        size = (block_size or self.options.block_size) - 2
        limit = check_limit(limit, "text.blocks") or self.options.limit
        texts = list(self.load_split(split)["text"])
        sep = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        stream: list[int] = []
        for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            stream += [*ids, *sep]
            if limit and len(stream) >= limit * size:
                break
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)][:limit]
        first, last = _boundary_tokens(tokenizer)
        return [{"input_ids": [*first, *c, *last], "attention_mask": [1] * (len(c) + len(first) + len(last))}
                for c in chunks]  # fmt: skip

    def dataloader(
        self,
        split: str,
        tokenizer: Any,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 42,
        max_length: int | None = None,
        limit: int | None = None,
        group_by_length: bool = False,
    ) -> Any:
        """Batches of blocks (``max_length`` overrides ``block_size``); MLM ``labels`` when masking."""

        blocks = self.blocks(split, tokenizer, block_size=max_length, limit=limit)
        probability = self.options.mlm_probability
        collate = (
            MaskingCollator(tokenizer, probability, seed=self.options.seed)
            if probability > 0
            else PaddingCollator(tokenizer)
        )
        return list_dataloader(
            blocks,
            collate,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            group_by_length=group_by_length,
        )

    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        split: str = "dev",
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        limit: int | None = None,
        device: Any = None,
    ) -> dict[str, float]:
        """Masked-LM loss, perplexity and accuracy of a model with an MLM head (15 % masking by
        default, seeded so every evaluation masks the same tokens)."""
        import torch

        probability = self.options.mlm_probability or 0.15
        blocks = self.blocks(split, tokenizer, block_size=max_length, limit=limit)
        collate = MaskingCollator(tokenizer, probability, seed=self.options.seed)
        batches = [collate(blocks[i : i + batch_size]) for i in range(0, len(blocks), batch_size)]
        logits = collect_outputs(model, batches, device=device)
        losses, correct, count = 0.0, 0, 0
        for batch, scores in zip(batches, logits, strict=True):
            mask = batch["labels"] != -100
            losses += float(
                torch.nn.functional.cross_entropy(scores[mask], batch["labels"][mask], reduction="sum")
            )
            correct += int((scores[mask].argmax(-1) == batch["labels"][mask]).sum())
            count += int(mask.sum())
        if count == 0:
            raise DataError(f"text task: no token was masked in split {split!r}; use more data.")
        return {
            "mlm_loss": losses / count,
            "perplexity": math.exp(losses / count),
            "mlm_accuracy": correct / count,
        }

    def compute_metrics(self, predictions: Any, references: Any) -> dict[str, float]:
        """Accuracy of predicted token ids on the positions whose reference is not −100."""
        import numpy as np

        pred, ref = np.asarray(predictions), np.asarray(references)
        mask = ref != -100
        if not mask.any():
            raise DataError("text task: no labelled (masked) position to score.")
        return {"mlm_accuracy": float(np.mean(pred[mask] == ref[mask]))}

    def _hub_documents(self) -> list[str]:
        import datasets

        name = self.options.hub_dataset
        try:
            data = datasets.load_dataset(name, self.options.hub_config, split=self.options.hub_split)
        except Exception as exc:
            raise DataError(
                f"text task: could not load the Hub dataset {name!r} ({type(exc).__name__}: {exc}); "
                "without a network pass local files with the option files=[...]."
            ) from exc
        if self.options.text_column not in data.column_names:
            raise DataError(
                f"text task: {name!r} has no column {self.options.text_column!r}; "
                f"columns: {data.column_names}. Set the option text_column."
            )
        return [t for t in data[self.options.text_column] if isinstance(t, str) and t.strip()]


class MaskingCollator(PaddingCollator):
    """Pads, then masks for masked-language modelling with BERT's 80/10/10 rule (Devlin et al., 2019).

    Each non-special, non-padding token is selected with probability ``p``; ``labels`` hold the
    original id at selected positions and −100 elsewhere. Of the selected tokens 80 % become the mask
    token, 10 % a random token, 10 % stay unchanged. A seeded generator makes the masks reproducible.
    """

    def __init__(self, tokenizer: Any, probability: float, *, seed: int = 42) -> None:
        import torch

        super().__init__(tokenizer)
        if tokenizer.mask_token_id is None:
            raise DataError(
                f"MLM masking needs a tokenizer with a mask token; {type(tokenizer).__name__} has none."
            )
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.probability = probability
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples: Any) -> dict[str, Any]:
        import torch

        batch = super().__call__(examples)
        ids = batch["input_ids"]
        maskable = (batch["attention_mask"] == 1) & ~torch.isin(ids, self.special)
        draw = torch.rand(ids.shape, generator=self.generator)
        selected = maskable & (draw < self.probability)
        kind = torch.rand(ids.shape, generator=self.generator)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=self.generator)
        batch["labels"] = torch.where(selected, ids, torch.full_like(ids, -100))
        masked = ids.clone()
        masked[selected & (kind < 0.8)] = self.mask_id
        swap = selected & (kind >= 0.8) & (kind < 0.9)
        masked[swap] = random_ids[swap]
        batch["input_ids"] = masked
        return batch


def _boundary_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """``([CLS], [SEP])`` for BERT-like tokenizers, ``([BOS], [EOS])`` otherwise, else nothing."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([first] if first is not None else []), ([last] if last is not None else [])


def read_text_files(paths: list[Path]) -> list[str]:
    """Non-empty lines of UTF-8 text files, one document each."""
    docs: list[str] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"text task: file {path} does not exist.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"text task: {path} is not UTF-8 text (byte {exc.start}).") from None
        docs += [line.strip() for line in text.splitlines() if line.strip()]
    return docs


def default_documents(data_dir: Path) -> list[str]:
    """SQuAD v1.1 dev contexts then QNLI dev sentences, each deduplicated in first-seen order."""
    squad = data_dir / "squad" / "dev-v1.1.json"
    contexts = [p["context"] for a in load_articles(squad, "1.1") for p in a["paragraphs"]]
    qnli = read_tsv(data_dir / "glue" / "QNLI" / "dev.tsv", GLUE_TASKS["qnli"])["sentence"]
    return list(dict.fromkeys(text.strip() for text in [*contexts, *qnli] if text.strip()))


@hookimpl
def compresskit_register_tasks() -> list[type[Task]]:
    return [TextCorpusTask]
