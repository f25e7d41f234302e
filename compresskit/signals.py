"""SIGTERM handled like Ctrl-C: the run stops cleanly, marks its tracked run and keeps its checkpoints.

Batch schedulers, ``docker stop`` and ``kill`` send SIGTERM. Python's default for it ends the process
at once, with no ``finally`` block run: the tracked run stayed ``RUNNING`` and nothing said why the run
stopped. :func:`terminate_as_interrupt` turns SIGTERM into :class:`~compresskit.errors.Terminated`, a
:class:`KeyboardInterrupt`, so every clean-up written for Ctrl-C runs for it too; the command line then
exits with 143 (128 + SIGTERM), Ctrl-C with 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from compresskit.errors import Terminated


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the body runs, SIGTERM raises :class:`Terminated`; the previous handler is put back after.

    Does nothing outside the main thread (Python delivers signals to the main thread only) or when
    another handler than the default is installed (an embedding application keeps its own).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None, _raise_terminated):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
