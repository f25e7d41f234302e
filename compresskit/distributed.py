"""Several processes of one run (``accelerate launch --num_processes N``): who writes, and when to wait.

Every process runs every training stage (data-parallel through the Trainer) and every step that
changes the student (a decompose step is cheap and deterministic, so each process applies it to its
own copy). Only the main process writes: models, reports, ``state.json``, the tracker's run, the
messages. After each stage the processes wait for one another, so a process that reads a folder the
main process wrote (the next step's student) reads it complete.

The launcher's environment says how many processes there are (``WORLD_SIZE``, set by ``accelerate
launch`` and ``torchrun``); a single process never imports accelerate's distributed state here.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any


def world_size() -> int:
    """The number of processes of this run (1 when not started by a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return world_size() == 1 or int(os.environ.get("RANK", "0") or 0) == 0


@cache
def _state() -> Any:
    # Imported here: a single-process run (every CLI command) does not pay for accelerate's state.
    import torch
    from accelerate import PartialState

    # The same backend the Trainer's Accelerator selects: gloo on CPU-only machines, NCCL with CUDA.
    return PartialState(cpu=not torch.cuda.is_available())


def wait_for_everyone() -> None:
    """Block until every process of the run reaches this point (nothing to do for one process)."""
    if world_size() > 1:
        _state().wait_for_everyone()
