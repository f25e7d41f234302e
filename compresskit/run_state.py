"""The run directory's ``state.json``: which pipeline stages are complete, so a run resumes.

Each stage records a *fingerprint* (a hash of every part of the strategy it depends on: earlier stages
included) and a small JSON result (paths of what it saved, its metrics). On a rerun a stage whose
record exists with the same fingerprint is skipped and its result reused; a record with another
fingerprint means the strategy changed under a half-finished run, which is an error (start over with
``--restart`` or choose another ``--output``) rather than a silent mix of two strategies.

The file is replaced atomically (write a temporary file, fsync, ``os.replace``), so an interruption
leaves either the old or the new state, never a torn one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compresskit.errors import CheckpointError, StorageError

STATE_FILE = "state.json"
FORMAT_VERSION = 1


class RunState:
    """The completed stages of one run directory (read at start, written after every stage)."""

    def __init__(self, run_dir: Path, *, write: bool = True) -> None:
        """``write=False``: keep changes in memory only (the processes of a run other than the main one)."""
        self.run_dir = run_dir
        self.write = write
        self.path = run_dir / STATE_FILE
        self.data: dict[str, Any] = {"format": FORMAT_VERSION, "stages": {}, "order": []}
        if self.path.is_file():
            self.data = _read(self.path)

    @property
    def completed(self) -> list[str]:
        """Keys of the completed stages, in the order they finished."""
        return list(self.data.get("order", []))

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of a completed stage, or ``None``."""
        record = self.data["stages"].get(key)
        return dict(record) if record is not None else None

    def result(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        """The saved result of stage ``key`` if it completed with ``fingerprint``, else ``None``."""
        record = self.data["stages"].get(key)
        if record is None:
            return None
        if record["fingerprint"] != fingerprint:
            raise CheckpointError(
                f"{self.path}: stage {key!r} was completed by a different strategy (fingerprint "
                f"{record['fingerprint']} there, {fingerprint} now). Run with --restart to start this run "
                "directory over, or choose another --output directory to keep both."
            )
        return dict(record["result"])

    def complete(self, key: str, fingerprint: str, result: Mapping[str, Any], seconds: float) -> None:
        """Record stage ``key`` as done and write ``state.json`` atomically."""
        self.data["stages"][key] = {
            "fingerprint": fingerprint,
            "result": dict(result),
            "seconds": round(seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        order = [k for k in self.data.get("order", []) if k != key]
        self.data["order"] = [*order, key]
        self.save()

    def set(self, key: str, value: Any) -> None:
        """Store a run-level value (e.g. the tracker's run id) and save."""
        self.data[key] = value
        self.save()

    def save(self) -> None:
        if not self.write:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and ``os.replace``.

    If the write fails (a full disk), the temporary file is removed and ``path`` keeps its old content;
    the error is a :class:`StorageError` saying so.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(
            f"could not write {path} ({first_line}); its previous content is intact. Free disk space (or "
            "use another --output) and run the same command again."
        ) from exc


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is unreadable ({exc}); delete it or run with --restart to start the run over."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or "stages" not in data:
        raise CheckpointError(f"{path} is not a compresskit run state (format {FORMAT_VERSION}).")
    return data
