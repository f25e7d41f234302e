"""Read-only maps from component names to classes, built once from the plugin hooks.

The registry is built atomically: a plugin that raises while registering, returns something that is
not a component class, or claims a name another plugin already has, stops start-up with an error that
names both plugins, and nothing is half-registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pluggy

from compresskit.commands import Command
from compresskit.decomposition import Decomposition
from compresskit.distillation import Distiller, Loss
from compresskit.errors import DuplicateNameError, PluginError, unknown_name
from compresskit.hookspecs import REGISTER_HOOKS
from compresskit.plugins import (
    DISABLE_ENV,
    BlockedPlugin,
    PluginSource,
    blocked_plugins,
    get_plugin_manager,
    plugin_source,
)
from compresskit.presets import Preset
from compresskit.tasks import Task
from compresskit.tracking import Tracker

#: The base class every component of a kind must subclass.
KIND_BASES: dict[str, type] = {
    "decomposition": Decomposition,
    "distiller": Distiller,
    "loss": Loss,
    "task": Task,
    "tracker": Tracker,
    "preset": Preset,
    "command": Command,
}


@dataclass(frozen=True)
class ComponentInfo:
    """One registered component: what it is, and which plugin and distribution provide it."""

    kind: str
    name: str
    cls: type
    source: PluginSource

    def to_dict(self) -> dict[str, str]:
        """The stable JSON form used by ``compresskit plugins --json``."""
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.source.module,
            "distribution": self.source.distribution,
            "version": self.source.version,
        }


class Registry:
    """Every component of every kind, looked up by ``registry.get(kind, name)``."""

    def __init__(self, entries: Iterable[ComponentInfo], blocked: Iterable[BlockedPlugin] = ()) -> None:
        tables: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in REGISTER_HOOKS}
        for entry in entries:
            table = tables[entry.kind]
            if entry.name in table:
                raise _duplicate(entry, table[entry.name])
            table[entry.name] = entry
        self._tables = {kind: MappingProxyType(table) for kind, table in tables.items()}
        #: Plugins COMPRESSKIT_DISABLE_PLUGINS kept out (consulted only to explain an unknown name).
        self.blocked = tuple(blocked)

    @classmethod
    def from_plugins(cls, manager: pluggy.PluginManager | None = None) -> Registry:
        """Call every ``compresskit_register_*`` hook of ``manager`` (a fresh one by default)."""
        manager = manager or get_plugin_manager()
        return cls(_collect(manager), blocked_plugins(manager))

    def names(self, kind: str) -> list[str]:
        """Sorted names of the registered components of ``kind``."""
        return sorted(self._table(kind))

    def info(self, kind: str, name: str, *, where: str = "") -> ComponentInfo:
        """The :class:`ComponentInfo` for ``name``; an unknown name lists the alternatives."""
        table = self._table(kind)
        if name not in table:
            raise unknown_name(kind, name, table, where, note=self._blocked_note(kind, name))
        return table[name]

    def _blocked_note(self, kind: str, name: str) -> str:
        """Say so when ``name`` exists in a blocked plugin (imported here, on the error path only)."""
        unchecked = []
        for plugin in self.blocked:
            try:
                names = _component_names(plugin.load(), kind)
            except (Exception, SystemExit):  # a blocked plugin may well be broken: that is why it is blocked
                unchecked.append(plugin.source.name)
                continue
            if name in names:
                return (
                    f" {kind.capitalize()} {name!r} exists: plugin {plugin.source.name!r} (module "
                    f"{plugin.source.module}, from {plugin.source.distribution}) provides it, but "
                    f"{DISABLE_ENV} blocks that plugin; remove {plugin.source.name!r} from {DISABLE_ENV} "
                    "to use it."
                )
        if unchecked:
            return f" ({DISABLE_ENV} also blocks plugin(s) {', '.join(unchecked)}, which may provide it.)"
        return ""

    def get(self, kind: str, name: str, *, where: str = "") -> type[Any]:
        """The class registered as ``name`` of ``kind``."""
        return self.info(kind, name, where=where).cls

    def create(
        self, kind: str, name: str, options: Mapping[str, Any] | None = None, *, where: str = ""
    ) -> Any:
        """Instantiate component ``name`` with validated ``options``."""
        return self.get(kind, name, where=where)(options, where=where or f"{kind}.{name}")

    def table(self, kind: str) -> Mapping[str, ComponentInfo]:
        """Read-only name -> info map of one kind."""
        return self._table(kind)

    def __iter__(self) -> Iterator[ComponentInfo]:
        for kind in REGISTER_HOOKS:
            yield from (self._tables[kind][name] for name in sorted(self._tables[kind]))

    def _table(self, kind: str) -> Mapping[str, ComponentInfo]:
        if kind not in self._tables:
            raise unknown_name("component kind", kind, self._tables)
        return self._tables[kind]


def _collect(manager: pluggy.PluginManager) -> list[ComponentInfo]:
    entries: list[ComponentInfo] = []
    for kind, hook_name in REGISTER_HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            source = plugin_source(manager, impl.plugin)
            for cls in _call_registration(impl.function, hook_name, source):
                entries.append(ComponentInfo(kind, _component_name(cls, kind, source), cls, source))
    return entries


def _component_names(plugin: object, kind: str) -> set[str]:
    """Names a plugin module or object registers for ``kind`` (calling its hook directly)."""
    hook = getattr(plugin, REGISTER_HOOKS[kind], None)
    classes = hook() if callable(hook) else None
    return {getattr(cls, "name", "") for cls in classes or ()}


def _call_registration(function: Any, hook_name: str, source: PluginSource) -> list[type]:
    try:
        result = function()
    except (Exception, SystemExit) as exc:
        raise PluginError(
            f"plugin {source.name!r} (module {source.module!r}) raised in {hook_name}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if result is None:
        return []
    if not isinstance(result, list | tuple):
        raise PluginError(
            f"plugin {source.name!r} (module {source.module!r}): {hook_name} must return a list "
            f"of classes, got {type(result).__name__}."
        )
    return list(result)


def _component_name(cls: Any, kind: str, source: PluginSource) -> str:
    base = KIND_BASES[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"plugin {source.name!r} (module {source.module!r}) registered {cls!r} as a {kind}, "
            f"but it is not a subclass of compresskit.{base.__name__}."
        )
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise PluginError(
            f"plugin {source.name!r} (module {source.module!r}): {kind} class "
            f"{cls.__qualname__} has no `name` class attribute."
        )
    return name


def _duplicate(new: ComponentInfo, old: ComponentInfo) -> DuplicateNameError:
    return DuplicateNameError(
        f"two plugins register a {new.kind} named {new.name!r}: {old.source.module} "
        f"({old.cls.__module__}.{old.cls.__qualname__}, from {old.source.distribution}) and "
        f"{new.source.module} ({new.cls.__module__}.{new.cls.__qualname__}, from "
        f"{new.source.distribution}). Uninstall one, or block one with COMPRESSKIT_DISABLE_PLUGINS."
    )
