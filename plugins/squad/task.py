"""The ``squad`` task: extractive question answering on SQuAD v1.1 / v2.0 (Rajpurkar et al., 2016, 2018)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compresskit import DataError, Task
from compresskit.plugin import (
    PaddingCollator,
    check_limit,
    collect_outputs,
    list_dataloader,
    shared_data_dir,
    squad_metrics,
)

from . import data
from .features import build_features
from .postprocess import predict_answers

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SquadOptions:
    """Options of the ``squad`` task.

    ``train_file`` / ``dev_file``: SQuAD JSON files. With no ``train_file`` the dev file (default:
    ``<shared data>/squad/dev-v1.1.json`` for v1.1) is split by article into train / dev as documented
    in :mod:`compresskit_plugins.squad.data` (``split_seed``, ``train_fraction``). ``max_length``,
    ``doc_stride``: window size and overlap in tokens. ``n_best``, ``max_answer_length`` (tokens),
    ``null_threshold`` (v2.0): post-processing. ``train_limit`` / ``eval_limit``: first N questions.
    """

    version: str = "1.1"
    train_file: str | None = None
    dev_file: str | None = None
    split_seed: int = 0
    train_fraction: float = 0.8
    max_length: int = 384
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    train_limit: int | None = None
    eval_limit: int | None = None

    def __post_init__(self) -> None:
        if self.version not in data.VERSIONS:
            raise ValueError(f"version must be '1.1' or '2.0', got {self.version!r}.")
        if not 0 < self.doc_stride < self.max_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be positive and below max_length.")
        if self.n_best < 1 or self.max_answer_length < 1:
            raise ValueError("n_best and max_answer_length must be at least 1.")
        check_limit(self.train_limit, "train_limit")
        check_limit(self.eval_limit, "eval_limit")


class SquadTask(Task):
    """SQuAD v1.1 / v2.0 with exact match and F1 as the official scripts compute them."""

    name = "squad"
    Options = SquadOptions
    problem_type = "question_answering"
    primary_metric = "f1"

    def __init__(self, options: dict[str, Any] | None = None, *, where: str = "") -> None:
        super().__init__(options, where=where)
        self._examples: dict[str, list[data.SquadExample]] = {}

    @property
    def num_labels(self) -> int:
        return 2  # start and end logits

    @property
    def version_2(self) -> bool:
        return bool(self.options.version == "2.0")

    def dev_path(self) -> Path:
        """The dev file: ``dev_file``, else the shared v1.1 dev file."""
        if self.options.dev_file:
            return Path(self.options.dev_file).expanduser()
        if self.version_2:
            raise DataError(
                "SQuAD v2.0 is not available offline: pass the task options dev_file (and train_file) "
                "with the paths of dev-v2.0.json / train-v2.0.json."
            )
        return shared_data_dir() / "squad" / "dev-v1.1.json"

    def examples(self, split: str) -> list[data.SquadExample]:
        """Validated questions of ``split`` (see the module docstring of ``data`` for the split)."""
        self.check_split(split)
        if split not in self._examples:
            version = self.options.version
            if self.options.train_file:
                path = Path(self.options.train_file) if split == "train" else self.dev_path()
                articles = data.load_articles(path.expanduser(), version)
            else:
                path = self.dev_path()
                parts = data.split_articles(
                    data.load_articles(path, version),
                    seed=self.options.split_seed,
                    train_fraction=self.options.train_fraction,
                )
                articles = parts[split]
            self._examples[split] = data.parse_examples(articles, path, version)
        return self._examples[split]

    def load_split(self, split: str) -> Any:
        """Rows in the Hub layout: id, title, context, question, answers {text, answer_start}."""
        import datasets

        return datasets.Dataset.from_list([example.to_row() for example in self.examples(split)])

    def _limited(self, split: str, limit: int | None) -> list[data.SquadExample]:
        default = self.options.train_limit if split == "train" else self.options.eval_limit
        limit = check_limit(limit, f"squad.{split}") or default
        return self.examples(split)[:limit] if limit else self.examples(split)

    def features(self, split: str, tokenizer: Any, *, max_length: int | None = None, limit: int | None = None
                 ) -> tuple[list[data.SquadExample], list[dict[str, Any]], list[Any]]:  # fmt: skip
        """Examples, model features (with answer positions) and feature metadata of ``split``."""
        examples = self._limited(split, limit)
        features, metas = build_features(
            examples, tokenizer, max_length=max_length or self.options.max_length,
            doc_stride=self.options.doc_stride,
        )  # fmt: skip
        return examples, features, metas

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
        """Windows of ``split``: input ids, masks, ``start_positions`` and ``end_positions``."""
        _, features, _ = self.features(split, tokenizer, max_length=max_length, limit=limit)
        return _loader(
            features,
            tokenizer,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            group_by_length=group_by_length,
        )

    def predict(self, model: Any, tokenizer: Any, split: str = "dev", *, batch_size: int = 64,
                max_length: int | None = None, limit: int | None = None, device: Any = None
                ) -> tuple[dict[str, str], list[data.SquadExample]]:  # fmt: skip
        """Predicted answer text per question id, and the examples they answer."""
        examples, features, metas = self.features(split, tokenizer, max_length=max_length, limit=limit)
        loader = _loader(features, tokenizer, batch_size=batch_size)
        outputs = collect_outputs(model, loader, device=device, extract=_start_end)
        starts = [row for batch in outputs for row in batch[0]]
        ends = [row for batch in outputs for row in batch[1]]
        answers = predict_answers(
            examples, metas, starts, ends, n_best=self.options.n_best,  # type: ignore[arg-type]
            max_answer_length=self.options.max_answer_length, version_2=self.version_2,
            null_threshold=self.options.null_threshold,
        )  # fmt: skip
        return answers, examples

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
        answers, examples = self.predict(
            model, tokenizer, split, batch_size=batch_size, max_length=max_length, limit=limit, device=device
        )
        result = self.compute_metrics(answers, _references(examples))
        result.pop("missing_ids")
        return result

    def compute_metrics(self, predictions: Any, references: Any) -> dict[str, Any]:
        """EM / F1 (percent) of ``{id: text}`` against ``{id: [gold texts]}``; lists ``missing_ids``."""
        return squad_metrics(predictions, references)

    def score_prediction_file(self, path: str | Path, split: str = "dev") -> dict[str, Any]:
        """Score a JSON prediction file ``{question id: answer text}`` (the official script's input)."""
        predictions = load_predictions(Path(path))
        result = self.compute_metrics(predictions, _references(self.examples(split)))
        missing = result["missing_ids"]
        if missing:
            logger.warning(
                "%s has no prediction for %d of %d questions (e.g. %s); they count as wrong.",
                path, len(missing), result["total"], ", ".join(missing[:5]),
            )  # fmt: skip
        return result


def load_predictions(path: Path) -> dict[str, str]:
    """Read a SQuAD prediction file: a JSON object mapping question ids to answer strings."""
    if not path.is_file():
        raise DataError(f"prediction file {path} does not exist.")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
    if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
        raise DataError(f"{path}: a SQuAD prediction file maps question ids to answer strings.")
    return payload


def _references(examples: list[data.SquadExample]) -> dict[str, list[str]]:
    return {example.id: list(example.answer_texts) for example in examples}


def _start_end(outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    return (
        outputs.start_logits.detach().float().cpu().numpy(),
        outputs.end_logits.detach().float().cpu().numpy(),
    )


def _loader(features: list[dict[str, Any]], tokenizer: Any, *, batch_size: int, shuffle: bool = False,
            seed: int = 42, group_by_length: bool = False) -> Any:  # fmt: skip
    collate = PaddingCollator(tokenizer, padding_side="right")
    return list_dataloader(
        features,
        collate,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        group_by_length=group_by_length,
    )
