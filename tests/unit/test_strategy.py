"""Strategy ↔ config mapping: 1:1, round trip, composed strategies written the same in Python and TOML."""

from __future__ import annotations

import tomllib

import pytest

from compresskit.config import dumps_toml
from compresskit.errors import ConfigError
from compresskit.strategy import DecomposeStep, DistillStep, ModelSpec, Strategy, TaskSpec

COMPOSED = {
    "name": "composed",
    "seed": 7,
    "model": {"teacher": "default", "student_init": "pretrained"},
    "task": {"name": "glue", "options": {"task": "sst2", "train_limit": 64}},
    "finetune": {"max_length": 32, "training": {"learning_rate": 5e-5, "num_epochs": 1.0}},
    "steps": [
        {
            "kind": "decompose",
            "groups": [
                {
                    "name": "attention",
                    "types": ["Linear"],
                    "names": "re:.*attention.*",
                    "decomposition": "kronecker",
                    "options": {"a_shape": [2, 2]},
                },
                {
                    "name": "ffn",
                    "types": ["Linear"],
                    "names": ["intermediate.dense", "output.dense"],
                    "decomposition": "low_rank",
                    "options": {"rank": 8},
                },
            ],
        },
        {
            "kind": "distill",
            "distiller": "two_stage_kd",
            "options": {"stage2": {"training": {"learning_rate": 1e-4}}},
        },
        {"kind": "decompose", "decomposition": "low_rank", "groups": [{"name": "more", "names": ["query"]}]},
        {"kind": "distill", "distiller": "logits_kd"},
    ],
    "tracking": {"tracker": "none"},
}


def test_from_dict_builds_typed_steps_in_order() -> None:
    strategy = Strategy.from_dict(COMPOSED)
    kinds = [type(step) for step in strategy.steps]
    assert kinds == [DecomposeStep, DistillStep, DecomposeStep, DistillStep]
    assert strategy.steps[0].groups[1]["decomposition"] == "low_rank"
    assert strategy.model.student_init == "pretrained"
    assert strategy.task.options["train_limit"] == 64


def test_round_trip_through_dict_and_toml() -> None:
    strategy = Strategy.from_dict(COMPOSED)
    assert Strategy.from_dict(strategy.to_dict()) == strategy
    assert Strategy.from_dict(tomllib.loads(dumps_toml(strategy.to_dict()))) == strategy


def test_python_objects_equal_the_file_form() -> None:
    built = Strategy(
        name="small",
        model=ModelSpec(teacher="default"),
        task=TaskSpec(name="glue", options={"task": "sst2"}),
        steps=(DecomposeStep(preset="kroneckerbert21"), DistillStep(distiller="two_stage_kd")),
    )
    text = """
name = "small"
[task]
name = "glue"
options = { task = "sst2" }
[[steps]]
kind = "decompose"
preset = "kroneckerbert21"
[[steps]]
kind = "distill"
distiller = "two_stage_kd"
"""
    assert Strategy.from_dict(tomllib.loads(text)) == built


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"name": "x", "modle": {}}, r"modle: unknown key\. Did you mean 'model'"),
        ({"name": "x", "model": {"techer": "a"}}, r"model\.techer: unknown option\. Did you mean 'teacher'"),
        (
            {"name": "x", "steps": [{"kind": "distill", "distiler": "a"}]},
            r"steps\[0\]\.distiler: unknown option",
        ),
        (
            {"name": "x", "steps": [{"kind": "decompse"}]},
            r"steps\[0\]\.kind: expected one of .*Did you mean 'decompose'",
        ),
        ({"name": "x", "seed": "one"}, r"^seed: expected int"),
        ({"seed": 1}, r"missing the top-level `name"),
        ({"name": "x", "device": "tpu"}, r"device: expected one of 'auto', 'cpu', 'cuda'"),
    ],
)
def test_schema_errors_name_the_dotted_path(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        Strategy.from_dict(data)


def test_fingerprint_depends_only_on_named_parts() -> None:
    base = Strategy.from_dict(COMPOSED)
    other = Strategy.from_dict({**COMPOSED, "tracking": {"tracker": "mlflow"}})
    assert base.fingerprint("model", "task") == other.fingerprint("model", "task")
    assert base.fingerprint() != other.fingerprint()
