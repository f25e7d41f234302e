"""From start/end logits of every window back to one answer text per question.

For each question, over all its windows: the ``n_best`` highest start and end logits are paired;
a pair is a candidate when both tokens are context tokens, ``start <= end`` and the span has at most
``max_answer_length`` tokens; its score is ``start_logit + end_logit`` and its text is the context
between the start token's first and the end token's last character. The null (no-answer) score is
``start_logit[CLS] + end_logit[CLS]``, the smallest over the question's windows. For SQuAD v2.0 the
empty answer is predicted when ``null_score - best_score > null_threshold`` (Devlin et al., 2019,
§4.3), or when no candidate exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .data import SquadExample
from .features import FeatureMeta


@dataclass(frozen=True)
class Candidate:
    """One candidate span and its score."""

    text: str
    score: float


def best_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, meta: FeatureMeta, context: str, *, n_best: int,
    max_answer_length: int,
) -> list[Candidate]:  # fmt: skip
    """Valid candidate spans of one window, best first (at most ``n_best``)."""
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    candidates = []
    for s in starts:
        for e in ends:
            if s >= len(meta.offsets) or e >= len(meta.offsets):
                continue
            first, last = meta.offsets[s], meta.offsets[e]
            if first is None or last is None or e < s or e - s + 1 > max_answer_length:
                continue
            candidates.append(Candidate(context[first[0] : last[1]], float(start_logits[s] + end_logits[e])))
    candidates.sort(key=lambda c: c.score, reverse=True)
    return candidates[:n_best]


def predict_answers(
    examples: Sequence[SquadExample],
    metas: Sequence[FeatureMeta],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> dict[str, str]:
    """One predicted text per question id (``""`` for a predicted no-answer)."""
    per_example: dict[int, list[int]] = {}
    for feature_index, meta in enumerate(metas):
        per_example.setdefault(meta.example_index, []).append(feature_index)
    predictions = {}
    for example_index, example in enumerate(examples):
        candidates: list[Candidate] = []
        null_score = float("inf")
        for f in per_example.get(example_index, []):
            meta = metas[f]
            null_score = min(
                null_score, float(start_logits[f][meta.cls_index] + end_logits[f][meta.cls_index])
            )
            length = len(meta.offsets)
            candidates += best_spans(
                start_logits[f][:length], end_logits[f][:length], meta, example.context,
                n_best=n_best, max_answer_length=max_answer_length,
            )  # fmt: skip
        best = max(candidates, key=lambda c: c.score, default=None)
        if best is None or (version_2 and null_score - best.score > null_threshold):
            predictions[example.id] = ""
        else:
            predictions[example.id] = best.text
    return predictions
