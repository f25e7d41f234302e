"""MLflow tracking and ``compresskit compare`` (a plugin adding a tracker and a CLI command).

- :class:`MlflowTracker` (tracker ``"mlflow"``): see :mod:`.tracker` for where runs go and what happens
  when the tracking server cannot be reached.
- :class:`CompareCommand` (``compresskit compare``): table of an experiment's runs and a Pareto plot.
- :func:`replay_journal`: send a run recorded while the server was unreachable to MLflow.
"""

from __future__ import annotations

from compresskit import Command, Tracker, hookimpl

from .compare import CompareCommand, summarize_runs
from .journal import read_journal, replay_journal
from .pareto import Point, pareto_front, plot_pareto
from .tracker import MlflowTracker, TrackingUnavailableError, UntrackedRunWarning

__all__ = [
    "CompareCommand",
    "MlflowTracker",
    "Point",
    "TrackingUnavailableError",
    "UntrackedRunWarning",
    "pareto_front",
    "plot_pareto",
    "read_journal",
    "replay_journal",
    "summarize_runs",
]


@hookimpl
def compresskit_register_trackers() -> list[type[Tracker]]:
    return [MlflowTracker]


@hookimpl
def compresskit_register_commands() -> list[type[Command]]:
    return [CompareCommand]
