"""Official metrics against scipy / scikit-learn on the same numbers, and SQuAD EM/F1 by definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from compresskit import DataError
from compresskit import metrics as m


@pytest.fixture
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, size=200)
    pred = np.where(rng.random(200) < 0.7, ref, 1 - ref)
    return pred, ref


def test_accuracy_f1_matthews_match_sklearn(labels: tuple[np.ndarray, np.ndarray]) -> None:
    pred, ref = labels
    assert m.accuracy(pred, ref) == pytest.approx(sk.accuracy_score(ref, pred))
    assert m.f1_binary(pred, ref) == pytest.approx(sk.f1_score(ref, pred))
    assert m.matthews_correlation(pred, ref) == pytest.approx(sk.matthews_corrcoef(ref, pred))


def test_multiclass_matthews_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 3, size=300)
    pred = np.where(rng.random(300) < 0.5, ref, rng.integers(0, 3, size=300))
    assert m.matthews_correlation(pred, ref) == pytest.approx(sk.matthews_corrcoef(ref, pred))


def test_degenerate_cases_are_zero_not_nan() -> None:
    assert m.matthews_correlation([1, 1, 1], [0, 1, 0]) == 0.0
    assert m.f1_binary([0, 0], [0, 0]) == 0.0
    assert m.pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == 0.0


def test_pearson_spearman_match_scipy_with_ties() -> None:
    rng = np.random.default_rng(2)
    ref = np.round(rng.uniform(0, 5, size=150), 1)
    pred = ref + rng.normal(0, 1.0, size=150)
    pred[:20] = 2.5  # ties
    assert m.pearson(pred, ref) == pytest.approx(stats.pearsonr(pred, ref)[0])
    assert m.spearman(pred, ref) == pytest.approx(stats.spearmanr(pred, ref)[0])


def test_shape_mismatch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="same length"):
        m.accuracy([1, 0], [1])
    with pytest.raises(DataError, match="at least one"):
        m.accuracy([], [])


def test_glue_score_averages_two_metric_tasks_first() -> None:
    results = {
        "mrpc": {"f1": 0.9, "accuracy": 0.8},  # contributes 0.85
        "stsb": {"pearson": 0.7, "spearman": 0.5},  # 0.6
        "mnli": {"accuracy": 0.8},
        "mnli_mismatched": {"accuracy": 0.6},
    }
    assert m.glue_score(results) == pytest.approx((0.85 + 0.6 + 0.8 + 0.6) / 4)
    with pytest.raises(DataError, match="needs metric"):
        m.glue_score({"mrpc": {"accuracy": 0.8}})
    with pytest.raises(DataError, match="unknown GLUE task"):
        m.glue_score({"sst-2": {"accuracy": 0.8}})


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The cat", "cat", "cat"),
        ("  A  cat, sat!  ", "cat sat", "cat sat"),
        ("An apple", "apple", "apple"),
        ("theory", "theory", "theory"),  # "the" inside a word is kept
    ],
)
def test_normalisation(prediction: str, gold: str, expected: str) -> None:
    assert m.normalize_answer(prediction) == expected
    assert m.squad_exact_match(prediction, gold) == 1.0


def test_token_f1_partial_overlap() -> None:
    # prediction "denver broncos win" vs gold "broncos": P = 1/3, R = 1, F1 = 0.5
    assert m.squad_token_f1("Denver Broncos win", "the Broncos") == pytest.approx(0.5)
    # shared multiset counts once per occurrence: pred "a b b", gold "b c": P=1/3, R=1/2 -> F1 0.4
    assert m.squad_token_f1("x y y", "y z") == pytest.approx(0.4)
    assert m.squad_token_f1("nothing", "else") == 0.0


def test_squad_metrics_max_over_golds_missing_and_no_answer() -> None:
    references = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Paris"], "q3": [], "q4": ["x"]}
    predictions = {"q1": "the Broncos", "q2": "in Paris France", "q3": ""}
    result = m.squad_metrics(predictions, references)
    assert result["missing_ids"] == ["q4"]
    assert result["total"] == 4
    # EM: q1 1, q2 0, q3 1 (no-answer + empty), q4 0 -> 50 %
    assert result["exact_match"] == pytest.approx(50.0)
    # F1: q1 1, q2 2*(1/3)*1/(4/3)=0.5, q3 1, q4 0 -> 62.5 %
    assert result["f1"] == pytest.approx(62.5)
    assert result["NoAns_exact_match"] == pytest.approx(100.0)
    assert result["HasAns_total"] == 3


def test_no_answer_question_with_a_prediction_is_wrong() -> None:
    result = m.squad_metrics({"q": "something"}, {"q": []})
    assert result["exact_match"] == 0.0 and result["f1"] == 0.0
