"""Distiller plugins on tiny BERTs: losses fall, mapping, projections, head copy, resume, bad input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from compresskit_plugins.distillers.data import PairedCollator
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, BertModel

from compresskit.distillation import LayerMapping
from compresskit.errors import CheckpointError, ConfigError, TrainingError
from compresskit.kd_engine import split_batch
from compresskit.registry import Registry

TRAIN = {
    "max_steps": 6,
    "learning_rate": 5e-3,
    "batch_size": 4,
    "progress": False,
    "log_every": 1,
    "warmup_ratio": 0.0,
}


def config(layers: int = 2, hidden: int = 32) -> BertConfig:
    return BertConfig(
        vocab_size=99,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=2,
        max_position_embeddings=32,
    )


def classifier(seed: int, **kwargs: Any) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(config(**kwargs))


def loader(n: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, 99, (8,), generator=g)
        mask = torch.ones(8, dtype=torch.long)
        mask[6:] = 0
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": int(ids[0] % 2)})
    return DataLoader(rows, batch_size=4, shuffle=False)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def first_last(result: dict[str, Any], term: str) -> tuple[float, float]:
    values = result["losses"][term]
    return values[0], values[-1]


def test_registered(registry: Registry) -> None:
    assert {"two_stage_kd", "logits_kd", "intermediate_kd"} <= set(registry.names("distiller"))


def test_layer_mapping_kinds_and_errors() -> None:
    assert LayerMapping.build("one_to_one", 2, 2).pairs == ((1, 1), (2, 2))
    assert LayerMapping.build("uniform", 2, 6).pairs == ((1, 3), (2, 6))
    assert LayerMapping.build([1, 3], 2, 4).pairs == ((1, 1), (2, 3))
    with pytest.raises(ConfigError, match=r"student 7, teacher 6.*layers 1\.\.6"):
        LayerMapping.build([[7, 6]], 6, 6, where="distill.mapping")
    with pytest.raises(ConfigError, match="one_to_one' needs equal depths"):
        LayerMapping.build("one_to_one", 1, 2)


def test_intermediate_kd_losses_fall(registry: Registry, tmp_path: Path) -> None:
    teacher = BertModel(config())
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    distiller = registry.create("distiller", "intermediate_kd", {"training": TRAIN, "teacher": "t"})
    result = distiller.distill(student, {"t": teacher}, {"train": loader()}, output_dir=tmp_path)
    for term in ("hidden_mse", "attention_score_mse", "embedding_mse"):
        first, last = first_last(result["train"], term)
        assert last < first, term


def test_shallower_narrower_student_gets_uniform_mapping_and_projection(
    registry: Registry, tmp_path: Path
) -> None:
    teacher = classifier(0, layers=2, hidden=32)
    student = classifier(1, layers=1, hidden=16)
    options = {"training": TRAIN, "losses": {"hidden_mse": 1.0, "logit_soft_ce": 1.0}}
    distiller = registry.create("distiller", "intermediate_kd", options)
    result = distiller.distill(student, {"finetuned": teacher}, {"train": loader()}, output_dir=tmp_path)
    first, last = first_last(result["train"], "hidden_mse")
    assert last < first


def test_logits_kd_matches_teacher(registry: Registry, tmp_path: Path) -> None:
    teacher, student = classifier(0), classifier(1)
    with torch.no_grad():  # a confident teacher, so that the KL starts well above zero
        teacher.classifier.bias.copy_(torch.tensor([3.0, -3.0]))
    options = {"training": {**TRAIN, "max_steps": 10}}
    result = registry.create("distiller", "logits_kd", options).distill(
        student, {"finetuned": teacher}, {"train": loader()}, output_dir=tmp_path
    )
    first, last = first_last(result["train"], "logit_kl")
    assert last < first


def test_two_stage_copies_head_and_runs_both_stages(registry: Registry, tmp_path: Path) -> None:
    pretrained = BertModel(config())
    finetuned = classifier(0)
    student = classifier(1)
    options = {
        "stage1": {"training": TRAIN},
        "stage2": {"training": {**TRAIN, "max_steps": 1, "learning_rate": 1e-9}},
    }
    distiller = registry.create("distiller", "two_stage_kd", options)
    result = distiller.distill(
        student,
        {"pretrained": pretrained, "finetuned": finetuned},
        {"stage1": loader(), "stage2": loader()},
        output_dir=tmp_path,
    )
    assert set(result) >= {"stage1", "stage2"}
    assert "classifier" in result["copied_from_teacher"]
    first, last = first_last(result["stage1"], "hidden_mse")
    assert last < first
    # with a negligible learning rate the copied head is still (almost) the teacher's
    torch.testing.assert_close(student.classifier.weight, finetuned.classifier.weight, atol=1e-5, rtol=0)
    assert "logit_soft_ce" in result["stage2"]["losses"] and "task" in result["stage2"]["losses"]
    assert student.config._attn_implementation != "compresskit_capture"  # restored after training


def test_loss_needing_a_missing_output_fails_before_training(registry: Registry, tmp_path: Path) -> None:
    distiller = registry.create(
        "distiller", "two_stage_kd", {"stage1": {"losses": {"logit_soft_ce": 1.0}, "training": TRAIN}}
    )
    teachers = {"pretrained": BertModel(config()), "finetuned": classifier(0)}
    with pytest.raises(ConfigError, match=r"logit_soft_ce.*logits of the teacher"):
        distiller.distill(
            classifier(1), teachers, {"stage1": loader(), "stage2": loader()}, output_dir=tmp_path
        )
    assert not (tmp_path / "stage1").exists()


def test_missing_teacher_and_bad_mapping_are_config_errors(registry: Registry, tmp_path: Path) -> None:
    distiller = registry.create("distiller", "two_stage_kd", {})
    with pytest.raises(ConfigError, match="no teacher named 'pretrained'"):
        distiller.distill(classifier(1), {"finetuned": classifier(0)}, {}, output_dir=tmp_path)
    bad = registry.create("distiller", "intermediate_kd", {"mapping": [[3, 1]], "training": TRAIN})
    with pytest.raises(ConfigError, match=r"intermediate_kd\.train\.mapping.*student 3"):
        bad.distill(classifier(1), {"finetuned": classifier(0)}, {"train": loader()}, output_dir=tmp_path)


def test_resume_with_another_strategy_is_refused(registry: Registry, tmp_path: Path) -> None:
    teacher = classifier(0)
    first = registry.create("distiller", "intermediate_kd", {"training": TRAIN})
    first.distill(classifier(1), {"finetuned": teacher}, {"train": loader()}, output_dir=tmp_path)
    other = registry.create(
        "distiller", "intermediate_kd", {"training": TRAIN, "losses": {"hidden_mse": 2.0}}
    )
    with pytest.raises(CheckpointError):
        other.distill(classifier(1), {"finetuned": teacher}, {"train": loader()}, output_dir=tmp_path)


def test_non_finite_loss_stops_with_training_error(registry: Registry, tmp_path: Path) -> None:
    teacher = classifier(0)
    with torch.no_grad():
        teacher.classifier.weight.fill_(float("nan"))
    distiller = registry.create("distiller", "logits_kd", {"training": TRAIN})
    with pytest.raises(TrainingError):
        distiller.distill(classifier(1), {"finetuned": teacher}, {"train": loader()}, output_dir=tmp_path)


def test_teacher_cache_is_hit_on_later_epochs(registry: Registry, tmp_path: Path) -> None:
    options = {"training": {**TRAIN, "max_steps": None, "num_epochs": 3}, "cache_teacher_outputs": True}
    result = registry.create("distiller", "intermediate_kd", options).distill(
        classifier(1), {"finetuned": classifier(0)}, {"train": loader(8)}, output_dir=tmp_path
    )
    assert result["train"]["teacher_cache"] == {"hits": 4, "misses": 2}


def test_paired_collator_gives_each_model_its_own_inputs(minilm_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    collate = PairedCollator(tokenizer, tokenizer, student_max_length=4, teacher_max_length=16)
    batch = collate(
        [
            {"sentence": "a rather long sentence with many words", "label": 1},
            {"sentence": "short", "label": 0},
        ]
    )
    student, teacher = split_batch(batch)
    assert student["input_ids"].shape == (2, 4) and teacher["input_ids"].shape[1] > 4
    assert batch["labels"].tolist() == [1, 0]


def test_distill_cli_on_a_saved_student(minilm_path: Path, tmp_path: Path, capsys: Any) -> None:
    import json

    from transformers import AutoTokenizer

    from compresskit.cli import main
    from compresskit.saving import save

    wide = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "num_labels": 2}  # fmt: skip
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(**wide))
    teacher.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path / "teacher")
    save(BertForSequenceClassification(BertConfig(**wide)), tmp_path / "student")
    status = main([
        "distill", "--student", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
        "--distiller", "logits_kd", "--options", '{"training": {"max_steps": 2, "progress": false}}',
        "--task-option", "task=sst2", "--task-option", "train_limit=16", "--task-option", "eval_limit=16",
        "--batch-size", "8", "--max-length", "16", "--output", str(tmp_path / "out"),
    ])  # fmt: skip
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["result"]["train"]["steps"] == 2
    assert 0.0 <= printed["dev"]["accuracy"] <= 1.0
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    assert (tmp_path / "out" / "model" / "tokenizer.json").is_file()  # usable on its own


def regressor(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(config().__class__(**{**config().to_dict(), "num_labels": 1}))


def regression_loader() -> DataLoader:
    rows = [{**row, "labels": float(row["labels"]) * 4.0} for row in loader().dataset]
    return DataLoader(rows, batch_size=4, shuffle=False)


def test_problem_type_of_reads_the_head() -> None:
    import compresskit

    assert compresskit.problem_type_of(regressor(0)) == "regression"
    assert compresskit.problem_type_of(classifier(0)) == "single_label_classification"
    assert compresskit.problem_type_of(BertModel(config())) is None


@pytest.mark.parametrize("distiller", ["two_stage_kd", "logits_kd"])
def test_default_logit_kd_of_a_regression_student_is_mse_and_trains(
    registry: Registry, tmp_path: Path, distiller: str
) -> None:
    teacher, student = regressor(0), regressor(1)
    with torch.no_grad():
        teacher.classifier.bias.fill_(2.5)  # the teacher's outputs differ clearly from the student's
    training = {**TRAIN, "max_steps": 8, "learning_rate": 1e-2}
    if distiller == "two_stage_kd":
        options: dict[str, Any] = {
            "skip_stage1": True,
            "copy_from_teacher": [],
            "stage2": {"training": training},
        }
        data = {"stage2": regression_loader()}
    else:
        options, data = {"training": training}, {"train": regression_loader()}
    result = registry.create("distiller", distiller, options).distill(
        student, {"finetuned": teacher}, data, output_dir=tmp_path
    )
    stage = result["stage2" if distiller == "two_stage_kd" else "train"]
    assert "logit_mse" in stage["losses"]
    assert not {"logit_soft_ce", "logit_kl"} & set(stage["losses"])
    first, last = first_last(stage, "logit_mse")
    assert first > 0.1 and last < first


def test_softmax_logit_loss_on_a_regression_student_fails_before_training(
    registry: Registry, tmp_path: Path
) -> None:
    options = {"training": TRAIN, "losses": {"logit_kl": 1.0}}
    with pytest.raises(ConfigError, match="'logit_kl' does not fit a regression model"):
        registry.create("distiller", "logits_kd", options).distill(
            regressor(1), {"finetuned": regressor(0)}, {"train": regression_loader()}, output_dir=tmp_path
        )
    assert not (tmp_path / "train").exists()


def test_distill_cli_names_each_datas_task() -> None:
    from compresskit.commands.distill import _data_tasks
    from compresskit.errors import UsageError

    sources = _data_tasks(["stage1=text", "stage2 = glue"], ["stage1:block_size=64", "stage2:task='sst2'"])
    assert sources == {"stage1": ("text", ["block_size=64"]), "stage2": ("glue", ["task='sst2'"])}
    with pytest.raises(UsageError, match="expected NAME=TASK"):
        _data_tasks(["stage1"], [])
    with pytest.raises(UsageError, match="a NAME given by --data"):
        _data_tasks(["stage1=text"], ["stage3:files=[]"])
