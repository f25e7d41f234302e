"""Test-wide settings: offline, small thread count, and no file written outside tmp folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("COMPRESSKIT_DISABLE_PLUGINS", None)
# measured-dispatch choices persist per user by default: keep the tests' choices out of ~/.cache
os.environ.setdefault("COMPRESSKIT_DISPATCH_CACHE", str(Path(tempfile.mkdtemp()) / "dispatch.json"))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own MLflow sqlite store and datasets cache."""
    base = tmp_path_factory.mktemp("tracking")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(base / "hf-datasets"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from compresskit.defaults import shared_data_dir

    return shared_data_dir()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from compresskit.defaults import default_teacher_path

    return default_teacher_path()
