"""GLUE tasks plugin: all nine GLUE tasks with their official metrics (registered as task ``glue``)."""

from __future__ import annotations

from compresskit import Task, hookimpl

from .specs import GLUE_TASKS, GlueSpec
from .task import GlueOptions, GlueTask

__all__ = ["GLUE_TASKS", "GlueOptions", "GlueSpec", "GlueTask"]


@hookimpl
def compresskit_register_tasks() -> list[type[Task]]:
    return [GlueTask]
