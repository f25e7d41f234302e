"""Config files: TOML reading, --set overrides with TOML value semantics, file:line in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from compresskit.config import apply_overrides, format_path, load_config, parse_key_path, parse_value
from compresskit.errors import ConfigError

CONFIG = """\
name = "demo"

[task]
name = "glue"
options = { task = "sst2" }

[[steps]]
kind = "decompose"
preset = "kroneckerbert21"

[[steps]]
kind = "distill"
distiller = "two_stage_kd"

[steps.options.stage2]
learning_rate = 5e-5
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(CONFIG)
    return path


def test_load_reads_the_file(config_file: Path) -> None:
    strategy = load_config(config_file)
    assert strategy.name == "demo"
    assert strategy.steps[1].options == {"stage2": {"learning_rate": 5e-5}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1e-4", 1e-4),
        ("3", 3),
        ("true", True),
        ("[2, 8]", [2, 8]),
        ('"x"', "x"),
        ("./my-bert", "./my-bert"),
        ("{ task = 'rte' }", {"task": "rte"}),
    ],
)
def test_values_have_toml_semantics(raw: str, expected: object) -> None:
    assert parse_value(raw) == expected


def test_key_paths_accept_indices_both_ways() -> None:
    assert parse_key_path("steps[1].options.stage2") == ["steps", 1, "options", "stage2"]
    assert parse_key_path("steps.1.options") == ["steps", 1, "options"]
    assert format_path(["steps", 1, "options"]) == "steps[1].options"
    with pytest.raises(ConfigError, match="malformed key path"):
        parse_key_path("steps..x")


def test_overrides_set_nested_values_and_create_tables(config_file: Path) -> None:
    strategy = load_config(
        config_file,
        ["steps[1].options.stage2.learning_rate=1e-4", "evaluation.limit=100", "model.teacher=./bert"],
    )
    assert strategy.steps[1].options["stage2"]["learning_rate"] == 1e-4
    assert strategy.evaluation.limit == 100
    assert strategy.model.teacher == "./bert"


def test_override_does_not_mutate_input() -> None:
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2"]) == {"a": {"b": 2}}
    assert data == {"a": {"b": 1}}


def test_override_errors(config_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"steps\[5\] does not exist \(2 items there\)"):
        load_config(config_file, ["steps[5].kind=distill"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(config_file, ["steps"])
    with pytest.raises(ConfigError, match=r"modle: unknown key.*from --set 'modle.teacher=x'"):
        load_config(config_file, ["modle.teacher=x"])


def test_unknown_key_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(CONFIG + "\n[evaluation]\nspilt = 'dev'\n")
    with pytest.raises(
        ConfigError, match=rf"evaluation\.spilt: unknown option\. Did you mean 'split'.*{path.name}:19"
    ):
        load_config(path)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML.*line 1"):
        load_config(bad)


def test_cli_run_reports_a_typo_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from compresskit.cli import main

    path = tmp_path / "typo.toml"
    path.write_text(CONFIG.replace('distiller = "two_stage_kd"', 'distiller = "two_stage_kd"\noptionz = {}'))
    assert main(["run", str(path), "--output", str(tmp_path / "run"), "--no-tracking"]) == 3
    err = capsys.readouterr().err
    assert "steps[1].optionz: unknown option. Did you mean 'options'?" in err
    assert f"{path.name}:" in err
    assert not (tmp_path / "run").exists()


def test_cli_run_reports_bad_component_options_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compresskit.cli import main

    path = tmp_path / "demo.toml"
    path.write_text(CONFIG.replace("[steps.options.stage2]", "[steps.options.stage2.training]"))
    missing = tmp_path / "no-model"  # if validation missed the typo, this still stops the run early
    args = ["--set", "steps[1].options.stage2.lrr=1", "--set", f"model.teacher='{missing}'"]
    assert main(["run", str(path), "--output", str(tmp_path / "run"), *args]) == 3
    assert "steps[1].options.stage2.lrr: unknown option" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
