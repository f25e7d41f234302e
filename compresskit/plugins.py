"""Build a fresh pluggy plugin manager: built-in plugins first, then installed entry points.

Built-ins are plain modules registered through the same hooks a third-party plugin uses. Third-party
plugins declare an entry point in the group ``compresskit``::

    [project.entry-points.compresskit]
    myplugin = "my_package.plugin"

``COMPRESSKIT_DISABLE_PLUGINS`` (comma-separated) blocks plugins by name: an entry-point name, a
built-in's short name (``kronecker``) or its module (``compresskit_plugins.kronecker``). A name that no
installed plugin has is a :class:`PluginWarning` listing the installed ones; asking for a component of
a blocked plugin says that it is blocked (:meth:`compresskit.registry.Registry.info`).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import pluggy

from compresskit import hookspecs
from compresskit.errors import PluginError, did_you_mean

ENTRY_POINT_GROUP = "compresskit"
DISABLE_ENV = "COMPRESSKIT_DISABLE_PLUGINS"

#: The core's own plugin (its CLI commands and the null tracker), then the built-in plugins.
#: This list is the only place the core names ``compresskit_plugins``.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "compresskit.builtin",
    "compresskit_plugins.kronecker",
    "compresskit_plugins.losses",
    "compresskit_plugins.distillers",
    "compresskit_plugins.glue",
    "compresskit_plugins.squad",
    "compresskit_plugins.text_corpus",
    "compresskit_plugins.low_rank",
    "compresskit_plugins.tensorly_layers",
    "compresskit_plugins.mlflow_tracker",
)


@dataclass(frozen=True)
class PluginSource:
    """Where a registered plugin came from, for ``compresskit plugins`` and error messages."""

    name: str
    module: str
    distribution: str
    version: str


@dataclass(frozen=True)
class BlockedPlugin:
    """A plugin ``COMPRESSKIT_DISABLE_PLUGINS`` kept out; ``load()`` imports it only on demand (to tell a
    user that the component they asked for exists but is blocked)."""

    source: PluginSource
    entry_point: metadata.EntryPoint | None = None

    def load(self) -> object:
        if self.entry_point is not None:
            return self.entry_point.load()
        return importlib.import_module(self.source.module)


class PluginWarning(UserWarning):
    """A plugin setting that does nothing (e.g. a name in ``COMPRESSKIT_DISABLE_PLUGINS`` that no
    installed plugin has)."""


def get_plugin_manager(
    extra_plugins: Iterable[object] = (),
    *,
    disabled: Iterable[str] | None = None,
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """Return a new plugin manager with built-ins, installed plugins and ``extra_plugins``.

    Raises :class:`PluginError` naming the plugin when one fails to import or misspells a hook.
    """
    blocked = set(disabled if disabled is not None else _disabled_from_env())
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    kept_out: list[BlockedPlugin] = []
    for module_name in BUILTIN_PLUGINS:
        if _is_blocked(module_name, module_name.rsplit(".", 1)[-1], blocked):
            kept_out.append(BlockedPlugin(_builtin_source(module_name)))
        else:
            _register(manager, _import_builtin(module_name), _builtin_source(module_name))
    entry_points = _entry_points() if load_entry_points else []
    for entry_point in entry_points:
        if _is_blocked(entry_point.value, entry_point.name, blocked):
            kept_out.append(BlockedPlugin(_entry_point_source(entry_point), entry_point))
        else:
            _register(manager, _load_entry_point(entry_point), _entry_point_source(entry_point))
    manager.__dict__["_compresskit_blocked"] = tuple(kept_out)
    if disabled is None:
        _warn_unknown_blocked(blocked, entry_points)
    for extra in extra_plugins:
        module = getattr(extra, "__name__", type(extra).__name__)
        _register(manager, extra, PluginSource(module, module, "(registered in code)", ""))
    _check_pending(manager)
    return manager


def plugin_source(manager: pluggy.PluginManager, plugin: object) -> PluginSource:
    """Return the :class:`PluginSource` recorded for ``plugin`` when it was registered."""
    sources: dict[int, PluginSource] = getattr(manager, "_compresskit_sources", {})
    found = sources.get(id(plugin))
    if found is not None:
        return found
    name = manager.get_name(plugin) or repr(plugin)
    return PluginSource(name, name, "(unknown)", "")


def blocked_plugins(manager: pluggy.PluginManager) -> tuple[BlockedPlugin, ...]:
    """The plugins ``manager`` was built without because ``COMPRESSKIT_DISABLE_PLUGINS`` blocks them."""
    blocked: tuple[BlockedPlugin, ...] = getattr(manager, "_compresskit_blocked", ())
    return blocked


def _warn_unknown_blocked(blocked: set[str], entry_points: list[metadata.EntryPoint]) -> None:
    """Warn about names in the block list that no installed plugin has (a typo blocks nothing)."""
    short = [m.rsplit(".", 1)[-1] for m in BUILTIN_PLUGINS]
    known = {*BUILTIN_PLUGINS, *short, *(ep.name for ep in entry_points), *(ep.value for ep in entry_points)}
    names = sorted({*short, *(ep.name for ep in entry_points)})
    for name in sorted(blocked - known):
        warnings.warn(
            f"{DISABLE_ENV}: no installed plugin is named {name!r}, so it blocks nothing."
            f"{did_you_mean(name, names)} Installed plugins: {', '.join(names)}.",
            PluginWarning,
            stacklevel=3,
        )


def _disabled_from_env() -> list[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def _is_blocked(module_name: str, short_name: str, blocked: set[str]) -> bool:
    return bool(blocked & {module_name, short_name})


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _import_builtin(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() on import must not end the CLI
        raise PluginError(
            f"built-in plugin {module_name!r} failed to import: {type(exc).__name__}: {exc}. "
            f"Set {DISABLE_ENV}={module_name.rsplit('.', 1)[-1]} to run without it."
        ) from exc


def _load_entry_point(entry_point: metadata.EntryPoint) -> object:
    try:
        return entry_point.load()
    except (Exception, SystemExit) as exc:
        dist = entry_point.dist.name if entry_point.dist else "an unknown distribution"
        raise PluginError(
            f"plugin {entry_point.name!r} (module {entry_point.value!r}, from {dist}) failed to "
            f"import: {type(exc).__name__}: {exc}. Fix or uninstall it, or set "
            f"{DISABLE_ENV}={entry_point.name} to skip it."
        ) from exc


def _builtin_source(module_name: str) -> PluginSource:
    return PluginSource(module_name.rsplit(".", 1)[-1], module_name, "compresskit", _own_version())


def _entry_point_source(entry_point: metadata.EntryPoint) -> PluginSource:
    dist = entry_point.dist
    return PluginSource(
        entry_point.name,
        entry_point.value,
        dist.name if dist else "(unknown)",
        dist.version if dist else "",
    )


def _own_version() -> str:
    try:
        return metadata.version("compresskit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _register(manager: pluggy.PluginManager, plugin: object, source: PluginSource) -> None:
    if manager.is_registered(plugin):
        return
    try:
        manager.register(plugin, name=source.module)
    except Exception as exc:
        raise PluginError(
            f"plugin {source.name!r} (module {source.module!r}) could not be registered: {exc}"
        ) from exc
    sources = manager.__dict__.setdefault("_compresskit_sources", {})
    sources[id(plugin)] = source


def _check_pending(manager: pluggy.PluginManager) -> None:
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = plugin_source(manager, exc.plugin)
        known = ", ".join(sorted(hookspecs.REGISTER_HOOKS.values()))
        raise PluginError(
            f"plugin {plugin.name!r} (module {plugin.module!r}) implements a hook that does not "
            f"exist: {exc}. Known hooks: {known}."
        ) from exc
