"""The ``mlflow`` tracker: params, metrics over steps, artifacts and tags of a run, through MlflowClient.

Where runs go: ``tracking_uri`` option, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in
the working directory (an embedded store; ``mlflow ui`` in that directory shows it). A new experiment in
a sqlite store keeps its artifacts in ``mlartifacts/`` beside the database file.

An unreachable server never loses results. ``start_run`` probes an ``http(s)`` server's ``/health``
(``probe_timeout_s``) and checks that a sqlite file's folder exists. If the store is not usable:

- ``fail_if_unreachable = true``: :class:`TrackingUnavailableError` is raised from ``start_run``,
  i.e. before any training starts;
- otherwise (default) an :class:`UntrackedRunWarning` starting with ``NOT TRACKED`` is issued and every
  call is written to a JSON-lines journal in ``fallback_dir`` (see :mod:`.journal`, which can replay it
  later). The same happens if the store fails in the middle of a run.

What a run carries besides params and metrics: MLflow's standard tags (``mlflow.user``,
``mlflow.source.name`` / ``type``, ``mlflow.source.git.commit`` — from MLflow's own
``resolve_tags()``), the strategy as the run description (``mlflow.note.content``), the student as an
MLflow model (:meth:`MlflowTracker.log_model`: a pyfunc model with signature and input example, see
:mod:`.pyfunc_model`), and the run's summary table and Pareto plot as artifacts (``summary/``).

MLflow is imported lazily (it takes seconds), and only ``MlflowClient`` with explicit run ids is used,
never the fluent active-run state, so several trackers can run in one process.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresskit import CompressKitError, Tracker

from .journal import RunJournal
from .pareto import Point, plot_pareto
from .values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    chunks,
    default_tags,
    metric_floats,
    param_strings,
)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: The tag MLflow's UI shows as the run's description.
DESCRIPTION_TAG = "mlflow.note.content"
#: Artifacts logged under this artifact path (or below it) are the saved model (see ``log_models``).
MODEL_ARTIFACT_PATH = "model"
#: Tag counting the invocations that worked on one run (a resumed run counts up).
ATTEMPTS_TAG = "compresskit.attempts"
#: How long a process waits for another one setting up the same sqlite store.
STORE_LOCK_TIMEOUT_S = 300.0
#: MLflow error codes that mean "this value was refused", not "the store is gone".
_REFUSED_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"}


class TrackingUnavailableError(CompressKitError):
    """The tracking store cannot be reached and ``fail_if_unreachable`` is set."""


class UntrackedRunWarning(UserWarning):
    """A run (or the rest of it) is recorded in a local journal instead of the tracking store."""


@dataclass(frozen=True)
class MlflowOptions:
    """Options of the ``mlflow`` tracker (``[tracking]`` in a config file)."""

    tracking_uri: str | None = None
    experiment: str = "compresskit"
    run_name: str | None = None
    log_models: bool = True
    fail_if_unreachable: bool = False
    artifact_location: str | None = None
    fallback_dir: str = "compresskit-untracked"
    probe_timeout_s: float = 3.0


class MlflowTracker(Tracker):
    """Log runs to MLflow (a local sqlite store by default, or a server); see the module docstring."""

    name = "mlflow"
    Options = MlflowOptions
    options: MlflowOptions

    def __init__(self, options: Mapping[str, Any] | None = None, *, where: str = "") -> None:
        super().__init__(options, where=where)
        self._client: Any = None
        self.run_id: str | None = None
        self.journal: RunJournal | None = None
        #: The journal file of the last run that fell back to one (kept after ``end_run``).
        self.journal_path: Path | None = None
        self.tracking_uri = ""

    @property
    def tracked(self) -> bool:
        """True while calls go to MLflow (False once they go to the fallback journal)."""
        return self._client is not None

    def start_run(
        self, run_name: str, *, experiment: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """Open a run in ``experiment`` (default: the option); ``None`` when only the journal records it."""
        self.tracking_uri = resolve_tracking_uri(self.options.tracking_uri)
        name = self.options.run_name or run_name
        experiment_name = experiment or self.options.experiment
        all_tags = standard_tags(default_tags(tags))
        problem = probe_store(self.tracking_uri, self.options.probe_timeout_s)
        if problem is None:
            try:
                self._client, self.run_id = self._open_run(name, experiment_name, all_tags)
                return self.run_id
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if self.options.fail_if_unreachable:
            raise TrackingUnavailableError(
                f"tracking store {self.tracking_uri} is not usable: {problem}. Nothing was started. "
                "Start the server, fix --tracking-uri / MLFLOW_TRACKING_URI, or set "
                "fail_if_unreachable = false to record the run in a local journal instead."
            )
        self._start_journal(name, experiment_name, all_tags, problem)
        return None

    def resume_run(
        self,
        run_id: str,
        run_name: str,
        *,
        experiment: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """Continue run ``run_id`` (status back to RUNNING, ``compresskit.attempts`` counted up); when
        the store no longer has it, open a new run tagged ``compresskit.previous_run``."""
        self.tracking_uri = resolve_tracking_uri(self.options.tracking_uri)
        if probe_store(self.tracking_uri, self.options.probe_timeout_s) is None:
            try:
                self._client, self.run_id = self._reopen_run(run_id)
                return self.run_id
            except Exception:  # deleted, another store, unreachable: a new run says where it came from
                self._client, self.run_id = None, None
        return self.start_run(
            run_name, experiment=experiment, tags={**dict(tags or {}), "compresskit.previous_run": run_id}
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        strings = param_strings(params)
        if not strings:
            return
        self._send("params", {"params": strings}, lambda: self._log_params_batches(strings))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = metric_floats(metrics)
        if not values:
            return
        self._send(
            "metrics", {"metrics": values, "step": step}, lambda: self._log_metric_batches(values, step)
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        local = Path(path)
        if not self.options.log_models and _is_model_path(artifact_path):
            return
        if not local.exists():
            warnings.warn(f"mlflow tracker: artifact {local} does not exist; not logged.", stacklevel=2)
            return
        fields = {"path": str(local.resolve()), "artifact_path": artifact_path}
        self._send("artifact", fields, lambda: self._log_local(local, artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        strings = {key: str(value) for key, value in tags.items()}
        if strings:
            self._send("tags", {"tags": strings}, lambda: self._log_tags(strings))

    def set_description(self, text: str) -> None:
        """The run's description in the MLflow UI (the ``mlflow.note.content`` tag, Markdown)."""
        self.set_tags({DESCRIPTION_TAG: text})

    def log_model(self, model_dir: str | Path, *, input_example: list[dict[str, str]] | None = None) -> None:
        """Log the saved student as the run's MLflow model ``model`` (``runs:/<id>/model``).

        A sequence classifier becomes a pyfunc model (:class:`.pyfunc_model.CompressedTextClassifier`)
        with signature, input example and pip requirements: ``mlflow.pyfunc.load_model`` predicts with it
        and ``mlflow models serve`` serves it. Another architecture is logged as the folder's files.
        Skipped with ``log_models = false``.
        """
        if not self.options.log_models:
            return
        folder = Path(model_dir).resolve()
        fields = {"path": str(folder), "input_example": input_example}
        self._send("model", fields, lambda: self._log_model(folder, input_example))

    def log_summary(self, summary: Mapping[str, Any], table: str) -> None:
        """Log ``summary/summary.txt`` (the printed table) and ``summary/pareto.png`` with the run."""
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "summary"
            folder.mkdir()
            (folder / "summary.txt").write_text(table + "\n", encoding="utf-8")
            panels = summary_panels(summary)
            if panels:
                metric = str(summary.get("primary_metric", "metric"))
                title = f"{summary.get('strategy', '')}: {metric} vs size and speed"
                plot_pareto(panels, metric, folder / "pareto.png", title)
            self.log_artifact(folder, "summary")

    def end_run(self, status: str = "FINISHED") -> None:
        if self.run_id is None and self.journal is None:
            return
        self._send("end", {"status": status}, lambda: self._client.set_terminated(self.run_id, status))
        self._client, self.run_id, self.journal = None, None, None

    # -- MLflow calls -------------------------------------------------------------------------------

    def _open_run(self, run_name: str, experiment: str, tags: dict[str, str]) -> tuple[Any, str]:
        from mlflow import MlflowClient

        with store_setup_lock(self.tracking_uri):
            client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = _experiment_id(client, experiment, self._artifact_location())
            run = client.create_run(experiment_id, tags={**tags, ATTEMPTS_TAG: "1"}, run_name=run_name)
        return client, run.info.run_id

    def _reopen_run(self, run_id: str) -> tuple[Any, str]:
        from mlflow import MlflowClient

        with store_setup_lock(self.tracking_uri):
            client = MlflowClient(tracking_uri=self.tracking_uri)
            run = client.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            raise LookupError(f"run {run_id} is {run.info.lifecycle_stage}")
        attempts = int(run.data.tags.get(ATTEMPTS_TAG, "1") or 1) + 1
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, ATTEMPTS_TAG, str(attempts))
        return client, run_id

    def _artifact_location(self) -> str | None:
        if self.options.artifact_location:
            return self.options.artifact_location
        if self.tracking_uri.startswith("sqlite:///"):
            database = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return str((database.parent / "mlartifacts").resolve())
        return None

    def _log_params_batches(self, strings: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in strings.items()]
        for batch in chunks(items, MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=list(batch))

    def _log_metric_batches(self, values: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step or 0) for key, value in values.items()]
        for batch in chunks(items, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=list(batch))

    def _log_tags(self, strings: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, value) for key, value in strings.items()]
        for batch in chunks(items, MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=list(batch))

    def _log_model(self, folder: Path, input_example: list[dict[str, str]] | None) -> None:
        import json

        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or [""]
        if not str(architectures[0]).endswith("ForSequenceClassification"):
            warnings.warn(
                f"mlflow tracker: {architectures[0]} is not a sequence classifier; the model folder is "
                "logged as files under 'model' (no pyfunc flavor to serve it).",
                stacklevel=3,
            )
            self._log_local(folder, MODEL_ARTIFACT_PATH)
            return
        import tempfile

        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        from . import pyfunc_model

        # The model is created with this tracker's client, in the run's own experiment and linked to the
        # run (`runs:/<id>/model`); mlflow's Model.log would read the process-global tracking URI and
        # experiment instead (and setting those also rewrites MLFLOW_TRACKING_URI in os.environ).
        experiment_id = self._client.get_run(self.run_id).info.experiment_id
        logged = self._client.create_logged_model(
            experiment_id, name=MODEL_ARTIFACT_PATH, source_run_id=self.run_id
        )
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / MODEL_ARTIFACT_PATH
            try:
                pyfunc_model.save(local, folder, input_example, run_id=self.run_id, logged_model=logged)
            except Exception as exc:  # could not be packaged: the run goes on, tracked, without a model
                self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
                problem = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"mlflow tracker: the model was not logged: {problem}", stacklevel=3)
                return
            self._client.log_model_artifacts(logged.model_id, str(local))
        self._client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)

    def _log_local(self, local: Path, artifact_path: str | None) -> None:
        if local.is_dir():
            self._client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(local), artifact_path)

    # -- the fallback journal -----------------------------------------------------------------------

    def _send(self, event: str, fields: dict[str, Any], call: Callable[[], object]) -> None:
        """Run ``call`` against MLflow; on failure record the event in the journal instead."""
        if self._client is None:
            if self.journal is not None:
                self.journal.write(event, **fields)
            return
        try:
            call()
        except Exception as exc:
            if getattr(exc, "error_code", None) in _REFUSED_CODES:
                warnings.warn(f"mlflow tracker: MLflow refused {event}: {exc}", stacklevel=3)
                return
            self._switch_to_journal(f"{type(exc).__name__}: {exc}").write(event, **fields)

    def _start_journal(
        self, run_name: str, experiment: str, tags: dict[str, str], problem: str
    ) -> RunJournal:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{experiment}-{run_name}")
        journal = RunJournal(Path(self.options.fallback_dir).resolve() / f"{safe}-{stamp}.jsonl")
        journal.write("start", run_name=run_name, experiment=experiment, tags=tags, problem=problem)
        self.journal, self.journal_path = journal, journal.path
        warnings.warn(
            f"NOT TRACKED: tracking store {self.tracking_uri} is not usable ({problem}). Run "
            f"{run_name!r} is recorded in {journal.path} instead; results are kept and can be "
            "replayed into MLflow later (compresskit_plugins.mlflow_tracker.replay_journal).",
            UntrackedRunWarning,
            stacklevel=3,
        )
        return journal

    def _switch_to_journal(self, problem: str) -> RunJournal:
        lost_run = self.run_id
        self._client, self.run_id = None, None
        return self._start_journal(f"rest-of-{lost_run}", self.options.experiment, {}, problem)


@contextlib.contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """Serialise opening a local sqlite store across processes.

    The first use of a fresh ``mlflow.db`` creates and migrates its schema; two processes doing that at
    once fail (``duplicate column name: step``, ``table _alembic_tmp_tags already exists``). A file
    lock beside the database (``mlflow.db.lock``) makes the second wait until the first is done. Other
    stores (servers) need no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    with FileLock(str(database.with_name(database.name + ".lock")), timeout=STORE_LOCK_TIMEOUT_S):
        yield


def resolve_tracking_uri(explicit: str | None) -> str:
    """The option, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (cwd)."""
    import os

    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def probe_store(uri: str, timeout: float) -> str | None:
    """``None`` when the store looks usable, else why not (server not answering, missing folder)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # something answered: the server is up even if /health is not served
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"no answer from {uri}/health within {timeout:g} s: {reason}"
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            return f"the folder {folder} of the sqlite database does not exist"
    return None


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def standard_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` plus MLflow's standard run context tags (user, source name and type, git commit)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        resolved: dict[str, str] = resolve_tags(dict(tags))
        return resolved
    except Exception as exc:  # a context provider failing must not stop the run
        warnings.warn(f"mlflow tracker: MLflow's context tags are missing ({exc}).", stacklevel=2)
        return dict(tags)


def summary_panels(summary: Mapping[str, Any]) -> list[tuple[str, list[Point]]]:
    """Pareto panels (metric vs parameters, vs latency) of the run's teacher and student."""
    metric = summary.get("primary_metric")
    panels = []
    for label, key in (("parameters", "params"), ("latency (ms)", "latency_ms")):
        points = []
        for role in ("teacher", "student"):
            row = summary.get(role) or {}
            quality, cost = (row.get("metrics") or {}).get(metric), row.get(key)
            if isinstance(quality, int | float) and isinstance(cost, int | float):
                points.append(Point(role, float(cost), float(quality), role == "teacher"))
        if points:
            panels.append((label, points))
    return panels


def _is_model_path(artifact_path: str | None) -> bool:
    return bool(artifact_path) and str(artifact_path).split("/")[0] == MODEL_ARTIFACT_PATH
