"""The ``compresskit`` command line: listing, errors without tracebacks, ``python -m``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compresskit.cli import main


def test_plugins_json_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"kind": "command", "name": "plugins", "plugin": "compresskit.builtin",
            "distribution": "compresskit", "version": "0.1.0"} in rows  # fmt: skip


def test_plugins_table_is_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--kind", "tracker"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["kind", "name", "plugin", "distribution", "version"]
    assert set(lines[1]) == {"-", " "}
    assert all(line.startswith("tracker") for line in lines[2:])


def test_unknown_kind_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--kind", "trackers"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("compresskit: error: unknown component kind 'trackers'")
    assert "Did you mean 'tracker'" in err


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compresskit", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "0.1.0"
