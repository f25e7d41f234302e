"""``compresskit.config_lines``: the line of every key of a TOML config, and locating a message."""

from __future__ import annotations

from pathlib import Path

from compresskit.config_lines import ConfigSource, config_path_in, key_lines, locate

TEXT = """\
name = "x"   # a comment with = and [brackets]
[model]
teacher = "a#b"

[[steps]]
kind = "decompose"
[[steps.groups]]
name = "ffn"
options = { rank = 4, inner = { deep = [1, 2] } }
overrides = [{ names = 'x', options = { rank = 96 } }]
[[steps.groups]]
name = "attn"
names = [
  "query",
  "key",
]

[[steps]]
kind = "distill"
[steps.options.stage2.training]
learning_rate = 1e-4
"quoted key" = 1
"""


def test_every_key_table_and_inline_value_has_its_line() -> None:
    lines = key_lines(TEXT)
    assert lines["name"] == 1
    assert lines["model.teacher"] == 3
    assert lines["steps[0]"] == 5
    assert lines["steps[0].groups[0].name"] == 8
    assert lines["steps[0].groups[0].options.rank"] == 9
    assert lines["steps[0].groups[0].options.inner.deep[1]"] == 9
    assert lines["steps[0].groups[0].overrides[0].options.rank"] == 10
    assert lines["steps[0].groups[1].name"] == 12
    assert lines["steps[0].groups[1].names"] == 13  # a value over several lines: its first line
    assert lines["steps[1].kind"] == 19
    assert lines["steps[1].options.stage2.training"] == 20
    assert lines["steps[1].options.stage2.training.learning_rate"] == 21
    assert lines["steps[1].options.stage2.training.quoted key"] == 22
    assert "steps[2]" not in lines


def test_the_path_a_message_names() -> None:
    assert config_path_in("steps[1].options.lr: unknown option.") == "steps[1].options.lr"
    assert (
        config_path_in("unknown loss 'x' (in steps[1].options.stage2.losses).")
        == "steps[1].options.stage2.losses"
    )
    assert config_path_in("seed: expected an integer") == "seed"
    assert config_path_in("task 'glue' has no split 'tset'") is None  # a word, not a path


def test_locate_names_the_line_the_parent_or_the_override(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text(TEXT)
    source = ConfigSource.read(file)
    message = "steps[1].options.stage2.training.learning_rate: expected a finite number, found inf."
    assert locate(message, source) == f"{message} ({file}:21)"
    nested = "steps[0].groups[1].options.rank: unknown option."  # no options table there: its group
    assert locate(nested, source) == f"{nested} ({file}:11)"
    overridden = ConfigSource.read(file, ["steps[1].options.stage2.training.learning_rate=inf"])
    assert locate(message, overridden).endswith(
        "(from --set 'steps[1].options.stage2.training.learning_rate=inf')"
    )
    assert locate(message, None) == message
    assert locate("no path in this message", source) == "no path in this message"
