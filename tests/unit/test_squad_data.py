"""SQuAD files: validation, version checks, the documented offline article split, prediction files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from compresskit_plugins.squad import SquadTask
from compresskit_plugins.squad.data import load_articles, parse_examples, split_articles

from compresskit import ConfigError, DataError, Registry


def squad_file(tmp_path: Path, version: str = "1.1", *, impossible: bool = False, start: int = 4) -> Path:
    qas: list[dict[str, Any]] = [
        {"id": "q1", "question": "Who won?", "answers": [{"text": "Broncos", "answer_start": start}]}
    ]
    if impossible:
        qas[0]["is_impossible"] = False
        qas.append({"id": "q2", "question": "Who lost?", "answers": [], "is_impossible": True,
                    "plausible_answers": [{"text": "The", "answer_start": 0}]})  # fmt: skip
    payload = {
        "version": version,
        "data": [{"title": "T", "paragraphs": [{"context": "The Broncos won.", "qas": qas}]}],
    }
    path = tmp_path / f"squad-{version}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def test_squad_is_registered() -> None:
    task = Registry.from_plugins().create("task", "squad", {"version": "2.0", "dev_file": "x.json"})
    assert isinstance(task, SquadTask) and task.version_2 and task.problem_type == "question_answering"


def test_v2_file_parses_impossible_questions(tmp_path: Path) -> None:
    path = squad_file(tmp_path, "v2.0", impossible=True)
    examples = parse_examples(load_articles(path, "2.0"), path, "2.0")
    assert [e.is_impossible for e in examples] == [False, True]
    assert examples[1].answer_texts == ()


def test_wrong_version_is_refused_both_ways(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"SQuAD v2\.0 file .* configured for v1\.1; set the task option version='2\.0'"
    ):
        load_articles(squad_file(tmp_path, "v2.0", impossible=True), "1.1")
    with pytest.raises(DataError, match=r"v1\.1 file .* configured for v2\.0"):
        load_articles(squad_file(tmp_path, "1.1"), "2.0")


def test_answer_outside_the_context_names_the_question(tmp_path: Path) -> None:
    path = squad_file(tmp_path, start=40)
    with pytest.raises(
        DataError, match=r"question q1: answer 'Broncos' at answer_start=40 is outside the context"
    ):
        parse_examples(load_articles(path, "1.1"), path, "1.1")
    path = squad_file(tmp_path, start=3)  # inside, but the text does not match
    with pytest.raises(DataError, match="outside the context"):
        parse_examples(load_articles(path, "1.1"), path, "1.1")


def test_broken_json_and_layout(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.1",\n "data": [,]}')
    with pytest.raises(DataError, match=r"broken\.json:2: not valid JSON"):
        load_articles(broken, "1.1")
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{"qas": []}]}]}))
    with pytest.raises(DataError, match="missing field 'context'"):
        parse_examples(load_articles(layout, "1.1"), layout, "1.1")
    with pytest.raises(DataError, match="does not exist"):
        load_articles(tmp_path / "nope.json", "1.1")


def test_offline_split_is_by_article_documented_and_seeded(data_dir: Path) -> None:
    articles = load_articles(data_dir / "squad" / "dev-v1.1.json", "1.1")
    parts = split_articles(articles, seed=0, train_fraction=0.8)
    assert (len(parts["train"]), len(parts["dev"])) == (38, 10)
    train_titles = {a["title"] for a in parts["train"]}
    dev_titles = {a["title"] for a in parts["dev"]}
    assert not train_titles & dev_titles and len(train_titles | dev_titles) == 48
    again = split_articles(articles, seed=0, train_fraction=0.8)
    assert [a["title"] for a in again["dev"]] == [a["title"] for a in parts["dev"]]
    other = split_articles(articles, seed=1, train_fraction=0.8)
    assert {a["title"] for a in other["dev"]} != dev_titles
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        split_articles(articles, seed=0, train_fraction=1.0)


def test_task_uses_the_split_and_real_files_when_given(tmp_path: Path) -> None:
    task = SquadTask({})
    train, dev = task.examples("train"), task.examples("dev")
    assert len(train) + len(dev) == 10570
    assert not {e.context for e in train} & {e.context for e in dev}
    path = squad_file(tmp_path)
    given = SquadTask({"train_file": str(path), "dev_file": str(path)})
    assert [e.id for e in given.examples("train")] == ["q1"] == [e.id for e in given.examples("dev")]
    row = given.load_split("dev")[0]
    assert row["answers"] == {"text": ["Broncos"], "answer_start": [4]}


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="version must be"):
        SquadTask({"version": "2"})
    with pytest.raises(ConfigError, match="doc_stride"):
        SquadTask({"max_length": 128, "doc_stride": 128})
    with pytest.raises(DataError, match=r"v2\.0 is not available offline"):
        SquadTask({"version": "2.0"}).examples("dev")


def test_prediction_file_missing_ids_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = squad_file(tmp_path, "v2.0", impossible=True)
    task = SquadTask({"version": "2.0", "train_file": str(path), "dev_file": str(path)})
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"q1": "the Broncos"}))
    with caplog.at_level(logging.WARNING):
        result = task.score_prediction_file(predictions)
    assert result["missing_ids"] == ["q2"]
    assert result["exact_match"] == pytest.approx(50.0)
    assert "no prediction for 1 of 2 questions (e.g. q2)" in caplog.text
    predictions.write_text(json.dumps(["q1"]))
    with pytest.raises(DataError, match="maps question ids to answer strings"):
        task.score_prediction_file(predictions)
