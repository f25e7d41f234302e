"""A third-party plugin installed with pip is discovered, listed and usable by name.

The example plugin in ``plugins/examples/compresskit-blockdiag`` is installed for real into a
temporary folder, and compresskit is run in a subprocess that sees that folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "plugins" / "examples" / "compresskit-blockdiag"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return target


def _run(site: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "compresskit", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_installed_plugin_is_listed_with_its_distribution(plugin_site: Path) -> None:
    result = _run(plugin_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {
        "kind": "decomposition",
        "name": "block_diagonal",
        "plugin": "compresskit_blockdiag.plugin",
        "distribution": "compresskit-blockdiag",
        "version": "0.1.0",
    } in rows
    assert {"kind", "name", "plugin", "distribution", "version"} == set(rows[0])


def test_plugin_command_is_added_to_the_cli(plugin_site: Path) -> None:
    result = _run(plugin_site, "blockdiag-info", "768", "3072", "--blocks", "4")
    assert result.returncode == 0, result.stderr
    assert "768x3072 with 4 blocks keeps 589,824 weights" in result.stdout


def test_plugin_decomposition_is_usable_by_name(plugin_site: Path) -> None:
    code = (
        "import torch, compresskit\n"
        "registry = compresskit.Registry.from_plugins()\n"
        "dec = registry.create('decomposition', 'block_diagonal', {'blocks': 2})\n"
        "lin = torch.nn.Linear(8, 6)\n"
        "new = dec.decompose(lin, 'fc')\n"
        "x = torch.randn(3, 8)\n"
        "w = lin.weight.detach().clone(); w[:3, 4:] = 0; w[3:, :4] = 0\n"
        "ref = x @ w.T + lin.bias\n"
        "print(torch.allclose(new(x), ref, atol=1e-6), dec.estimate(lin, 'fc')[1].params)\n"
    )
    result = _run(plugin_site, code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", str(6 * 8 // 2 + 6)]


def test_blocking_the_plugin_by_entry_point_name(plugin_site: Path) -> None:
    env_code = (
        "import os; os.environ['COMPRESSKIT_DISABLE_PLUGINS'] = 'blockdiag'\n"
        "import compresskit; print(compresskit.Registry.from_plugins().names('decomposition'))"
    )
    result = _run(plugin_site, code=env_code)
    assert result.returncode == 0, result.stderr
    assert "block_diagonal" not in result.stdout


def test_plugin_failing_at_import_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    dist = tmp_path / "compresskit_broken-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: compresskit-broken\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[compresskit]\nbroken = broken_plugin\n")
    result = _run(tmp_path, "plugins")
    assert result.returncode == 6  # an environment error: an installed plugin is broken
    assert (
        "plugin 'broken' (module 'broken_plugin', from compresskit-broken) failed to import" in result.stderr
    )
    assert "needs libfoo" in result.stderr
    assert "COMPRESSKIT_DISABLE_PLUGINS=broken" in result.stderr
    assert "Traceback" not in result.stderr
