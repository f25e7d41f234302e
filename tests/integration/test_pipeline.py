"""The end-to-end pipeline on a tiny BERT: finetune → decompose → distil → evaluate → save → measure → track,
and resume after an interruption at a stage boundary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from compresskit.errors import CheckpointError, ConfigError
from compresskit.pipeline import Pipeline
from compresskit.strategy import Strategy

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny pre-trained-style BERT (hidden 32, FFN 37, 2 layers, vocab 99) with a matching tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-teacher")
    words: Counter[str] = Counter()
    for line in (data_dir / "glue-sample" / "SST-2" / "train.tsv").read_text().splitlines()[1:]:
        words.update(line.split("\t")[0].lower().split())
    vocab = SPECIALS + [w for w, _ in words.most_common(99 - len(SPECIALS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
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


def tiny_strategy(teacher: Path, data_dir: Path, **extra: object) -> Strategy:
    glue = {"task": "sst2", "data_dir": str(data_dir / "glue-sample")}
    training = {"batch_size": 16, "num_epochs": 1.0, "learning_rate": 1e-3, "log_every": 1}
    return Strategy.from_dict(
        {
            "name": "tiny",
            "device": "cpu",
            "model": {"teacher": str(teacher)},
            "task": {"name": "glue", "options": glue},
            "finetune": {"max_length": 32, "training": training},
            "steps": [
                {
                    "kind": "decompose",
                    "groups": [
                        {
                            "name": "ffn",
                            "types": ["Linear"],
                            "names": ["intermediate.dense", "output.dense"],
                            "exclude": "re:.*attention.*" if False else [],
                            "decomposition": "low_rank",
                            "options": {"rank": 4},
                        },
                    ],
                },
                {"kind": "distill", "distiller": "logits_kd", "options": {"training": training}},
            ],
            "evaluation": {"batch_size": 32},
            "measure": {"seq_len": 16, "repeats": 2, "warmup": 1},
            "tracking": {"tracker": "mlflow", "experiment": "tiny"},
            **extra,
        }
    )


class Interrupt(Exception):
    pass


def test_full_run_then_resume_skips_completed_stages(
    tiny_teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    strategy = tiny_strategy(tiny_teacher, data_dir)
    run_dir = tmp_path / "run"

    def stop_after_decompose(key: str) -> None:
        if key == "steps[0]:decompose":
            raise Interrupt

    with pytest.raises(Interrupt):
        Pipeline(strategy, output_dir=run_dir, progress=False, on_stage_end=stop_after_decompose).run()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["order"] == ["teacher", "steps[0]:decompose"]
    first_marks = {k: v["finished_at"] for k, v in state["stages"].items()}
    decomposed_weights = (
        (run_dir / "steps" / "00-decompose" / "model" / "model.safetensors").stat().st_mtime_ns
    )

    seen: list[str] = []
    result = Pipeline(strategy, output_dir=run_dir, progress=False, on_stage_end=seen.append).run()
    assert seen == ["steps[1]:distill", "evaluate", "save", "measure"]
    state = json.loads((run_dir / "state.json").read_text())
    for key, mark in first_marks.items():
        assert state["stages"][key]["finished_at"] == mark
    assert (
        run_dir / "steps" / "00-decompose" / "model" / "model.safetensors"
    ).stat().st_mtime_ns == decomposed_weights

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == result.summary
    assert 0.0 <= summary["student"]["metrics"]["accuracy"] <= 1.0
    assert summary["student"]["params"] < summary["teacher"]["params"]
    assert summary["student"]["compression_factor"] > 1.0
    assert summary["student"]["flops"] < summary["teacher"]["flops"]
    assert summary["student"]["size_mb"] < summary["teacher"]["size_mb"]
    assert "mlflow ui --backend-store-uri" in result.table

    from compresskit.saving import load

    reloaded = load(result.model_dir)
    assert sum(p.numel() for p in reloaded.parameters()) == summary["student"]["params"]

    import mlflow

    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.metrics["student/accuracy"] == pytest.approx(summary["student"]["metrics"]["accuracy"])
    assert run.data.params["steps.0.groups.0.decomposition"] == "low_rank"
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.note.content"].startswith("**tiny**")  # the strategy describes the run
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.user"]
    assert run.outputs.model_outputs  # the student is the run's MLflow model
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "summary")}
    assert artifacts == {"summary/summary.txt", "summary/pareto.png"}
    served = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    import pandas as pd

    predicted = served.predict(pd.DataFrame({"text": ["a gorgeous , witty film", "a dull mess"]}))
    assert set(predicted["label"]) <= {"negative", "positive"} and len(predicted) == 2

    again: list[str] = []
    Pipeline(strategy, output_dir=run_dir, progress=False, on_stage_end=again.append).run()
    assert again == []  # everything was complete: nothing recomputed
    check_folders_usable_on_their_own(run_dir, summary, data_dir / "glue-sample")


def check_folders_usable_on_their_own(run_dir: Path, summary: dict, glue_dir: Path) -> None:
    """The run's model folders evaluate, by themselves, to the metrics the run printed."""
    import contextlib
    import io

    from transformers import pipeline

    from compresskit.cli import main as cli_main

    assert not list(run_dir.rglob("checkpoints")), "finished stages keep no training checkpoints"
    model_dir = run_dir / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (model_dir / "tokenizer.json").is_file()
    card = (model_dir / "README.md").read_text()
    assert "from_pretrained" in card and "import compresskit" in card
    assert f"{summary['student']['metrics']['accuracy']:.4f}" in card
    for role, folder in (("student", model_dir), ("teacher", run_dir / "teacher" / "model")):
        argv = ["evaluate", "--model", str(folder), "--task", "glue", "--task-option", "task=sst2"]
        argv += ["--task-option", f"data_dir={json.dumps(str(glue_dir))}", "--batch-size", "32", "--json"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert cli_main(argv) == 0
        assert json.loads(printed.getvalue())["accuracy"] == summary[role]["metrics"]["accuracy"], role
    predicted = pipeline("text-classification", model=str(model_dir))("a gorgeous , witty film")
    assert predicted[0]["label"] in {"negative", "positive"}


def test_changed_strategy_in_same_run_dir_is_refused(
    tiny_teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"

    def stop(key: str) -> None:
        raise Interrupt

    strategy = tiny_strategy(tiny_teacher, data_dir)
    with pytest.raises(Interrupt):
        Pipeline(strategy, output_dir=run_dir, progress=False, on_stage_end=stop).run()
    changed = tiny_strategy(tiny_teacher, data_dir, seed=3)
    with pytest.raises(CheckpointError, match=r"different strategy.*--restart"):
        Pipeline(changed, output_dir=run_dir, progress=False).run()


def test_bad_input_fails_before_training(tiny_teacher: Path, data_dir: Path, tmp_path: Path) -> None:
    strategy = tiny_strategy(tiny_teacher, data_dir)
    data = strategy.to_dict()
    data["model"]["teacher"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"model\.teacher: .*does not exist"):
        Pipeline(Strategy.from_dict(data), output_dir=tmp_path / "a").run()
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    data["model"]["teacher"] = str(not_a_model)
    with pytest.raises(ConfigError, match="not a Hugging Face Transformer"):
        Pipeline(Strategy.from_dict(data), output_dir=tmp_path / "b").run()
    data = strategy.to_dict()
    data["steps"][0]["groups"][0]["names"] = ["intermediat.dense"]
    with pytest.raises(Exception, match="intermediat"):
        Pipeline(Strategy.from_dict(data), output_dir=tmp_path / "c").run()
    assert not (tmp_path / "c" / "state.json").exists()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            Pipeline(strategy, output_dir=tmp_path / "d", device="cuda").run()


def test_chained_steps_decompose_distil_decompose_distil(
    tiny_teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    base = tiny_strategy(tiny_teacher, data_dir).to_dict()
    first_decompose, distil = base["steps"]
    attention = {
        "name": "attention",
        "types": ["Linear"],
        "names": ["query", "key", "value"],
        "decomposition": "kronecker",
        "options": {"b_shape": [2, 2]},
    }
    base["steps"] = [first_decompose, distil, {"kind": "decompose", "groups": [attention]}, distil]
    base["tracking"] = {"tracker": "none"}
    result = Pipeline(Strategy.from_dict(base), output_dir=tmp_path / "run", progress=False).run()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [k for k in state["order"] if k.startswith("steps")] == [
        "steps[0]:decompose",
        "steps[1]:distill",
        "steps[2]:decompose",
        "steps[3]:distill",
    ]
    from compresskit.saving import load

    student = load(result.model_dir)
    kinds = {
        type(m).__name__
        for name, m in student.named_modules()
        if name.endswith(("query", "intermediate.dense"))
    }
    assert "Linear" not in kinds and len(kinds) == 2  # both steps' replacements survive save/load
    assert result.summary["student"]["params"] < result.summary["teacher"]["params"]


def test_a_saved_student_starts_another_task_with_that_tasks_head(
    tiny_teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    """General KD once, task KD per task: a student saved by an SST-2 run starts an STS-B (regression) run."""
    first = tiny_strategy(tiny_teacher, data_dir, tracking={"tracker": "none"})
    general = Pipeline(first, output_dir=tmp_path / "general", progress=False).run()
    data = tiny_strategy(tiny_teacher, data_dir, tracking={"tracker": "none"}).to_dict()
    data["task"]["options"]["task"] = "stsb"
    data["model"]["student"] = str(general.model_dir)
    data["steps"] = [data["steps"][1]]  # distil only: the student is already compressed
    result = Pipeline(Strategy.from_dict(data), output_dir=tmp_path / "stsb", progress=False).run()

    from compresskit.saving import load

    student = load(result.model_dir)
    assert student.config.problem_type == "regression" and student.classifier.out_features == 1
    started_from = load(general.model_dir)
    kinds = {type(m).__name__ for n, m in student.named_modules() if n.endswith("intermediate.dense")}
    assert kinds == {type(started_from.bert.encoder.layer[0].intermediate.dense).__name__} != {"Linear"}
    assert "pearson" in result.summary["student"]["metrics"]
    assert result.summary["student"]["params"] < result.summary["teacher"]["params"]
    # the compressed modules' FLOPs come from the student's own plan, not from this run's steps
    saved = [run.summary["teacher"]["flops"] - run.summary["student"]["flops"] for run in (general, result)]
    assert saved[0] == saved[1] > 0

    data["model"]["student"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"model\.student: .*not a saved model folder"):
        Pipeline(Strategy.from_dict(data), output_dir=tmp_path / "bad", progress=False).run()


def test_finetuned_teacher_default_is_resolved_like_the_preflight(tiny_teacher: Path, data_dir: Path) -> None:
    from compresskit.defaults import default_teacher_path

    strategy = tiny_strategy(
        tiny_teacher, data_dir, model={"teacher": "default", "finetuned_teacher": "default"}
    )
    teacher = Pipeline(strategy)._teacher(None, finetunes=True)  # type: ignore[arg-type]
    assert teacher == {"path": str(default_teacher_path()), "finetuned_here": False}


def test_no_teacher_finetuning_when_no_stage_learns_from_the_finetuned_teacher(
    tiny_teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    training = {"batch_size": 16, "max_steps": 2, "learning_rate": 1e-3}
    general = {"teacher": "pretrained", "losses": {"hidden_mse": 1.0}, "training": training}
    strategy = tiny_strategy(
        tiny_teacher, data_dir, tracking={"tracker": "none"}, measure={"seq_len": 8, "repeats": 1}
    )
    steps = [
        strategy.to_dict()["steps"][0],
        {"kind": "distill", "distiller": "intermediate_kd", "options": general},
    ]
    model = {"teacher": str(tiny_teacher), "student_init": "pretrained"}  # as general KD starts
    strategy = Strategy.from_dict({**strategy.to_dict(), "model": model, "steps": steps})
    messages: list[str] = []
    result = Pipeline(strategy, output_dir=tmp_path / "run", progress=False, echo=messages.append).run()

    state = json.loads((tmp_path / "run" / "state.json").read_text())
    teacher = state["stages"]["teacher"]["result"]
    assert teacher == {"path": str(tiny_teacher), "finetuned_here": False}
    assert not (tmp_path / "run" / "teacher").exists()
    assert any("not fine-tuned" in m for m in messages)
    assert result.summary["teacher"]["finetuned_here"] is False

    # the same strategy with task KD needs the fine-tuned teacher: it fine-tunes (another fingerprint)
    task_kd = {**general, "teacher": "finetuned"}
    steps[1] = {"kind": "distill", "distiller": "intermediate_kd", "options": task_kd}
    again = Strategy.from_dict({**strategy.to_dict(), "steps": steps})
    Pipeline(again, output_dir=tmp_path / "run2", progress=False, echo=messages.append).run()
    state = json.loads((tmp_path / "run2" / "state.json").read_text())
    assert state["stages"]["teacher"]["result"]["finetuned_here"] is True


def test_compress_of_a_model_object_with_restart_keeps_its_teacher_and_returns_the_student(
    tiny_teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    """``compress(model, ..., restart=True)`` saves the model into the run folder, which ``restart`` then
    empties: the saved teacher must survive, and the result carries the final student."""
    from transformers import AutoModelForSequenceClassification

    import compresskit

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher, num_labels=2)
    strategy = tiny_strategy(tiny_teacher, data_dir, tracking={"tracker": "none"})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stale.txt").write_text("from an earlier run")
    result = compresskit.compress(model, strategy, output_dir=tmp_path / "run", restart=True, progress=False)

    assert not (tmp_path / "run" / "stale.txt").exists()  # restart did empty the folder
    assert (tmp_path / "run" / "input_model" / "config.json").is_file()
    assert isinstance(result.student, torch.nn.Module)
    saved = compresskit.load(result.model_dir).state_dict()
    student = result.student.state_dict()
    assert sorted(saved) == sorted(student)
    assert all(torch.equal(saved[name], student[name]) for name in saved)
