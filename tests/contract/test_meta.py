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


def _compresskit_imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` of every import of compresskit in ``path`` (name ``"*"`` for ``import x``)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "compresskit":
            found += [(str(node.module), alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "*", node.lineno) for a in node.names if a.name.split(".")[0] == "compresskit"]
    return found


def test_plugins_and_benchmarks_import_only_the_public_surfaces() -> None:
    """``plugins/`` and ``benchmarks/`` use ``compresskit`` (its ``__all__``) and ``compresskit.plugin``
    alone, as a third-party package would."""
    import compresskit.plugin

    allowed = {
        "compresskit": {*compresskit.__all__, "plugin"},
        "compresskit.plugin": set(compresskit.plugin.__all__),
    }
    offenders = []
    for top in ("plugins", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for module, name, line in _compresskit_imports(path):
                if name == "*" and module == "compresskit":
                    continue
                if name not in allowed.get(module, set()):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert offenders == [], "import these through compresskit.plugin (and list them there):\n" + "\n".join(
        offenders
    )


def test_the_plugin_surface_is_documented() -> None:
    import compresskit.plugin

    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "compresskit.plugin" in contributing
    for name in compresskit.plugin.__all__:
        assert hasattr(compresskit.plugin, name), name
