"""The preflight's dry run of the steps: every decompose step planned on a shape-only student, in order.

A ``meta``-device copy of the task model (shapes, no memory, no weights read) goes through the steps
as the real run will: each decompose step is planned on the student as the earlier steps left it, its
replacements are built without initialisation and swapped in, and each distill step's distiller checks
its requirements (loss outputs, modules copied from the teacher) against that planned student. So a
strategy that cannot be applied to this architecture fails before any training, at the step that is
wrong:

* a decompose step that would replace nothing (every selected module skipped) is an error listing the
  reasons the decomposition gave, which name the nearest valid shapes or ranks;
* a replacement with *more* parameters than the module it replaces (``param_ratio = 1.5``, a rank
  above the break-even point) is an error: it would grow the model;
* a distiller that cannot run against the planned student (e.g. two-stage KD copying a pooler the
  step decomposed into the student) is an error naming the distill step.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from compresskit.config import step_as_mapping
from compresskit.distillation import FINETUNED, PRETRAINED
from compresskit.errors import CompressKitError, ConfigError
from compresskit.registry import Registry
from compresskit.report import CompressionPlan
from compresskit.strategy import DecomposeStep, DistillStep, Strategy

#: How many distinct skip reasons an error shows.
MAX_REASONS = 4


def dry_run_steps(
    strategy: Strategy,
    registry: Registry,
    dense: nn.Module,
    resolved: Mapping[int, Any] | None = None,
) -> tuple[CompressionPlan, ...]:
    """Plan every decompose step and check every distill step on a copy of ``dense`` (a meta model).

    ``resolved`` holds steps already resolved (index → a decompose step's groups, a distill step's
    Distiller; :func:`~compresskit.config.validate_components`); the others are resolved here."""
    resolved = resolved or {}
    from compresskit.targets import parse_step
    from compresskit.walker import build_replacements, plan_compression, swap_modules

    student = copy.deepcopy(dense)
    teachers = {PRETRAINED: dense, FINETUNED: dense}
    plans = []
    for index, step in enumerate(strategy.steps):
        where = f"steps[{index}]"
        if isinstance(step, DistillStep):
            check_distiller(step, registry, student, teachers, where, resolved.get(index))
            continue
        if not isinstance(step, DecomposeStep):
            continue
        groups = resolved.get(index) or parse_step(step_as_mapping(step), where, registry=registry)
        try:
            plan = plan_compression(student, groups, registry=registry)
        except CompressKitError as exc:
            raise type(exc)(f"{where} cannot be applied to {type(dense).__name__}: {exc}") from None
        check_plan(plan, groups, where)
        swap_modules(student, plan, build_replacements(student, plan, registry=registry, initialize=False))
        plans.append(plan)
    return tuple(plans)


def check_plan(plan: CompressionPlan, groups: Sequence[Any], where: str) -> None:
    """Raise :class:`ConfigError` if the step replaces nothing, or a replacement grows its module."""
    paths = {group.name: group.where for group in groups}
    if not plan.modules:
        raise ConfigError(
            f"{where}: this decompose step would replace no module: every module its groups select was "
            f"skipped ({len(plan.skipped)} skipped, {len(plan.excluded)} excluded).{_reasons(plan, paths)}"
            "\nChange the options as the reasons suggest, or select other modules; `compresskit inspect "
            "--config FILE` prints the plan without running anything."
        )
    grown = [m for m in plan.modules if m.after.params > m.before.params]
    if grown:
        first = grown[0]
        path = paths.get(first.group, where)
        raise ConfigError(
            f"{path}.options: would grow the model instead of compressing it: {len(grown)} replacement(s) "
            f"have more parameters than the module they replace, e.g. {first.name} "
            f"{first.before.params:,} → {first.after.params:,} parameters with options "
            f"{dict(first.options)}. Lower the rank / param_ratio (or choose other factor shapes) so each "
            "replacement is smaller than the dense matrix."
        )


def _reasons(plan: CompressionPlan, paths: Mapping[str, str]) -> str:
    """The distinct skip reasons (module names factored out), with where each group is configured."""
    by_reason: dict[tuple[str, str], list[str]] = defaultdict(list)
    for skipped in plan.skipped:
        reason = skipped.reason.replace(f"'{skipped.name}'", "<module>").replace(skipped.name, "<module>")
        by_reason[(skipped.group, reason)].append(skipped.name)
    lines = []
    for (group, reason), names in list(by_reason.items())[:MAX_REASONS]:
        more = f" (and {len(names) - 1} more modules like it)" if len(names) > 1 else ""
        where = paths.get(group, f"group {group!r}")
        text = reason.replace("<module>", names[0])
        if names[0] not in text:
            text = f"{names[0]}: {text}"
        lines.append(f"\n  {where}: {text}{more}")
    if len(by_reason) > MAX_REASONS:
        lines.append(f"\n  ... {len(by_reason) - MAX_REASONS} more reasons")
    return "".join(lines) if lines else ""


def check_distiller(
    step: DistillStep,
    registry: Registry,
    student: nn.Module,
    teachers: Mapping[str, nn.Module],
    where: str,
    distiller: Any = None,
) -> None:
    """Let the step's distiller check the planned student (on copies: nothing of the run is touched)."""
    if distiller is None:
        distiller = registry.create("distiller", step.distiller, step.options, where=f"{where}.options")
    check = getattr(distiller, "check_student", None)
    if not callable(check):
        return
    teacher = copy.deepcopy(next(iter(teachers.values())))
    copies = {name: teacher for name in teachers}
    check(copy.deepcopy(student), copies, registry=registry, where=f"{where}.options")
