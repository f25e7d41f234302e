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


#: accelerate's launcher variables of the sharded back-ends, and their names.
_SHARDED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def check_supported_launch() -> None:
    """Raise :class:`UsageError` when launched with FSDP or DeepSpeed (see the README, "Several GPUs").

    The walker replaces modules of a whole model held by each process, compressed modules read their
    own parameters outside ``forward`` (``dense_weight()``, the measured-dispatch weight cache), and the
    pipeline saves the student from the process's own copy: with parameters sharded across processes
    each of these would see a shard. Plain data parallelism (``--multi_gpu``) keeps a full copy per
    process and works.
    """
    used = [name for variable, name in _SHARDED.items() if os.environ.get(variable, "").lower() == "true"]
    if used:
        from compresskit.errors import UsageError

        raise UsageError(
            f"this run was launched with accelerate's {used[0]} (sharded parameters), which compresskit does "
            "not support: decompose steps and compressed modules need each process to hold the whole "
            "model. Launch with plain data parallelism instead: accelerate launch --multi_gpu "
            "--num_processes N -m compresskit run CONFIG (or an accelerate config with "
            "distributed_type: MULTI_GPU)."
        )


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
