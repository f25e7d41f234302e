"""The README's Python example (examples/quickstart.py, pasted verbatim into the README) runs as written."""

from __future__ import annotations

import json
import os
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
