"""``compresskit compare``: a table of the runs of an experiment and a Pareto plot, logged to MLflow.

Conventions read from each run (written by the pipeline and the benchmarks, see ``compresskit.measure``):

- task metrics: ``student/<metric>`` (e.g. ``student/accuracy``); the teacher's as ``teacher/<metric>``
  in the same run, or in a run tagged ``role=teacher`` (whose ``teacher/<metric>`` or, failing that,
  ``student/<metric>`` is used);
- retention of a metric = student / teacher × 100 %; the table shows the mean over the run's metrics;
- ``params``, ``compression_factor`` (else ``teacher/params / params``), ``latency_ms``;
- tags ``strategy`` and ``role`` (``teacher`` / ``student`` / ``comparison``); comparison runs (the
  ones this command logs its plot to) are left out of the comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compresskit import Command, ConfigError
from compresskit.plugin import (
    MEASUREMENT_METRICS,
    METRIC_COMPRESSION,
    METRIC_LATENCY_MS,
    METRIC_PARAMS,
    STUDENT_PREFIX,
    TEACHER_PREFIX,
    CommandContext,
    did_you_mean,
    format_table,
)

from .pareto import Point, plot_pareto
from .tracker import MlflowTracker, resolve_tracking_uri

ROLE_TAG = "role"


@dataclass(frozen=True)
class RunSummary:
    """One compared run: what the table, the JSON output and the plot show."""

    run_id: str
    run_name: str
    strategy: str
    role: str
    params: float | None
    compression_factor: float | None
    latency_ms: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    teacher_metrics: dict[str, float] = field(default_factory=dict)

    def retention(self, metric: str) -> float | None:
        """``student / teacher × 100`` for ``metric``, or ``None`` without a usable teacher value."""
        student, teacher = self.metrics.get(metric), self.teacher_metrics.get(metric)
        if student is None or not teacher:
            return None
        return 100.0 * student / teacher

    def mean_retention(self) -> float | None:
        values = [r for r in (self.retention(m) for m in self.metrics) if r is not None]
        return statistics.fmean(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        retention = {m: self.retention(m) for m in self.metrics}
        return {**asdict(self), "retention": retention, "mean_retention": self.mean_retention()}


def summarize_runs(runs: Iterable[Any]) -> list[RunSummary]:
    """Summaries of MLflow ``Run`` objects; teacher values come from the run or a ``role=teacher`` run."""
    runs = [run for run in runs if run.data.tags.get(ROLE_TAG) != "comparison"]
    reference: dict[str, float] = {}
    for run in runs:
        if run.data.tags.get(ROLE_TAG) == "teacher":
            own = _prefixed(run.data.metrics, STUDENT_PREFIX, task_only=True)
            reference.update({**own, **_prefixed(run.data.metrics, TEACHER_PREFIX, task_only=True)})
    summaries = [_summary(run, reference) for run in runs]
    if not any(s.role == "teacher" for s in summaries):
        summaries[:0] = _teacher_from_student_runs(runs)
    return summaries


def _teacher_from_student_runs(runs: list[Any]) -> list[RunSummary]:
    """A teacher row built from the ``teacher/*`` metrics of the first run that logged them."""
    for run in runs:
        teacher = _prefixed(run.data.metrics, TEACHER_PREFIX)
        metrics = _prefixed(run.data.metrics, TEACHER_PREFIX, task_only=True)
        if metrics:
            return [
                RunSummary(
                    run_id=run.info.run_id,
                    run_name="teacher",
                    strategy="teacher",
                    role="teacher",
                    params=teacher.get(METRIC_PARAMS),
                    compression_factor=1.0,
                    latency_ms=teacher.get(METRIC_LATENCY_MS),
                    metrics=metrics,
                    teacher_metrics=metrics,
                )
            ]
    return []


def _summary(run: Any, reference: Mapping[str, float]) -> RunSummary:
    metrics = run.data.metrics
    tags = run.data.tags
    role = tags.get(ROLE_TAG, "student")
    student = _prefixed(metrics, STUDENT_PREFIX, task_only=True)
    teacher = {**reference, **_prefixed(metrics, TEACHER_PREFIX, task_only=True)}
    if role == "teacher" and not student:
        student = _prefixed(metrics, TEACHER_PREFIX, task_only=True)
    params = metrics.get(METRIC_PARAMS)
    latency = metrics.get(METRIC_LATENCY_MS)
    if role == "teacher":
        params = params if params is not None else metrics.get(TEACHER_PREFIX + METRIC_PARAMS)
        latency = latency if latency is not None else metrics.get(TEACHER_PREFIX + METRIC_LATENCY_MS)
    factor = metrics.get(METRIC_COMPRESSION)
    teacher_params = metrics.get(TEACHER_PREFIX + METRIC_PARAMS)
    if factor is None and teacher_params and params:
        factor = teacher_params / params
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id[:8],
        strategy=tags.get("strategy", "teacher" if role == "teacher" else "?"),
        role=role,
        params=params,
        compression_factor=1.0 if role == "teacher" and factor is None else factor,
        latency_ms=latency,
        metrics=student,
        teacher_metrics=teacher,
    )


def _prefixed(metrics: Mapping[str, float], prefix: str, *, task_only: bool = False) -> dict[str, float]:
    """``{name: value}`` of the metrics logged as ``<prefix><name>``; ``task_only`` drops measurements."""
    found = {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
    return {k: v for k, v in found.items() if not (task_only and k in MEASUREMENT_METRICS)}


def comparison_table(summaries: list[RunSummary]) -> str:
    """Aligned table: run, strategy, params, CF, latency, each task metric, mean retention."""
    metric_names = sorted({m for s in summaries for m in s.metrics})
    columns = ["run", "strategy", "params", "CF", "latency ms", *metric_names, "retention %"]
    rows = [
        [
            s.run_name,
            s.strategy,
            _int_or_dash(s.params),
            _fmt(s.compression_factor, "{:.1f}x"),
            _fmt(s.latency_ms, "{:.2f}"),
            *(_fmt(s.metrics.get(m), "{:.4f}") for m in metric_names),
            _fmt(s.mean_retention(), "{:.1f}"),
        ]
        for s in summaries
    ]
    right = ["params", "CF", "latency ms", *metric_names, "retention %"]
    return format_table(columns, rows, align_right=right)


def pareto_panels(summaries: list[RunSummary], metric: str) -> list[tuple[str, list[Point]]]:
    """(x label, points) for metric vs parameters and metric vs latency; runs lacking a value are left out."""
    panels = []
    for label, cost in (("parameters", "params"), ("latency (ms)", "latency_ms")):
        points = [
            Point(s.run_name, float(getattr(s, cost)), s.metrics[metric], s.role == "teacher")
            for s in summaries
            if getattr(s, cost) is not None and metric in s.metrics
        ]
        panels.append((label, points))
    return panels


def choose_metric(summaries: list[RunSummary], requested: str | None) -> str | None:
    """``requested`` (checked), else ``accuracy`` when present, else the first metric name."""
    names = sorted({m for s in summaries for m in s.metrics})
    if requested is not None:
        if requested not in names:
            raise ConfigError(
                f"compare --metric {requested!r}: no run has student/{requested}."
                f"{did_you_mean(requested, names)} "
                f"Metrics found: {', '.join(names) or 'none'}."
            )
        return requested
    if "accuracy" in names:
        return "accuracy"
    return names[0] if names else None


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _int_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


class CompareCommand(Command):
    """Compare the runs of an MLflow experiment: table, JSON, Pareto plot logged back to MLflow."""

    name = "compare"
    help = "compare tracked runs: params, compression, latency, task metrics, retention; Pareto plot"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--experiment", default="compresskit", help="MLflow experiment name")
        parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite)")
        parser.add_argument("--metric", help="task metric for the Pareto plot (default: accuracy)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--output", default="pareto.png", help="where to write the Pareto plot PNG")
        parser.add_argument("--no-log", action="store_true", help="do not log a 'comparison' run to MLflow")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        uri = resolve_tracking_uri(args.tracking_uri)
        summaries = summarize_runs(fetch_runs(uri, args.experiment))
        if not summaries:
            print(f"compare: experiment {args.experiment!r} in {uri} has no runs to compare.")
            return 1
        metric = choose_metric(summaries, args.metric)
        plot = None
        if metric is not None:
            title = f"{args.experiment}: {metric}"
            plot = plot_pareto(pareto_panels(summaries, metric), metric, args.output, title)
        records = [s.to_dict() for s in summaries]
        if args.json:
            print(json.dumps({"experiment": args.experiment, "metric": metric, "runs": records}, indent=2))
        else:
            print(comparison_table(summaries))
            print(f"\nPareto plot ({metric or 'no task metric'}): {plot or 'not written'}")
        if not args.no_log:
            log_comparison(uri, args.experiment, records, plot, metric)
        return 0


def fetch_runs(tracking_uri: str, experiment: str) -> list[Any]:
    """Every run of ``experiment`` (oldest first); an unknown experiment lists the existing ones."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError(
            f"compare: no experiment {experiment!r} in {tracking_uri}.{did_you_mean(experiment, names)} "
            f"Experiments: {', '.join(sorted(names)) or 'none'}. Pass --experiment or --tracking-uri."
        )
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [found.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_comparison(
    uri: str, experiment: str, records: list[dict[str, Any]], plot: Path | None, metric: str | None
) -> str | None:
    """Log the plot and the JSON table as artifacts of a new run tagged ``role=comparison``."""
    import tempfile

    tracker = MlflowTracker({"tracking_uri": uri, "experiment": experiment})
    run_id = tracker.start_run("comparison", tags={ROLE_TAG: "comparison"})
    tracker.log_params({"compared_runs": len(records), "metric": metric or "none"})
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "comparison.json"
        table.write_text(json.dumps(records, indent=2))
        tracker.log_artifact(table, "comparison")
        if plot is not None:
            tracker.log_artifact(plot, "comparison")
        tracker.end_run()
    return run_id
