"""The fallback record of a run that MLflow could not take: one JSON object per line.

When the tracking server cannot be reached (at the start of a run, or later), the tracker writes every
call into a journal file instead, so no parameter, metric, tag or artifact path is lost.
:func:`replay_journal` sends a journal to a tracker once the server is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compresskit import DataError, Tracker


class RunJournal:
    """Append-only JSON-lines record of tracker calls (``start``, ``params``, ``metrics``, ...)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        """Append one event; the file and its folder are created on first use."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"event": event, "time": time.time(), **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """The events of a journal, in order; a malformed line is a :class:`DataError` naming file:line."""
    events = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON journal line ({exc.msg}).") from None
    return events


def replay_journal(path: str | Path, tracker: Tracker) -> str | None:
    """Send every event of the journal at ``path`` to ``tracker`` as one new run; return its id."""
    run_id = None
    for event in read_journal(path):
        kind = event.get("event")
        if kind == "start":
            run_id = tracker.start_run(
                event.get("run_name", "replayed"), experiment=event.get("experiment"), tags=event.get("tags")
            )
        elif kind == "params":
            tracker.log_params(_mapping(event, "params"))
        elif kind == "metrics":
            tracker.log_metrics(_mapping(event, "metrics"), step=event.get("step"))
        elif kind == "tags":
            tracker.set_tags(_mapping(event, "tags"))
        elif kind == "artifact" and Path(event["path"]).exists():
            tracker.log_artifact(event["path"], event.get("artifact_path"))
        elif kind == "model" and Path(event["path"]).exists():
            tracker.log_model(event["path"], input_example=event.get("input_example"))
        elif kind == "end":
            tracker.end_run(event.get("status", "FINISHED"))
    return run_id


def _mapping(event: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = event.get(key) or {}
    return dict(value) if isinstance(value, Mapping) else {}
