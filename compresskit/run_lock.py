"""One process per run folder: an exclusive lock that names its holder.

Two runs writing into one run folder would overwrite each other's checkpoints and ``state.json``
(seen as ``Parent directory ... .tmp does not exist`` deep inside a save). :class:`RunLock` takes an
operating-system lock on ``<run>/.compresskit.lock`` (``filelock``: ``flock`` on POSIX, ``msvcrt`` on
Windows — released by the kernel when the holder dies, even by SIGKILL, so a crash leaves no stale
lock) and records who holds it in ``<run>/.compresskit.lock.json``: process id, host, user, start
time and command line. A second run is refused at once with a :class:`RunLockedError` naming them.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from compresskit.errors import RunLockedError, UsageError

LOCK_FILE = ".compresskit.lock"
HOLDER_FILE = ".compresskit.lock.json"
#: Files of the lock itself, kept when ``--restart`` empties the run folder.
LOCK_FILES = (LOCK_FILE, HOLDER_FILE)


class RunLock:
    """``with RunLock(run_dir):`` — hold the run folder for this process (creates the folder)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock: Any = None

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`RunLockedError` naming the holder (never waits)."""
        from filelock import FileLock, Timeout

        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UsageError(f"{self.run_dir} is a file; the output (run folder) must be a folder path.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunLockedError(self._busy_message()) from None
        self._lock = lock
        _write_holder(self.run_dir / HOLDER_FILE)

    def release(self) -> None:
        """Let the next run in (the holder file is removed first)."""
        if self._lock is None:
            return
        try:
            (self.run_dir / HOLDER_FILE).unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _busy_message(self) -> str:
        holder = read_holder(self.run_dir)
        who = describe_holder(holder) if holder else "another process (it has not written its details yet)"
        return (
            f"{self.run_dir} is in use by {who}. Two runs in one run folder would overwrite each other's "
            "checkpoints: wait for that run to finish (or stop it), or pass another --output folder."
        )


def read_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder details of ``run_dir``'s lock, or ``None``."""
    try:
        data = json.loads((run_dir / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict[str, Any]) -> str:
    """``"process 4242 (user ana on host gpu-3, started 2026-12-01 10:00:00): compresskit run x.toml"``."""
    command = " ".join(str(part) for part in holder.get("argv", [])) or "?"
    pid, user, host = (holder.get(key, "?") for key in ("pid", "user", "host"))
    return f"process {pid} (user {user} on host {host}, started {holder.get('started', '?')}): {command}"


def _write_holder(path: Path) -> None:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": user,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(holder), encoding="utf-8")
    os.replace(tmp, path)
