"""What a run does when a stage stopped half-way: keep what is good, set stale work aside, say how to go on.

* :func:`set_aside_stale_work`: a stage interrupted (or stopped by an error) and started again with
  *changed* settings — e.g. the lower learning rate a NaN stop asked for — cannot resume from its old
  checkpoints (they belong to other settings). Its folder is renamed ``<folder>.old-N`` (kept, never
  deleted) and the stage starts over; stages completed before it are kept.
* :func:`non_finite_way_out`: the message of a non-finite loss stop gains the exact command that goes
  on: the same command with the stage's learning rate halved through ``--set``.
* :func:`storage_failure`: a write that failed because the disk is full (or over quota, read-only, a
  file-size limit) becomes a :class:`StorageError` that says what is intact, whatever layer raised it
  (``OSError``, safetensors' ``SafetensorError``, torch's ``unexpected pos``).
"""

from __future__ import annotations

import errno
import re
import shlex
from pathlib import Path
from typing import Any

from compresskit.errors import StorageError
from compresskit.strategy import DistillStep, Strategy

#: ``errno`` values that mean "no room / not writable", not a bug.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_STORAGE_TEXT = re.compile(
    r"No space left|StorageFull|Disk quota|File too large|FileTooLarge|Read-only file system|unexpected pos"
    r"|os error (28|27|122|30)\b",
    re.IGNORECASE,
)


def stage_folder(run_dir: Path, key: str) -> Path | None:
    """The folder a stage writes its partial work in (``None`` for stages without one)."""
    if key == "teacher":
        return run_dir / "teacher"
    match = re.fullmatch(r"steps\[(\d+)\]:(\w+)", key)
    if match:
        return run_dir / "steps" / f"{int(match.group(1)):02d}-{match.group(2)}"
    return None


def set_aside_stale_work(run_dir: Path, key: str) -> Path | None:
    """Rename the stage's folder to the first free ``<folder>.old-N``; return the new path, if any."""
    folder = stage_folder(run_dir, key)
    if folder is None or not folder.exists():
        return None
    number = 1
    while folder.with_name(f"{folder.name}.old-{number}").exists():
        number += 1
    target = folder.with_name(f"{folder.name}.old-{number}")
    folder.rename(target)
    return target


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the disk cannot take the write."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return True
        if _STORAGE_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def storage_failure(exc: BaseException, what: str, intact: str) -> StorageError:
    """The :class:`StorageError` for a failed write of ``what``, saying that ``intact`` is kept."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StorageError(
        f"could not write {what}: the disk is full or not writable ({type(exc).__name__}: {first_line}). "
        f"Nothing half-written was left; {intact}. Free disk space (or point --output at a larger disk) "
        "and run the same command again to resume."
    )


def non_finite_way_out(strategy: Strategy, key: str, message: str, run_dir: Path, registry: Any) -> str:
    """The command that goes on after a non-finite stop in stage ``key``: its learning rate halved."""
    path, rate = _learning_rate(strategy, key, message, registry)
    if path is None:
        return ""
    new = f"{path}={rate / 2:g}"
    source = strategy.source
    if source is None:
        how = (
            f"set {path} = {rate / 2:g} in the strategy and call compresskit.compress(...) again with the "
            f"same output_dir ({run_dir})"
        )
    else:
        words = ["compresskit", "run", str(source.path), "--output", str(run_dir)]
        kept = [text for text in source.overrides if text.partition("=")[0].strip() != path]
        for text in (*kept, new):
            words += ["--set", text]
        how = f"run\n  {shlex.join(words)}"
    return (
        f"\nTo go on with half the learning rate, {how}\nCompleted stages are kept; this stage starts "
        "over (its partial work is moved to a .old-N folder)."
    )


def _learning_rate(strategy: Strategy, key: str, message: str, registry: Any) -> tuple[str | None, float]:
    from compresskit.training import TrainingConfig

    default = TrainingConfig.learning_rate
    if key == "teacher":
        return "finetune.training.learning_rate", float(
            strategy.finetune.training.get("learning_rate", default)
        )
    match = re.fullmatch(r"steps\[(\d+)\]:distill", key)
    if not match:
        return None, 0.0
    index = int(match.group(1))
    step = strategy.steps[index]
    if not isinstance(step, DistillStep):
        return None, 0.0
    distiller = registry.create("distiller", step.distiller, step.options)
    plans = {plan.name: plan for plan in distiller.stages()}
    found = re.search(r"stage '([\w-]+)'", message)
    plan = plans[found.group(1)] if found and found.group(1) in plans else next(iter(plans.values()))
    rate = plan.options.training.get("learning_rate", default)
    return f"{plan.where(f'steps[{index}].options')}.training.learning_rate", float(rate)
