"""SQuAD windows with a document stride, answer positions, and post-processing of logits into text."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from compresskit_plugins.squad import SquadTask
from compresskit_plugins.squad.data import SquadExample
from compresskit_plugins.squad.features import FeatureMeta, build_features
from compresskit_plugins.squad.postprocess import predict_answers

from compresskit import DataError


@pytest.fixture(scope="module")
def tokenizer(minilm_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


LONG_CONTEXT = " ".join(f"word{i}" for i in range(60)) + " The answer is Denver Broncos today."


def test_long_context_is_windowed_with_overlap(tokenizer: Any) -> None:
    start = LONG_CONTEXT.index("Denver Broncos")
    example = SquadExample("q", "t", LONG_CONTEXT, "Who?", ("Denver Broncos",), (start,))
    features, metas = build_features([example], tokenizer, max_length=48, doc_stride=16)
    assert len(features) > 2 and all(len(f["input_ids"]) <= 48 for f in features)
    spans = [[o for o in m.offsets if o is not None] for m in metas]
    for left, right in itertools.pairwise(spans):
        assert right[0][0] < left[-1][1]  # consecutive windows overlap
    found = [f for f in features if f["start_positions"] != 0]
    assert found, "some window must hold the answer"
    for feature in found:
        answer_ids = feature["input_ids"][feature["start_positions"] : feature["end_positions"] + 1]
        assert tokenizer.decode(answer_ids) == "denver broncos"
    misses = [f for f in features if f["start_positions"] == 0]
    assert misses and all(f["end_positions"] == 0 for f in misses)  # CLS for windows without the answer


def test_impossible_question_points_at_cls(tokenizer: Any) -> None:
    example = SquadExample("q", "t", "A short context.", "Why?", (), (), is_impossible=True)
    features, metas = build_features([example], tokenizer, max_length=64, doc_stride=16)
    assert (features[0]["start_positions"], features[0]["end_positions"]) == (metas[0].cls_index,) * 2


def test_slow_tokenizer_is_refused() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(DataError, match="needs a fast tokenizer"):
        build_features([], Slow(), max_length=64, doc_stride=16)


def _meta(n_question: int, offsets: list[tuple[int, int]]) -> FeatureMeta:
    return FeatureMeta(0, (None,) * n_question + tuple(offsets) + (None,), 0)


CONTEXT = "alpha beta gamma delta"
OFFSETS = [(0, 5), (6, 10), (11, 16), (17, 22)]  # tokens 2..5 after [CLS] and one question token


def _logits(
    start: dict[int, float], end: dict[int, float], cls: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.full(7, -5.0), np.full(7, -5.0)
    s[0] = e[0] = cls
    for i, v in start.items():
        s[i] = v
    for i, v in end.items():
        e[i] = v
    return s, e


def test_best_span_respects_order_length_and_context() -> None:
    example = SquadExample("q", "t", CONTEXT, "?", ("beta",), (6,))
    meta = _meta(2, OFFSETS)
    s, e = _logits({3: 4.0, 5: 9.0}, {4: 3.0, 1: 8.0})  # best end (1) is a question token; 5 > 4 is reversed
    assert predict_answers([example], [meta], [s], [e]) == {"q": "beta gamma"}
    s, e = _logits({2: 5.0}, {5: 5.0, 3: 1.0})
    assert predict_answers([example], [meta], [s], [e], max_answer_length=4) == {
        "q": "alpha beta gamma delta"
    }
    assert predict_answers([example], [meta], [s], [e], max_answer_length=2) == {"q": "alpha beta"}


def test_null_answer_threshold_for_v2() -> None:
    example = SquadExample("q", "t", CONTEXT, "?", (), (), is_impossible=True)
    s, e = _logits({3: 2.0}, {3: 2.0}, cls=2.5)  # null score 5.0, best span 4.0
    assert predict_answers([example], [_meta(2, OFFSETS)], [s], [e], version_2=True) == {"q": ""}
    high = predict_answers([example], [_meta(2, OFFSETS)], [s], [e], version_2=True, null_threshold=1.5)
    assert high == {"q": "beta"}
    assert predict_answers([example], [_meta(2, OFFSETS)], [s], [e], version_2=False) == {"q": "beta"}


def test_best_span_over_several_windows() -> None:
    example = SquadExample("q", "t", CONTEXT, "?", ("delta",), (17,))
    metas = [
        FeatureMeta(0, (None, (0, 5), (6, 10), None), 0),
        FeatureMeta(0, (None, (11, 16), (17, 22), None), 0),
    ]
    starts = [np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.0, 1.0, 6.0, 0.0])]
    ends = [np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.0, 0.0, 6.0, 0.0])]
    assert predict_answers([example], metas, starts, ends) == {"q": "delta"}


class NullModel(torch.nn.Module):
    """Always most confident in [CLS]: predicts 'no answer' for every question of a v2.0 file."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        logits = torch.zeros(input_ids.shape) + self.dummy
        logits[:, 0] = 10.0
        return type("Out", (), {"start_logits": logits, "end_logits": logits.clone()})()


def test_evaluate_end_to_end_on_a_v2_file(tmp_path: Path, tokenizer: Any) -> None:
    context = "The Broncos won the game in Denver."
    qas = [
        {
            "id": "a",
            "question": "Who won?",
            "answers": [{"text": "Broncos", "answer_start": 4}],
            "is_impossible": False,
        },
        {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": True},
    ]
    path = tmp_path / "v2.json"
    path.write_text(
        json.dumps(
            {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}
        )
    )
    task = SquadTask(
        {"version": "2.0", "train_file": str(path), "dev_file": str(path), "max_length": 64, "doc_stride": 16}
    )
    metrics = task.evaluate(NullModel(), tokenizer, "dev", batch_size=1)
    assert metrics["exact_match"] == pytest.approx(50.0)
    assert metrics["NoAns_exact_match"] == pytest.approx(100.0)
    assert metrics["HasAns_f1"] == pytest.approx(0.0)
    batch = next(iter(task.dataloader("train", tokenizer, batch_size=2)))
    assert batch["start_positions"].tolist()[1] == 0 and batch["start_positions"].tolist()[0] > 0


def test_gold_positions_round_trip_to_gold_answers_on_real_data(tokenizer: Any, data_dir: Path) -> None:
    sample = data_dir / "squad-sample" / "dev-v1.1-sample.json"
    task = SquadTask(
        {"train_file": str(sample), "dev_file": str(sample), "max_length": 128, "doc_stride": 32}
    )
    examples, features, metas = task.features("dev", tokenizer, limit=40)
    assert len(features) > len(examples)  # real contexts need several windows at 128 tokens
    starts, ends = [], []
    for feature in features:  # "oracle" logits: peaked at the labelled answer tokens of each window
        s, e = np.zeros(len(feature["input_ids"])), np.zeros(len(feature["input_ids"]))
        if feature["start_positions"] != 0:
            s[feature["start_positions"]] = e[feature["end_positions"]] = 20.0
        starts.append(s)
        ends.append(e)
    answers = predict_answers(examples, metas, starts, ends)
    # the predicted span is the smallest run of whole tokens covering the first gold answer; it only
    # differs from it where the answer is part of a word piece ("gold" in "golden", "8" in "18")
    assert all(e.answer_texts[0] in answers[e.id] for e in examples)
    metrics = task.compute_metrics(answers, {e.id: list(e.answer_texts) for e in examples})
    assert metrics["exact_match"] >= 90.0 and metrics["missing_ids"] == []
