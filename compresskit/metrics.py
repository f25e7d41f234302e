"""Official evaluation metrics: GLUE (accuracy, F1, Matthews, Pearson, Spearman, GLUE score) and SQuAD.

GLUE metrics follow Wang et al. (2019), "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding". SQuAD exact match and token F1 follow the official evaluation scripts of
SQuAD v1.1 (Rajpurkar et al., 2016) and v2.0 (Rajpurkar et al., 2018): answers are normalised (lower
case, punctuation and the articles a/an/the removed, whitespace collapsed), each prediction is scored
against every gold answer and the maximum is kept, and results are percentages.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from compresskit.errors import DataError

ArrayLike = Sequence[float] | np.ndarray


def _pair(predictions: ArrayLike, references: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(predictions)
    ref = np.asarray(references)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise DataError(
            f"metrics need two 1-D sequences of the same length; got predictions of shape {pred.shape} "
            f"and references of shape {ref.shape}."
        )
    if pred.size == 0:
        raise DataError("metrics need at least one prediction; got none.")
    return pred, ref


def accuracy(predictions: ArrayLike, references: ArrayLike) -> float:
    """Fraction of predictions equal to the reference: (1/N) Σ [ŷ_i = y_i]."""
    pred, ref = _pair(predictions, references)
    return float(np.mean(pred == ref))


def f1_binary(predictions: ArrayLike, references: ArrayLike, positive: int = 1) -> float:
    """F1 of the positive class: 2·TP / (2·TP + FP + FN); 0 when there is no positive at all."""
    pred, ref = _pair(predictions, references)
    tp = float(np.sum((pred == positive) & (ref == positive)))
    fp = float(np.sum((pred == positive) & (ref != positive)))
    fn = float(np.sum((pred != positive) & (ref == positive)))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def matthews_correlation(predictions: ArrayLike, references: ArrayLike) -> float:
    """Matthews correlation (Matthews, 1975), multi-class form of Gorodkin (2004).

    With confusion matrix C, t_k = Σ_j C_kj (true counts), p_k = Σ_i C_ik (predicted counts),
    c = trace(C), s = N: MCC = (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)); 0 when undefined.
    For two classes this is (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    pred, ref = _pair(predictions, references)
    classes, inverse = np.unique(np.concatenate([ref, pred]), return_inverse=True)
    true_idx, pred_idx = inverse[: ref.size], inverse[ref.size :]
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(confusion, (true_idx, pred_idx), 1.0)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    return float((c * s - p @ t) / denominator) if denominator else 0.0


def pearson(predictions: ArrayLike, references: ArrayLike) -> float:
    """Pearson's r = cov(ŷ, y) / (σ_ŷ σ_y); 0 when either side is constant."""
    pred, ref = _pair(predictions, references)
    pred, ref = pred.astype(np.float64), ref.astype(np.float64)
    if np.ptp(pred) == 0 or np.ptp(ref) == 0:
        return 0.0
    return float(stats.pearsonr(pred, ref)[0])


def spearman(predictions: ArrayLike, references: ArrayLike) -> float:
    """Spearman's ρ: Pearson's r of the (average-tie) ranks; 0 when either side is constant."""
    pred, ref = _pair(predictions, references)
    return pearson(stats.rankdata(pred), stats.rankdata(ref))


#: The metrics that make up each GLUE task's score (Wang et al., 2019, Table 1 and the leaderboard).
#: MNLI matched and mismatched are separate entries (``mnli`` and ``mnli_mismatched``), as on the
#: leaderboard, so a full GLUE score averages ten entries when both are given.
GLUE_SCORE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("f1", "accuracy"),
    "mnli": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def glue_task_score(task: str, metrics: Mapping[str, float]) -> float:
    """One task's GLUE score: the mean of its score metrics (e.g. MRPC: (F1 + accuracy) / 2)."""
    if task not in GLUE_SCORE_METRICS:
        raise DataError(f"unknown GLUE task {task!r}; known: {', '.join(GLUE_SCORE_METRICS)}.")
    names = GLUE_SCORE_METRICS[task]
    missing = [name for name in names if name not in metrics]
    if missing:
        raise DataError(f"GLUE score of {task!r} needs metric(s) {missing}; got {sorted(metrics)}.")
    return float(np.mean([metrics[name] for name in names]))


def glue_score(results: Mapping[str, Mapping[str, float]]) -> float:
    """The GLUE score: the unweighted mean over the given tasks of :func:`glue_task_score`.

    ``results`` maps task names (``cola``, ..., ``mnli``, ``mnli_mismatched``) to their metrics. It is
    the macro-average of Wang et al. (2019); with a subset of tasks it is the average of that subset.
    """
    if not results:
        raise DataError("the GLUE score needs the metrics of at least one task.")
    return float(np.mean([glue_task_score(task, metrics) for task, metrics in results.items()]))


# ---------------------------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower case, drop punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 of normalised answers: 2PR/(P+R) over the multiset of shared tokens.

    As in the v2.0 script, if either side is empty (a no-answer), F1 is 1 when both are empty, else 0.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    shared = sum(common.values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred_tokens), shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Exact match and F1 (percent) over every question of ``references``.

    ``references`` maps a question id to its gold answer texts; an empty list marks an unanswerable
    (v2.0) question whose only correct prediction is the empty string. Each prediction is scored
    against every gold answer and the best score is kept. A question with no prediction counts as
    wrong (0 EM, 0 F1) and its id is listed in ``missing_ids``. For v2.0 data, ``HasAns_*`` and
    ``NoAns_*`` give the scores on answerable and unanswerable questions separately.
    """
    if not references:
        raise DataError("SQuAD evaluation needs at least one reference question.")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    missing: list[str] = []
    for qid, golds in references.items():
        answers = [g for g in golds if normalize_answer(g)] or [""]
        if qid not in predictions:
            missing.append(qid)
            exact[qid] = f1[qid] = 0.0
            continue
        exact[qid] = max(squad_exact_match(predictions[qid], g) for g in answers)
        f1[qid] = max(squad_token_f1(predictions[qid], g) for g in answers)
    result: dict[str, Any] = _percentages(exact, f1, list(references))
    has_answer = [q for q, golds in references.items() if any(normalize_answer(g) for g in golds)]
    no_answer = [q for q in references if q not in set(has_answer)]
    if no_answer:
        for prefix, ids in (("HasAns", has_answer), ("NoAns", no_answer)):
            if ids:
                part = _percentages(exact, f1, ids)
                result.update({f"{prefix}_{k}": v for k, v in part.items()})
    result["missing_ids"] = missing
    return result


def _percentages(exact: Mapping[str, float], f1: Mapping[str, float], ids: list[str]) -> dict[str, Any]:
    return {
        "exact_match": 100.0 * sum(exact[q] for q in ids) / len(ids),
        "f1": 100.0 * sum(f1[q] for q in ids) / len(ids),
        "total": len(ids),
    }
