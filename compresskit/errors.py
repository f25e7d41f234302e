"""One exception hierarchy for everything compresskit reports to a user.

Every message says what happened, where (module name, config path, file and line, plugin), what was
expected and how to fix it. Catch :class:`CompressKitError` to handle them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CompressKitError(Exception):
    """Base class of every error compresskit raises on purpose."""


class ConfigError(CompressKitError):
    """A configuration value or file is invalid (unknown key, wrong type, out of range)."""


class UnknownNameError(CompressKitError, KeyError):
    """A component was asked for by a name that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class PluginError(CompressKitError):
    """A plugin failed to import, misspelt a hook, raised while registering or clashed with another."""


class DuplicateNameError(PluginError):
    """Two plugins registered a component of the same kind under the same name."""


class NoMatchingModulesError(CompressKitError):
    """A target pattern of a strategy matched no module of the model."""


class DecompositionError(CompressKitError):
    """A module cannot be decomposed with the requested options."""


class DataError(CompressKitError):
    """A data file or dataset is missing, malformed or does not fit the task."""


class MissingDependencyError(CompressKitError):
    """An optional dependency needed for the requested feature is not installed."""


class CheckpointError(CompressKitError):
    """A checkpoint or saved model is missing, corrupt or belongs to another run."""


class TrainingError(CompressKitError):
    """Training cannot go on (non-finite loss, out of memory, ...); the last good checkpoint is kept."""


def did_you_mean(name: str, candidates: Iterable[str], limit: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidates, or ``""`` when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=limit, cutoff=0.6)
    if not matches:
        return ""
    quoted = " or ".join(repr(m) for m in matches)
    return f" Did you mean {quoted}?"


def unknown_name(kind: str, name: str, available: Iterable[str], where: str = "") -> UnknownNameError:
    """Build the standard error for an unknown component name, listing what exists."""
    names = sorted(available)
    location = f" (in {where})" if where else ""
    listing = ", ".join(names) if names else "none installed"
    return UnknownNameError(
        f"unknown {kind} {name!r}{location}.{did_you_mean(name, names)} "
        f"Available {kind}s: {listing}. Run `compresskit plugins` to see every installed component."
    )
