"""The preflight's data check: every split of every task the run will read is read once, up front.

A run reads the task's train split (teacher fine-tuning, unless the teacher is already fine-tuned), the
evaluation split, and the data of every distill step (``[steps.data.<name>]``, by default the task's
train split). Each is loaded with the task's own validating reader before any training, so a missing
file, a malformed row or a label outside the label set (a dev file included) stops the run at once
with the file and line. Tasks cache what they read, so the run does not read the files twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from compresskit.errors import CompressKitError, DataError
from compresskit.registry import Registry
from compresskit.strategy import DistillStep, Strategy


def check_data(
    strategy: Strategy, registry: Registry, task: Any, steps: Mapping[int, Any], *, needs_train: bool
) -> None:
    """Load every split the run will read; raise :class:`DataError` / :class:`ConfigError` naming it.
    ``steps`` are the resolved steps (a distill step's Distiller by index)."""
    seen: set[tuple[int, str]] = set()
    for source, split, where in reads(strategy, registry, task, steps, needs_train=needs_train):
        if (id(source), split) in seen:
            continue
        seen.add((id(source), split))
        load(source, split, where)


def reads(
    strategy: Strategy, registry: Registry, task: Any, steps: Mapping[int, Any], *, needs_train: bool
) -> Iterator[tuple[Any, str, str]]:
    """``(task, split, config path)`` of every read the run will make, in run order."""
    if needs_train:
        yield task, "train", "finetune"
    for index, step in enumerate(strategy.steps):
        if isinstance(step, DistillStep):
            yield from _distill_reads(step, index, steps[index], registry, task)
    yield task, strategy.evaluation.split, "evaluation.split"


def _distill_reads(
    step: DistillStep, index: int, distiller: Any, registry: Registry, task: Any
) -> Iterator[tuple[Any, str, str]]:
    where = f"steps[{index}]"
    for name in dict.fromkeys(plan.data for plan in distiller.stages()):
        spec = step.data.get(name)
        if spec is None:
            yield task, "train", f"{where}.data.{name}"
            continue
        source = task
        if spec.task is not None:
            source = registry.create("task", spec.task, spec.options, where=f"{where}.data.{name}.options")
        yield source, spec.split, f"{where}.data.{name}.split"


def load(task: Any, split: str, where: str) -> None:
    """Read ``split`` of ``task`` with its validating reader (any failure becomes a clear error)."""
    try:
        if hasattr(task, "check_split"):
            task.check_split(split)
    except CompressKitError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    try:
        task.load_split(split)
    except CompressKitError as exc:
        raise type(exc)(f"{exc} (read for {where})") from None
    except Exception as exc:  # a reader library's own error: say which split of which task
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"{where}: task {task.name!r} cannot read its {split!r} split ({type(exc).__name__}: "
            f"{first_line}). Check the task's data files (task options such as data_dir or files)."
        ) from None
