"""One exception hierarchy for everything compresskit reports to a user.

Every message says what happened, where (module name, config path, file and line, plugin), what was
expected and how to fix it. Catch :class:`CompressKitError` to handle them all.

Each class carries the exit status the command line returns for it (``exit_code``), by kind of cause:

====  =============  ===================================================================================
code  kind           raised for
====  =============  ===================================================================================
0     success
1     internal       an unexpected exception (a bug: please report it; ``COMPRESSKIT_DEBUG=1`` prints
                     the traceback)
2     usage          command-line arguments (``argparse`` errors, malformed ``--set`` / ``--task-option``)
3     config         the strategy or an option (:class:`ConfigError`, :class:`UnknownNameError`,
                     :class:`NoMatchingModulesError`, :class:`DecompositionError`)
4     data           a data file, model folder or checkpoint on disk (:class:`DataError`,
                     :class:`CheckpointError`, :class:`NonFiniteWeightsError`)
5     training       training cannot go on (:class:`TrainingError`: non-finite loss, out of memory)
6     environment    the machine or installation (:class:`PluginError`, :class:`MissingDependencyError`,
                     :class:`RunLockedError`, :class:`StorageError`)
130   interrupted    Ctrl-C (SIGINT); completed stages and checkpoints are kept
143   terminated     SIGTERM, handled like Ctrl-C
====  =============  ===================================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import ClassVar

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_TRAINING = 5
EXIT_ENVIRONMENT = 6
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: Exit status → the kind of failure, as documented (README "Exit codes", ``compresskit --help``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug; COMPRESSKIT_DEBUG=1 prints the traceback)",
    EXIT_USAGE: "usage: command-line arguments",
    EXIT_CONFIG: "config: the strategy, an option or a component name",
    EXIT_DATA: "data: a data file, model folder or checkpoint on disk",
    EXIT_TRAINING: "training: training cannot go on (non-finite loss, out of memory)",
    EXIT_ENVIRONMENT: "environment: plugins, dependencies, a busy run folder, a full disk",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): completed work and checkpoints are kept",
    EXIT_TERMINATED: "terminated (SIGTERM): handled like Ctrl-C",
}


class CompressKitError(Exception):
    """Base class of every error compresskit raises on purpose."""

    #: What the command line returns for this error (see the module docstring).
    exit_code: ClassVar[int] = EXIT_CONFIG


class ConfigError(CompressKitError):
    """A configuration value or file is invalid (unknown key, wrong type, out of range)."""


class UsageError(ConfigError):
    """A command-line argument is malformed (``--set`` without ``=``, ``--options`` not JSON)."""

    exit_code = EXIT_USAGE


class UnknownNameError(CompressKitError, KeyError):
    """A component was asked for by a name that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class PluginError(CompressKitError):
    """A plugin failed to import, misspelt a hook, raised while registering or clashed with another."""

    exit_code = EXIT_ENVIRONMENT


class DuplicateNameError(PluginError):
    """Two plugins registered a component of the same kind under the same name."""


class NoMatchingModulesError(CompressKitError):
    """A target pattern of a strategy matched no module of the model."""


class DecompositionError(CompressKitError):
    """A module cannot be decomposed with the requested options."""


class NonFiniteWeightsError(DecompositionError):
    """A module to decompose holds NaN or Inf weights (the model file is damaged or diverged)."""

    exit_code = EXIT_DATA


class DataError(CompressKitError):
    """A data file or dataset is missing, malformed or does not fit the task."""

    exit_code = EXIT_DATA


class MissingDependencyError(CompressKitError):
    """An optional dependency needed for the requested feature is not installed."""

    exit_code = EXIT_ENVIRONMENT


class CheckpointError(CompressKitError):
    """A checkpoint or saved model is missing, corrupt or belongs to another run."""

    exit_code = EXIT_DATA


class TrainingError(CompressKitError):
    """Training cannot go on (non-finite loss, out of memory, ...); the last good checkpoint is kept."""

    exit_code = EXIT_TRAINING


class RunLockedError(CompressKitError):
    """Another process is working in the same run folder (its lock names the holder)."""

    exit_code = EXIT_ENVIRONMENT


class StorageError(CompressKitError):
    """Writing to disk failed (disk full, quota, read-only); what was there before is kept."""

    exit_code = EXIT_ENVIRONMENT


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's :class:`KeyboardInterrupt` so the same clean-up runs.

    Not a :class:`CompressKitError`: like ``KeyboardInterrupt`` it must pass through ``except
    Exception`` blocks. The command line returns 143 for it (130 for Ctrl-C).
    """


def did_you_mean(name: str, candidates: Iterable[str], limit: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidates, or ``""`` when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=limit, cutoff=0.6)
    if not matches:
        return ""
    quoted = " or ".join(repr(m) for m in matches)
    return f" Did you mean {quoted}?"


def unknown_name(
    kind: str, name: str, available: Iterable[str], where: str = "", *, note: str = ""
) -> UnknownNameError:
    """Build the standard error for an unknown component name, listing what exists (``note`` is
    appended, e.g. that a blocked plugin provides the name)."""
    names = sorted(available)
    location = f" (in {where})" if where else ""
    listing = ", ".join(names) if names else "none installed"
    plural = f"{kind}es" if kind.endswith("s") else f"{kind}s"
    return UnknownNameError(
        f"unknown {kind} {name!r}{location}.{did_you_mean(name, names)} "
        f"Available {plural}: {listing}. Run `compresskit plugins` to see every installed component.{note}"
    )
