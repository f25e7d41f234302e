"""The ``glue`` task: the nine GLUE tasks (Wang et al., 2019) from local files or the Hub."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from compresskit import ConfigError, Task
from compresskit.plugin import (
    PaddingCollator,
    check_limit,
    collect_outputs,
    did_you_mean,
    list_dataloader,
    shared_data_dir,
)

from . import reader
from .specs import CLASS_NAMES, GLUE_TASKS, GlueSpec, score


@dataclasses.dataclass(frozen=True)
class GlueOptions:
    """Options of the ``glue`` task.

    ``task``: cola, sst2, mrpc, stsb, qqp, mnli (matched dev), mnli_mismatched, qnli, rte or wnli.
    ``data_dir``: the GLUE distribution folder (default: ``<shared data>/glue``). ``source``:
    ``"local"`` (files) or ``"hub"`` (``nyu-mll/glue``, needs a network). ``train_limit`` /
    ``eval_limit``: keep only the first N examples. ``skip_malformed``: drop bad rows with a warning
    instead of stopping.
    """

    task: str = "sst2"
    data_dir: str | None = None
    max_length: int = 128
    train_limit: int | None = None
    eval_limit: int | None = None
    source: str = "local"
    skip_malformed: bool = False

    def __post_init__(self) -> None:
        if self.task not in GLUE_TASKS:
            raise ValueError(
                f"unknown GLUE task {self.task!r}.{did_you_mean(self.task, GLUE_TASKS)} "
                f"Known: {', '.join(GLUE_TASKS)}."
            )
        if self.source not in ("local", "hub"):
            raise ValueError(f"source must be 'local' or 'hub', got {self.source!r}.")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}.")
        check_limit(self.train_limit, "train_limit")
        check_limit(self.eval_limit, "eval_limit")


class GlueTask(Task):
    """A GLUE task with its official metrics (Matthews for CoLA, F1 + accuracy for MRPC/QQP,
    Pearson + Spearman for STS-B, accuracy otherwise)."""

    name = "glue"
    Options = GlueOptions

    def __init__(self, options: dict[str, Any] | None = None, *, where: str = "") -> None:
        super().__init__(options, where=where)
        self.spec: GlueSpec = GLUE_TASKS[self.options.task]
        self.text_columns = self.spec.text_columns
        self.problem_type = "regression" if self.spec.is_regression else "single_label_classification"
        self.primary_metric = self.spec.primary_metric
        self._cache: dict[str, Any] = {}

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return CLASS_NAMES.get(self.spec.name)

    def splits(self) -> list[str]:
        return list(self.spec.files)

    def data_path(self, split: str) -> Path:
        """The TSV file of ``split`` in the GLUE layout."""
        base = Path(self.options.data_dir) if self.options.data_dir else shared_data_dir() / "glue"
        return base.expanduser() / self.spec.folder / self.spec.files[split]

    def load_split(self, split: str) -> Any:
        """Validated examples: the Hub's text columns, ``label`` (id, or score for STS-B), ``idx``."""
        self.check_split(split)
        if split not in self._cache:
            import datasets

            if self.options.source == "hub":
                self._cache[split] = reader.load_hub(self.spec, split)
            else:
                path = self.data_path(split)
                columns = reader.read_tsv(path, self.spec, skip_malformed=self.options.skip_malformed)
                self._cache[split] = datasets.Dataset.from_dict(columns)
        return self._cache[split]

    def tokenize(self, split: str, tokenizer: Any, *, max_length: int | None = None, limit: int | None = None
                 ) -> list[dict[str, Any]]:  # fmt: skip
        """One feature dict per example: token ids (single sentence or pair, truncated) + ``labels``."""
        data = self.load_split(split)
        default_limit = self.options.train_limit if split == "train" else self.options.eval_limit
        limit = check_limit(limit, f"glue.{split}") or default_limit
        if limit is not None and limit < len(data):
            data = data.select(range(limit))
        texts = [list(data[column]) for column in self.spec.text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length or self.options.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        labels = list(data["label"])
        return [{**{k: encoded[k][i] for k in keys}, "labels": labels[i]} for i in range(len(labels))]

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
        import torch

        features = self.tokenize(split, tokenizer, max_length=max_length, limit=limit)
        collate = PaddingCollator(
            tokenizer, label_dtype=torch.float if self.spec.is_regression else torch.long
        )
        return list_dataloader(
            features,
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
        loader = self.dataloader(  # longest first: GLUE metrics do not depend on the order
            split, tokenizer, batch_size=batch_size, max_length=max_length, limit=limit, group_by_length=True
        )
        logits = np.concatenate([t.numpy() for t in collect_outputs(model, loader, device=device)])
        references = np.concatenate([batch["labels"].numpy() for batch in loader])
        return self.compute_metrics(logits, references)

    def compute_metrics(self, predictions: Any, references: Any) -> dict[str, float]:
        """Metrics from logits (N × num_labels), class ids (N) or, for STS-B, scores (N or N × 1)."""
        pred = np.asarray(predictions)
        if self.spec.is_regression:
            columns = pred.reshape(len(pred), -1).shape[1] if pred.ndim > 1 else 1
            if columns != 1:
                raise ConfigError(
                    f"GLUE {self.spec.name}: the model gives {columns} outputs per "
                    "example but this is a regression task with one score; evaluate a model with a 1-output "
                    "regression head (fine-tuned on this task)."
                )
            pred = pred.reshape(len(pred), -1)[:, 0] if pred.ndim > 1 else pred
        elif pred.ndim == 2:
            if pred.shape[1] != self.num_labels:
                raise ConfigError(
                    f"GLUE {self.spec.name}: logits have {pred.shape[1]} columns but the task has "
                    f"{self.num_labels} labels; load the model with task.model_kwargs()."
                )
            pred = pred.argmax(axis=1)
        return score(self.spec, pred, np.asarray(references))
