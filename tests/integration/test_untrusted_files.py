"""Nothing runs from a model folder: no custom code (``auto_map``), no pickle beyond ``weights_only``.

A planted folder carries both attacks: a ``config.json`` whose ``auto_map`` points at a Python file of
the folder (with a ``model_type`` transformers does not know, so transformers would ask "run custom
code? [y/N]"), and a ``pytorch_model.bin`` pickle whose unpickling would write a marker file. Every
command and API entry point that reads a model folder is run on it with stdin closed: each must fail
with a clear message, never prompt, and the markers must not exist. A meta-test then checks the source:
every ``from_pretrained`` passes ``trust_remote_code=False`` explicitly and every ``torch.load`` passes
``weights_only=True``; nothing calls ``pickle.load``.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_pipeline import make_tiny_teacher

from compresskit.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = str(REPO_ROOT / "configs" / "demo-minilm-sst2.toml")


class _Payload:
    """Unpickling this writes ``marker`` (what a malicious weights file would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "pickle payload ran")


def plant_remote_code(folder: Path) -> tuple[Path, Path]:
    """``folder`` with an ``auto_map`` to its own ``evil.py`` (which writes a marker when imported)."""
    marker = folder.parent / f"{folder.name}-REMOTE-CODE-RAN"
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evilbert"
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoModelForSequenceClassification": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n"
        "from transformers import BertTokenizerFast as EvilTokenizer\n"
    )
    return folder, marker


def plant_malicious_pickle(folder: Path) -> tuple[Path, Path]:
    """``folder`` with its safetensors replaced by a ``pytorch_model.bin`` carrying a payload."""
    import pickle

    marker = folder.parent / f"{folder.name}-PICKLE-RAN"
    (folder / "model.safetensors").unlink(missing_ok=True)
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, handle)
    return folder, marker


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, list[Path]]:
    folder = make_tiny_teacher(tmp_path_factory.mktemp("untrusted") / "model", data_dir)
    _, code_marker = plant_remote_code(folder)
    _, pickle_marker = plant_malicious_pickle(folder)
    return folder, [code_marker, pickle_marker]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compresskit", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_command_runs_code_from_a_planted_folder(
    planted: tuple[Path, list[Path]], data_dir: Path, tmp_path: Path
) -> None:
    folder, markers = planted
    glue = [
        "--task",
        "glue",
        "--task-option",
        "task=sst2",
        "--task-option",
        f"data_dir={data_dir / 'glue-sample'}",
    ]
    separate = [  # in a child process with stdin closed: a prompt would show (or fail) there
        ["evaluate", "--model", str(folder), *glue],
        ["compress", "--model", str(folder), "--preset", "kroneckerbert21", "--output", str(tmp_path / "c")],
    ]
    for argv in separate:
        result = _cli(*argv)
        assert result.returncode == 3, (argv, result.stderr)
        assert "never runs code from model files" in result.stderr and "Traceback" not in result.stderr
        assert "[y/N]" not in result.stdout + result.stderr
        assert not any(marker.exists() for marker in markers), argv
    in_process = [
        ["inspect", "--model", str(folder)],
        ["finetune", "--model", str(folder), *glue, "--output", str(tmp_path / "f"), "--max-steps", "1"],
    ]
    for argv in in_process:
        assert main(argv) in (3, 4), argv
        assert not any(marker.exists() for marker in markers), argv


def test_no_api_entry_point_runs_code_from_a_planted_folder(planted: tuple[Path, list[Path]]) -> None:
    import compresskit
    from compresskit.errors import CompressKitError

    folder, markers = planted
    for call in (
        lambda: compresskit.evaluate(str(folder), "text"),
        lambda: compresskit.compress(str(folder), DEMO, output_dir=str(folder.parent / "r")),
    ):
        with pytest.raises(CompressKitError):
            call()
        assert not any(marker.exists() for marker in markers)


def test_the_pickle_alone_is_refused_by_every_loader(tmp_path: Path, data_dir: Path) -> None:
    """With a config transformers knows, loading reaches the pickle: ``weights_only`` refuses it."""
    from compresskit.errors import CheckpointError
    from compresskit.models import check_weight_files, load_task_model

    folder, marker = plant_malicious_pickle(make_tiny_teacher(tmp_path / "model", data_dir))

    class _Task:
        name = "glue"
        problem_type = "single_label_classification"

        def model_kwargs(self) -> dict[str, object]:
            return {"num_labels": 2}

    for load in (lambda: check_weight_files(folder), lambda: load_task_model(folder, _Task())):
        with pytest.raises(CheckpointError, match="weights_only=True"):
            load()
        assert not marker.exists()


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
    ]


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
        if (
            keyword.arg is None
            and isinstance(keyword.value, ast.Name)
            and keyword.value.id == "NO_REMOTE_CODE"
        ):
            return False if name == "trust_remote_code" else None
    return "<missing>"


def test_source_passes_trust_remote_code_false_and_weights_only_true() -> None:
    from compresskit.models import NO_REMOTE_CODE

    assert NO_REMOTE_CODE == {"trust_remote_code": False}
    problems = []
    files = [*(REPO_ROOT / "compresskit").rglob("*.py"), *(REPO_ROOT / "plugins").rglob("*.py")]
    for file in files:
        if "build" in file.parts:
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        where = file.relative_to(REPO_ROOT)
        for call in _calls(tree, "from_pretrained"):
            if _keyword(call, "trust_remote_code") is not False:
                problems.append(f"{where}:{call.lineno}: from_pretrained without trust_remote_code=False")
        for call in _calls(tree, "load"):
            module = getattr(call.func.value, "id", "") if isinstance(call.func, ast.Attribute) else ""
            if module == "torch" and _keyword(call, "weights_only") is not True:
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if module == "pickle":
                problems.append(f"{where}:{call.lineno}: pickle.load")
    assert not problems, "\n".join(problems)
