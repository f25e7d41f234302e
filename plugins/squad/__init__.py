"""SQuAD plugin: extractive QA on SQuAD v1.1 / v2.0 with the official EM / F1 (task ``squad``)."""

from __future__ import annotations

from compresskit import Task, hookimpl

from .task import SquadOptions, SquadTask, load_predictions

__all__ = ["SquadOptions", "SquadTask", "load_predictions"]


@hookimpl
def compresskit_register_tasks() -> list[type[Task]]:
    return [SquadTask]
