"""The core's own plugin: generic CLI commands and the null tracker, registered like any plugin."""

from __future__ import annotations

from compresskit.commands import Command
from compresskit.commands.compress import CompressCommand
from compresskit.commands.demo import DemoCommand
from compresskit.commands.distill import DistillCommand
from compresskit.commands.evaluate import EvaluateCommand
from compresskit.commands.export import ExportCommand
from compresskit.commands.finetune import FinetuneCommand
from compresskit.commands.inspect import InspectCommand
from compresskit.commands.plugins import PluginsCommand
from compresskit.commands.run import RunCommand
from compresskit.hookspecs import hookimpl
from compresskit.tracking import NullTracker, Tracker


@hookimpl
def compresskit_register_commands() -> list[type[Command]]:
    return [
        PluginsCommand,
        RunCommand,
        DemoCommand,
        InspectCommand,
        CompressCommand,
        FinetuneCommand,
        EvaluateCommand,
        DistillCommand,
        ExportCommand,
    ]


@hookimpl
def compresskit_register_trackers() -> list[type[Tracker]]:
    return [NullTracker]
