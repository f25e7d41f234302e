"""Turning compresskit values into what MLflow accepts: flat string params, float metrics, run tags.

MLflow limits (3.x): a param value holds at most 6000 characters, a key at most 250, and one
``log_batch`` request at most 100 params/tags and 1000 metrics. Longer values are cut with a visible
note (the full resolved config and plan go in as artifacts); over-long keys keep their start and end.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import compresskit
from compresskit.plugin import flatten

MAX_VALUE_CHARS = 6000
MAX_KEY_CHARS = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

T = TypeVar("T")


def param_strings(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten nested mappings to dotted keys and render every value as a string MLflow will store.

    Sequences become JSON (``[4, 8]``), ``None`` becomes ``"None"``; over-long values end with
    ``"... [truncated: N chars]"`` and over-long keys are shortened with a hash so they stay unique.
    """
    flat = flatten(params)
    return {_short_key(key): _short_value(_render(value)) for key, value in flat.items()}


def metric_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Keep the numeric entries (bools excluded) of a flattened metrics mapping, as floats."""
    flat = flatten(metrics)
    return {
        _short_key(key): float(value)
        for key, value in flat.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def default_tags(extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``git_commit`` and ``compresskit_version``, then the caller's tags (strategy, teacher, task, ...)."""
    tags = {"git_commit": git_commit(), "compresskit_version": compresskit.__version__}
    tags.update({key: str(value) for key, value in (extra or {}).items()})
    return tags


def git_commit(folder: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``folder`` (the cwd by default), else "unknown"."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else "unknown"


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _short_value(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    note = f"... [truncated: {len(text)} chars]"
    return text[: MAX_VALUE_CHARS - len(note)] + note


def _short_key(key: str) -> str:
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    keep = (MAX_KEY_CHARS - len(digest) - 2) // 2
    return f"{key[:keep]}~{digest}~{key[-keep:]}"
