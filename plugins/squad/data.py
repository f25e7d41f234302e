"""Reading and validating SQuAD v1.1 / v2.0 JSON files, and the offline split of the dev file.

A SQuAD file is ``{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}], "is_impossible" (v2.0 only)}]}]}]}``. Every answer
must lie inside its context (``context[answer_start:answer_start + len(text)] == text``); a v2.0 file
(version ``v2.0`` or any ``is_impossible`` key) passed as v1.1, or the reverse, is refused.

**Offline split.** No SQuAD training file ships offline, so when no ``train_file`` is given the dev
file is split by article (never by question, so no paragraph is shared): the article indices
``0..N-1`` are shuffled with ``random.Random(split_seed)`` and the first ``round(train_fraction * N)``
of the shuffled order form ``train``, the rest ``dev``; each part keeps the file order. For the
48 articles of ``dev-v1.1.json`` with the defaults (seed 0, fraction 0.8) that is 38 / 10 articles.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresskit import DataError

VERSIONS = ("1.1", "2.0")


@dataclass(frozen=True)
class SquadExample:
    """One question. ``answers`` are the gold texts and character starts; empty when unanswerable."""

    id: str
    title: str
    context: str
    question: str
    answer_texts: tuple[str, ...]
    answer_starts: tuple[int, ...]
    is_impossible: bool = False

    def to_row(self) -> dict[str, Any]:
        """The Hub ``squad`` / ``squad_v2`` row layout."""
        return {
            "id": self.id,
            "title": self.title,
            "context": self.context,
            "question": self.question,
            "answers": {"text": list(self.answer_texts), "answer_start": list(self.answer_starts)},
        }


def load_articles(path: Path, version: str) -> list[dict[str, Any]]:
    """The ``data`` list of a SQuAD file, after checking it is a SQuAD ``version`` file."""
    if not path.is_file():
        raise DataError(f"SQuAD file {path} does not exist; pass train_file / dev_file with real paths.")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DataError(f"{path}: not a SQuAD file: expected a JSON object with a 'data' list of articles.")
    _check_version(path, payload, version)
    return payload["data"]


def _check_version(path: Path, payload: dict[str, Any], version: str) -> None:
    declared = str(payload.get("version", "")).lstrip("v")
    has_impossible = any(
        "is_impossible" in qa
        for article in payload["data"]
        for paragraph in article.get("paragraphs", [])
        for qa in paragraph.get("qas", [])
    )
    found = "2.0" if declared == "2.0" or has_impossible else declared or "1.1"
    if found != version:
        raise DataError(
            f"{path}: this is a SQuAD v{found} file (version field {payload.get('version')!r}"
            f"{', has is_impossible questions' if has_impossible else ''}) but the task is configured "
            f"for v{version}; set the task option version='{found}' or pass the v{version} file."
        )


def parse_examples(articles: list[dict[str, Any]], path: Path, version: str) -> list[SquadExample]:
    """Flatten articles into one :class:`SquadExample` per question, validating every answer."""
    examples = []
    for a_index, article in enumerate(articles):
        title = str(article.get("title", f"article {a_index}"))
        for p_index, paragraph in enumerate(_field(article, "paragraphs", f"{path}: article {title!r}")):
            where = f"{path}: article {title!r}, paragraph {p_index}"
            context = _field(paragraph, "context", where)
            for qa in _field(paragraph, "qas", where):
                examples.append(_parse_question(qa, title, context, f"{where}, question", version))
    if not examples:
        raise DataError(f"{path}: the SQuAD file holds no questions.")
    return examples


def _field(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise DataError(f"{where}: missing field {key!r}; this is not the SQuAD JSON layout.")
    return mapping[key]


def _parse_question(qa: dict[str, Any], title: str, context: str, where: str, version: str) -> SquadExample:
    qid = str(_field(qa, "id", where))
    where = f"{where} {qid}"
    impossible = bool(qa.get("is_impossible", False))
    answers = [] if impossible else list(_field(qa, "answers", where))
    if not answers and not impossible:
        raise DataError(f"{where}: has no answers and is not marked is_impossible.")
    texts, starts = [], []
    for answer in answers:
        text, start = str(answer.get("text", "")), answer.get("answer_start")
        if not isinstance(start, int) or context[start : start + len(text)] != text or not text:
            raise DataError(
                f"{where}: answer {text!r} at answer_start={start!r} is outside the context "
                f"(the context has {len(context)} characters and reads "
                f"{context[start : start + len(text)] if isinstance(start, int) else ''!r} there)."
            )
        texts.append(text)
        starts.append(start)
    return SquadExample(
        qid, title, context, str(qa.get("question", "")), tuple(texts), tuple(starts), impossible
    )


def split_articles(
    articles: list[dict[str, Any]], *, seed: int, train_fraction: float
) -> dict[str, list[dict[str, Any]]]:
    """The documented article split: seeded shuffle of article indices, first part ``train``."""
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}.")
    if len(articles) < 2:
        raise DataError(f"the offline SQuAD split needs at least 2 articles, found {len(articles)}.")
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    cut = min(max(round(train_fraction * len(articles)), 1), len(articles) - 1)
    train = set(order[:cut])
    return {
        "train": [a for i, a in enumerate(articles) if i in train],
        "dev": [a for i, a in enumerate(articles) if i not in train],
    }
