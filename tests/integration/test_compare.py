"""``compresskit compare``: table, JSON, Pareto front and plot from runs in a temporary MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from compresskit_plugins.mlflow_tracker import MlflowTracker, Point, pareto_front

from compresskit.cli import main

#: name -> (role, strategy, metrics) of the runs logged into the store.
RUNS: dict[str, tuple[str, str, dict[str, float]]] = {
    "teacher": ("teacher", "teacher", {"teacher/accuracy": 0.90, "params": 1000, "latency_ms": 10.0}),
    "kb21": ("student", "kroneckerbert21", {"student/accuracy": 0.85, "params": 100, "latency_ms": 4.0}),
    "kb8": ("student", "kroneckerbert8", {"student/accuracy": 0.80, "params": 50, "latency_ms": 3.0}),
    "worse": ("student", "low_rank", {"student/accuracy": 0.70, "params": 200, "latency_ms": 5.0}),
}


def test_pareto_front_keeps_only_non_dominated_points() -> None:
    points = [
        Point("a", 10, 0.5),
        Point("b", 5, 0.6),  # dominates a
        Point("c", 20, 0.9),
        Point("d", 20, 0.8),  # same cost as c, worse
        Point("e", 1, 0.1),
        Point("f", 3, math.nan),
    ]
    assert pareto_front(points) == [4, 1, 2]
    assert pareto_front([]) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    for name, (role, strategy, metrics) in RUNS.items():
        tracker = MlflowTracker({"tracking_uri": uri, "experiment": "grid"})
        tracker.start_run(name, tags={"role": role, "strategy": strategy})
        tracker.log_metrics(metrics)
        tracker.end_run()
    return uri


def run_compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_plot_and_logged_comparison(store: str, tmp_path: Path, capsys: Any) -> None:
    plot = tmp_path / "pareto.png"
    code, out, _ = run_compare(capsys, "--experiment", "grid", "--tracking-uri", store, "--output", str(plot))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in RUNS}
    assert set(lines) == set(RUNS)
    assert lines["kb21"].split()[1:5] == ["kroneckerbert21", "100", "-", "4.00"]  # no CF was logged
    assert f"{100 * 0.85 / 0.90:.1f}" in lines["kb21"]  # retention vs the role=teacher run
    assert f"{100 * 0.70 / 0.90:.1f}" in lines["worse"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("grid")
    logged = client.search_runs([experiment.experiment_id], "tags.role = 'comparison'")
    assert len(logged) == 1
    files = {a.path for a in client.list_artifacts(logged[0].info.run_id, "comparison")}
    assert files == {"comparison/comparison.json", "comparison/pareto.png"}


def test_json_output_leaves_comparison_runs_out(store: str, tmp_path: Path, capsys: Any) -> None:
    code, out, _ = run_compare(
        capsys,
        "--experiment",
        "grid",
        "--tracking-uri",
        store,
        "--output",
        str(tmp_path / "p.png"),
        "--json",
        "--no-log",
    )
    assert code == 0
    report = json.loads(out)
    assert report["metric"] == "accuracy"
    by_name = {run["run_name"]: run for run in report["runs"]}
    assert set(by_name) == set(RUNS)  # the comparison run of the other test is not compared
    assert by_name["kb8"]["retention"]["accuracy"] == pytest.approx(100 * 0.80 / 0.90)
    assert by_name["teacher"]["metrics"] == {"accuracy": 0.90}
    assert by_name["kb21"]["params"] == 100


def test_teacher_row_from_teacher_metrics_in_student_runs(store: str, tmp_path: Path, capsys: Any) -> None:
    uri = store
    tracker = MlflowTracker({"tracking_uri": uri, "experiment": "pipeline"})
    tracker.start_run("kb21", tags={"strategy": "kroneckerbert21"})
    tracker.log_metrics(
        {
            "student/accuracy": 0.8,
            "teacher/accuracy": 0.9,
            "params": 10,
            "teacher/params": 40,
            "teacher/size_mb": 0.2,
            "teacher/flops": 99.0,
        }
    )
    tracker.end_run()
    code, out, _ = run_compare(
        capsys,
        "--experiment",
        "pipeline",
        "--tracking-uri",
        uri,
        "--json",
        "--no-log",
        "--output",
        str(tmp_path / "p.png"),
    )
    runs = {run["run_name"]: run for run in json.loads(out)["runs"]}
    assert code == 0 and set(runs) == {"teacher", "kb21"}
    assert runs["teacher"]["params"] == 40 and runs["teacher"]["metrics"] == {"accuracy": 0.9}
    assert runs["kb21"]["compression_factor"] == pytest.approx(4.0)


def test_unknown_experiment_and_metric_are_clear_errors(store: str, capsys: Any) -> None:
    code, _, err = run_compare(capsys, "--experiment", "gird", "--tracking-uri", store)
    assert code == 3 and "no experiment 'gird'" in err and "Did you mean 'grid'" in err
    code, _, err = run_compare(capsys, "--experiment", "grid", "--tracking-uri", store, "--metric", "acc")
    assert code == 3 and "Metrics found: accuracy" in err
