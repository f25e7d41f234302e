"""The Tracker base class: where runs log parameters, metrics, artifacts and tags.

The core only ever talks to this interface; the MLflow plugin implements it. :class:`NullTracker`
(name ``"none"``) records nothing and is used when tracking is switched off.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compresskit.component import Component


class Tracker(Component):
    """Base class of experiment trackers (registered through ``compresskit_register_trackers``).

    Lifecycle: :meth:`start_run` (or :meth:`resume_run`) → any number of ``log_*`` calls → :meth:`end_run`.
    Implementations must not raise from the ``log_*`` methods once a run has started: a tracking
    failure is reported, never allowed to lose the results of training.
    """

    def start_run(
        self, run_name: str, *, experiment: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """Open a run; return its id (``None`` if this tracker has no ids)."""
        return None

    def resume_run(
        self,
        run_id: str,
        run_name: str,
        *,
        experiment: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """Continue the run ``run_id`` that an earlier invocation in the same run folder opened (an
        interrupted or repeated run); return the id now in use.

        The pipeline keeps one tracked run per run folder through this. The default opens a new run:
        trackers that can reopen a run override it.
        """
        return self.start_run(run_name, experiment=experiment, tags=tags)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters (flat mapping; nested values are flattened by the caller)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record numeric metrics, at ``step`` when given."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Record a file or a directory."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Record string tags."""

    def set_description(self, text: str) -> None:
        """Describe the run (Markdown; e.g. the strategy it runs)."""

    def log_model(self, model_dir: str | Path, *, input_example: list[dict[str, str]] | None = None) -> None:
        """Record the saved model in ``model_dir`` as a model of the run (loadable and servable where
        the tracker supports it); ``input_example``: a few inputs as ``{"text": ..., "text_pair": ...}``."""

    def log_summary(self, summary: Mapping[str, Any], table: str) -> None:
        """Record the run's summary (``summary.json`` content) and its printed ``table`` with the run."""

    def end_run(self, status: str = "FINISHED") -> None:
        """Close the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""


class NullTracker(Tracker):
    """Tracking switched off: every call does nothing."""

    name = "none"


def flatten(mapping: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path, sep))
        else:
            flat[path] = value
    return flat
