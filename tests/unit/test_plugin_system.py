"""The pluggy plugin manager and the registry: discovery, blocking and every start-up error."""

from __future__ import annotations

import pytest
from torch import nn

import compresskit
from compresskit import (
    DuplicateNameError,
    PluginError,
    Registry,
    UnknownNameError,
    get_plugin_manager,
    hookimpl,
)
from compresskit.tracking import NullTracker


class _Tracker(compresskit.Tracker):
    name = "none"  # clashes with the built-in null tracker


class _DupPlugin:
    __name__ = "tests.dup_plugin"

    @hookimpl
    def compresskit_register_trackers(self) -> list[type]:
        return [_Tracker]


class _Misspelt:
    __name__ = "tests.misspelt_plugin"

    @hookimpl
    def compresskit_register_decomposition(self) -> list[type]:  # missing final "s"
        return []


class _Raises:
    __name__ = "tests.raising_plugin"

    @hookimpl
    def compresskit_register_losses(self) -> list[type]:
        raise RuntimeError("boom in registration")


class _NotAComponent:
    __name__ = "tests.bad_return_plugin"

    @hookimpl
    def compresskit_register_decompositions(self) -> list[type]:
        return [nn.Linear]


def test_each_call_builds_a_fresh_manager() -> None:
    assert get_plugin_manager() is not get_plugin_manager()


def test_builtins_are_registered_through_the_hooks() -> None:
    registry = Registry.from_plugins()
    assert registry.get("tracker", "none") is NullTracker
    assert "plugins" in registry.names("command")
    info = registry.info("tracker", "none")
    assert info.source.distribution == "compresskit"
    assert info.source.version == compresskit.__version__


def test_duplicate_names_name_both_modules() -> None:
    manager = get_plugin_manager([_DupPlugin()])
    with pytest.raises(DuplicateNameError) as caught:
        Registry.from_plugins(manager)
    message = str(caught.value)
    assert "compresskit.builtin" in message and "tests.dup_plugin" in message
    assert "'none'" in message


def test_misspelt_hook_fails_at_start_up() -> None:
    with pytest.raises(PluginError, match=r"tests\.misspelt_plugin.*compresskit_register_decomposition\b"):
        get_plugin_manager([_Misspelt()])


def test_plugin_raising_in_registration_is_named() -> None:
    manager = get_plugin_manager([_Raises()])
    with pytest.raises(PluginError, match=r"tests\.raising_plugin.*compresskit_register_losses.*boom"):
        Registry.from_plugins(manager)


def test_registering_a_non_component_is_refused() -> None:
    manager = get_plugin_manager([_NotAComponent()])
    with pytest.raises(
        PluginError, match=r"tests\.bad_return_plugin.*not a subclass of compresskit\.Decomposition"
    ):
        Registry.from_plugins(manager)


def test_unknown_name_lists_available_with_suggestion() -> None:
    registry = Registry.from_plugins()
    with pytest.raises(UnknownNameError) as caught:
        registry.get("command", "plugin", where="cli")
    message = str(caught.value)
    assert "unknown command 'plugin' (in cli)" in message
    assert "Did you mean 'plugins'" in message
    assert "Available commands:" in message


def test_environment_variable_blocks_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    from compresskit.plugins import PluginWarning

    monkeypatch.setenv("COMPRESSKIT_DISABLE_PLUGINS", "builtin, other")
    with pytest.warns(PluginWarning, match="'other'"):  # no plugin is named 'other'
        registry = Registry.from_plugins()
    assert "plugins" not in registry.names("command")
    monkeypatch.setenv("COMPRESSKIT_DISABLE_PLUGINS", "")
    assert "plugins" in Registry.from_plugins().names("command")


def test_unknown_kind_is_reported() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown component kind 'decompositions'.*'decomposition'"):
        Registry.from_plugins().names("decompositions")


class _Exits:
    __name__ = "tests.exiting_plugin"

    @hookimpl
    def compresskit_register_losses(self) -> list[type]:
        raise SystemExit("no GPU")


def test_plugin_calling_sys_exit_while_registering_is_a_plugin_error() -> None:
    manager = get_plugin_manager([_Exits()])
    with pytest.raises(PluginError, match=r"tests\.exiting_plugin.*SystemExit: no GPU"):
        Registry.from_plugins(manager)


def test_unknown_name_in_the_block_list_warns_with_the_installed_plugins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from compresskit.plugins import PluginWarning

    monkeypatch.setenv("COMPRESSKIT_DISABLE_PLUGINS", "kroneker, low_rank")
    with pytest.warns(PluginWarning) as caught:
        registry = Registry.from_plugins()
    assert len(caught) == 1  # low_rank exists: only the typo warns
    message = str(caught[0].message)
    assert "'kroneker'" in message and "Did you mean 'kronecker'?" in message
    assert "Installed plugins: builtin, distillers, glue, kronecker," in message
    assert "low_rank" not in registry.names("decomposition")


def test_unknown_name_that_a_blocked_plugin_provides_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPRESSKIT_DISABLE_PLUGINS", "compresskit_plugins.low_rank")
    registry = Registry.from_plugins()
    with pytest.raises(UnknownNameError) as caught:
        registry.get("decomposition", "low_rank", where="steps[0].groups[0].decomposition")
    message = str(caught.value)
    assert "plugin 'low_rank' (module compresskit_plugins.low_rank, from compresskit) provides it" in message
    assert "remove 'low_rank' from COMPRESSKIT_DISABLE_PLUGINS" in message
    with pytest.raises(UnknownNameError) as other:
        registry.get("decomposition", "lowrank")
    assert "blocks that plugin" not in str(other.value)  # only the name the blocked plugin really has
