"""The README's Python example (examples/quickstart.py, pasted verbatim into the README) runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quickstart_example_runs(repo_root: Path, tmp_path: Path, minilm_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    completed = subprocess.run(
        [sys.executable, str(repo_root / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "student" in completed.stdout and "mlflow ui --backend-store-uri" in completed.stdout
    summary = json.loads((tmp_path / "runs" / "quickstart" / "summary.json").read_text())
    assert summary["student"]["params"] < summary["teacher"]["params"]
    assert 0.0 <= summary["student"]["metrics"]["accuracy"] <= 1.0
    state = json.loads((tmp_path / "runs" / "quickstart" / "state.json").read_text())
    assert state["order"][:3] == ["teacher", "steps[0]:decompose", "steps[1]:distill"]


def _python_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_every_readme_python_block_is_a_tested_example(repo_root: Path) -> None:
    blocks = _python_blocks((repo_root / "README.md").read_text())
    examples = {path.name: path.read_text() for path in (repo_root / "examples").glob("*.py")}
    assert blocks, "the README has no Python example"
    for block in blocks:
        assert any(text.endswith(block) for text in examples.values()), block[:200]


@pytest.mark.slow
def test_pieces_example_runs(repo_root: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(repo_root / "examples" / "pieces.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    ratio = re.search(r"compression ratio ([0-9.]+)x", completed.stdout)
    assert ratio is not None and float(ratio.group(1)) > 10, completed.stdout[-2000:]
    assert "reloaded: KroneckerLinear" in completed.stdout  # transformers rebuilt the compressed modules
    assert "'label': 'LABEL_" in completed.stdout  # pipeline() ran on the compressed folder
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory
