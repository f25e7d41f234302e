"""Meta-tests: the public API is pinned, every hook is documented and exercised, packaging is complete."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import compresskit
from compresskit import hookspecs

ROOT = Path(__file__).resolve().parents[2]

PUBLIC_API = sorted(compresskit.__all__)


def test_public_api_is_pinned() -> None:
    pinned = (Path(__file__).parent / "public_api.txt").read_text().split()
    assert sorted(compresskit.__all__) == pinned, (
        "compresskit.__all__ changed: update tests/contract/public_api.txt on purpose"
    )
    for name in compresskit.__all__:
        assert hasattr(compresskit, name), name


def _hook_names() -> list[str]:
    return [
        name
        for name, value in vars(hookspecs).items()
        if name.startswith("compresskit_") and inspect.isfunction(value)
    ]


def test_every_hookspec_is_documented_registered_and_tested() -> None:
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_meta.py")
    plugin_text = "\n".join(p.read_text() for p in (ROOT / "plugins").rglob("*.py"))
    plugin_text += (ROOT / "compresskit" / "builtin.py").read_text()
    assert sorted(_hook_names()) == sorted(hookspecs.REGISTER_HOOKS.values())
    for name in _hook_names():
        function = getattr(hookspecs, name)
        assert (function.__doc__ or "").strip(), f"{name} has no docstring"
        assert name in contributing, f"{name} is not documented in CONTRIBUTING.md"
        assert name in plugin_text, f"no plugin implements {name}"
        assert name in tests_text or _kind_of(name) in tests_text, f"no test exercises {name}"


def _kind_of(hook: str) -> str:
    kind = next(k for k, v in hookspecs.REGISTER_HOOKS.items() if v == hook)
    return f'"{kind}"'


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found: set[str] = set()
    for top, dotted in (("compresskit", "compresskit"), ("plugins", "compresskit_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            if "examples" in rel.parts:
                continue
            found.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    assert found == listed


def test_core_names_builtin_plugins_only_in_the_plugin_list() -> None:
    offenders = []
    for path in (ROOT / "compresskit").rglob("*.py"):
        text = path.read_text()
        if path.name != "plugins.py" and re.search(r"compresskit_plugins", text):
            offenders.append(path.name)
    assert offenders == []
