"""A run survives what happens to long jobs: kills, SIGTERM, a full disk, a second run, a shared store.

* tracking continuity: one MLflow run per run folder — killed (SIGKILL), then stopped by SIGTERM (exit
  143, the run ``KILLED``), then restarted, the store holds one run, ``FINISHED``, with
  ``compresskit.attempts = 3``; a failed or interrupted run is marked ``FAILED`` / ``KILLED``, then
  continued by the rerun; re-running a finished folder adds nothing; a SIGKILLed holder leaves no lock;
* three processes opening a fresh sqlite store at once all get a tracked run;
* the "open the MLflow UI" hint appears only for a tracked run;
* a full disk while checkpointing: exit 6, no ``.tmp`` left, the previous checkpoint intact, and the
  same command resumes once there is room.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from catalogue import Entry, normalise, record
from tiny_pipeline import make_tiny_teacher, tiny_strategy_dict

from compresskit.config import dumps_toml
from compresskit.pipeline import Pipeline
from compresskit.strategy import Strategy

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("safety") / "teacher", data_dir)


def tracked(teacher: Path, data_dir: Path, store: Path, **finetune: Any) -> dict[str, Any]:
    strategy = tiny_strategy_dict(teacher, data_dir)
    strategy["tracking"] = {"tracker": "mlflow", "experiment": "safety", "tracking_uri": f"sqlite:///{store}"}
    strategy["finetune"]["training"].update(finetune)
    return strategy


def runs_of(store: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("safety")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


#: stderr log of each child process started by :func:`start_cli`, by process id.
LOGS: dict[int, Path] = {}


def start_cli(config: Path, out: Path, *extra: str, preamble: str = "") -> subprocess.Popen[str]:
    """``compresskit run`` in a child process (``preamble``: Python run first, e.g. a fault to inject).

    Its stderr goes to a file (a pipe nobody reads while the test waits could fill up and block it);
    :func:`finish` waits for the process and returns that text.
    """
    code = f"{preamble}\nimport sys\nfrom compresskit.cli import main\nsys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "run", str(config), "--output", str(out), "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    log = config.with_name(f"stderr-{time.monotonic_ns()}.txt")
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=handle, text=True, env=env)
    LOGS[process.pid] = log
    return process


def finish(process: subprocess.Popen[str], timeout: float = 600) -> str:
    process.wait(timeout=timeout)
    return LOGS.pop(process.pid).read_text()


# --------------------------------------------------------------------------- tracking continuity


def wait_for_checkpoint_after(root: Path, previous: str | None, timeout: float = 300) -> str:
    """Wait until the ``latest`` pointer under ``root`` names a checkpoint other than ``previous``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pointer = root / "latest"
        name = pointer.read_text().strip() if pointer.is_file() else None
        if name and name != previous:
            return name
        time.sleep(0.05)
    raise AssertionError(f"no new checkpoint under {root} within {timeout} s")


def test_killed_then_terminated_then_restarted_is_one_finished_run(
    teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "mlflow.db"
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(tracked(teacher, data_dir, store, max_steps=150, checkpoint_every=10)))
    out = tmp_path / "run"
    checkpoints = out / "teacher" / "work" / "checkpoints"

    process = start_cli(config, out)
    first = wait_for_checkpoint_after(checkpoints, None)
    process.send_signal(signal.SIGKILL)
    finish(process, timeout=60)
    assert [run.info.status for run in runs_of(store)] == ["RUNNING"]  # SIGKILL cannot be caught

    process = start_cli(config, out)  # the lock died with its holder; the same MLflow run continues
    wait_for_checkpoint_after(checkpoints, first)
    process.send_signal(signal.SIGTERM)
    err = finish(process, timeout=120)
    message = normalise(err, (tmp_path, "<tmp>"))
    assert process.returncode == 143, err
    record(Entry("sigterm", "SIGTERM during a run (a batch scheduler's stop, docker stop, kill)",
                 "kill -TERM <pid of compresskit run tiny.toml>", 143, message))  # fmt: skip
    assert [run.info.status for run in runs_of(store)] == ["KILLED"]
    assert json.loads((out / "state.json").read_text())["run_status"] == "KILLED"

    strategy = Strategy.from_file(config)
    result = Pipeline(strategy, output_dir=out, progress=False).run()  # the same command, to the end
    runs = runs_of(store)
    assert [(run.info.run_id, run.info.status) for run in runs] == [(result.run_id, "FINISHED")]
    assert runs[0].data.tags["compresskit.attempts"] == "3"
    assert "mlflow ui --backend-store-uri" in result.table

    ended = runs[0].info.end_time
    again = Pipeline(strategy, output_dir=out, progress=False).run()  # a finished folder re-run
    runs = runs_of(store)
    assert len(runs) == 1 and runs[0].info.end_time == ended
    assert runs[0].data.tags["compresskit.attempts"] == "3"
    assert again.summary["student"]["metrics"] == result.summary["student"]["metrics"]


class Boom(Exception):
    pass


def test_failed_and_interrupted_runs_are_marked_then_continued(
    teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "mlflow.db"
    strategy = Strategy.from_dict(tracked(teacher, data_dir, store))
    out = tmp_path / "run"

    def fail(key: str) -> None:
        if key == "teacher":
            raise Boom

    def interrupt(key: str) -> None:
        if key == "steps[0]:decompose":
            raise KeyboardInterrupt

    with pytest.raises(Boom):
        Pipeline(strategy, output_dir=out, progress=False, on_stage_end=fail).run()
    assert [run.info.status for run in runs_of(store)] == ["FAILED"]
    with pytest.raises(KeyboardInterrupt):
        Pipeline(strategy, output_dir=out, progress=False, on_stage_end=interrupt).run()
    assert [run.info.status for run in runs_of(store)] == ["KILLED"]
    result = Pipeline(strategy, output_dir=out, progress=False).run()
    runs = runs_of(store)
    assert [(run.info.run_id, run.info.status) for run in runs] == [(result.run_id, "FINISHED")]
    assert json.loads((out / "state.json").read_text())["run_status"] == "FINISHED"


def test_concurrent_first_use_of_one_sqlite_store(tmp_path: Path) -> None:
    store = tmp_path / "fresh" / "mlflow.db"
    store.parent.mkdir()
    start = time.time() + 8  # after every child has imported MLflow
    script = (
        "import time\n"
        "from compresskit_plugins.mlflow_tracker import MlflowTracker\n"
        "import mlflow\n"
        f"while time.time() < {start}: time.sleep(0.005)\n"
        f"tracker = MlflowTracker({{'tracking_uri': 'sqlite:///{store}', 'experiment': 'safety'}})\n"
        "print(tracker.start_run('concurrent'))\n"
        "tracker.end_run()\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
        assert len(stdout.strip()) == 32, (stdout, stderr)  # a run id, not None (the journal)
    assert len(runs_of(store)) == 3


def test_ui_hint_only_when_the_run_was_tracked(teacher: Path, data_dir: Path, tmp_path: Path) -> None:
    strategy = tiny_strategy_dict(teacher, data_dir)
    unreachable = tmp_path / "no-such-folder" / "mlflow.db"
    strategy["tracking"] = {
        "tracker": "mlflow",
        "tracking_uri": f"sqlite:///{unreachable}",
        "options": {"fallback_dir": str(tmp_path / "journal")},
    }
    with pytest.warns(UserWarning, match="NOT TRACKED"):
        result = Pipeline(Strategy.from_dict(strategy), output_dir=tmp_path / "run", progress=False).run()
    assert result.run_id is None
    assert "mlflow ui" not in result.table and "MLflow run None" not in result.table


# --------------------------------------------------------------------------- signals and faults


FILL_DISK_AT_SECOND_CHECKPOINT = """
import resource, signal
import compresskit.checkpoint as checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
_write = checkpoint.write_checkpoint
_calls = []
def _filling(*args, **kwargs):
    _calls.append(1)
    if len(_calls) == 2:  # the disk fills up: no file may grow beyond 4 kB from now on
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    return _write(*args, **kwargs)
checkpoint.write_checkpoint = _filling
"""


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tiny.toml"
    strategy = tiny_strategy_dict(teacher, data_dir)
    strategy["finetune"]["training"].update(checkpoint_every=1)
    config.write_text(dumps_toml(strategy))
    out = tmp_path / "run"
    process = start_cli(config, out, preamble=FILL_DISK_AT_SECOND_CHECKPOINT)
    err = finish(process)
    message = normalise(err, (tmp_path, "<tmp>"))
    assert process.returncode == 6, err
    record(Entry("disk-full", "the disk fills up while a checkpoint is written",
                 "compresskit run tiny.toml  # no room for the second checkpoint", 6, message))  # fmt: skip
    root = out / "teacher" / "work" / "checkpoints"
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["checkpoint-00000001"]
    assert (root / "latest").read_text().strip() == "checkpoint-00000001"
    assert "checkpoint-00000001 is intact" in message
    resumed = Pipeline(Strategy.from_file(config), output_dir=out, progress=False).run()  # room again
    assert resumed.summary["student"]["metrics"]
