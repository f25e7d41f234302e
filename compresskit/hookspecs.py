"""The extension contract: every hook a compresskit plugin may implement.

A plugin is any module (or object) with functions decorated by :data:`hookimpl` whose names match the
specs below. Each ``compresskit_register_*`` hook returns a list of classes, each carrying a unique
``name`` class attribute. Built-in components are registered through exactly these hooks.

Hooks take no arguments today; pluggy lets a hook gain arguments later without breaking plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from compresskit.commands import Command
    from compresskit.decomposition import Decomposition
    from compresskit.distillation import Distiller, Loss
    from compresskit.presets import Preset
    from compresskit.tasks import Task
    from compresskit.tracking import Tracker

PROJECT_NAME = "compresskit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def compresskit_register_decompositions() -> list[type[Decomposition]]:
    """Return :class:`~compresskit.decomposition.Decomposition` subclasses (e.g. Kronecker, low-rank)."""
    raise NotImplementedError


@hookspec
def compresskit_register_distillers() -> list[type[Distiller]]:
    """Return :class:`~compresskit.distillation.Distiller` subclasses (e.g. two-stage KD)."""
    raise NotImplementedError


@hookspec
def compresskit_register_losses() -> list[type[Loss]]:
    """Return :class:`~compresskit.distillation.Loss` subclasses (e.g. hidden-state MSE)."""
    raise NotImplementedError


@hookspec
def compresskit_register_tasks() -> list[type[Task]]:
    """Return :class:`~compresskit.tasks.Task` subclasses (e.g. GLUE, SQuAD, a text corpus)."""
    raise NotImplementedError


@hookspec
def compresskit_register_trackers() -> list[type[Tracker]]:
    """Return :class:`~compresskit.tracking.Tracker` subclasses (e.g. MLflow)."""
    raise NotImplementedError


@hookspec
def compresskit_register_presets() -> list[type[Preset]]:
    """Return :class:`~compresskit.presets.Preset` subclasses: named group configurations."""
    raise NotImplementedError


@hookspec
def compresskit_register_commands() -> list[type[Command]]:
    """Return :class:`~compresskit.commands.Command` subclasses: sub-commands of the ``compresskit`` CLI."""
    raise NotImplementedError


#: kind of component -> name of the hook that registers it; the single source for registry and CLI.
REGISTER_HOOKS: dict[str, str] = {
    "decomposition": "compresskit_register_decompositions",
    "distiller": "compresskit_register_distillers",
    "loss": "compresskit_register_losses",
    "task": "compresskit_register_tasks",
    "tracker": "compresskit_register_trackers",
    "preset": "compresskit_register_presets",
    "command": "compresskit_register_commands",
}
