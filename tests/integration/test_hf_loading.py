"""Compressed folders through plain transformers: from_pretrained, save_pretrained, pipeline, dtype, and
loud failure where compresskit is not there to rebuild the modules."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import compresskit
from compresskit.errors import CheckpointError
from compresskit.tiny_models import main_output, tiny_inputs, tiny_model, tiny_tokenizer

EMBEDDING = {"types": ["Embedding"], "decomposition": "low_rank", "options": {"rank": 8}, "allow_tied": True}
KRON_EMBEDDING = {"types": ["Embedding"], "decomposition": "kronecker", "options": {"embedding_n": 8}}
LINEAR = {"types": ["linear_except_head"], "decomposition": "low_rank", "options": {"rank": 4}}
KRON_LINEAR = {"types": ["linear_except_head"], "decomposition": "kronecker", "options": {"b_shape": [2, 2]}}


def compressed(arch: str, groups: list[dict[str, Any]] | None = None) -> Any:
    model = tiny_model(arch)
    compresskit.decompose(model, groups or [EMBEDDING, LINEAR])
    return model


@pytest.mark.parametrize(
    ("arch", "groups"),
    [
        ("bert", [KRON_LINEAR]),
        ("gpt2", [dict(KRON_EMBEDDING, allow_tied=True), LINEAR]),  # Conv1D + Kronecker tied head
        ("t5", None),  # FFN `wo` compressed, shared embedding under three names
        ("albert", None),  # one layer shared by all layers, tied MLM head and bias
        ("bart", None),
        ("llama", None),
    ],
)
def test_from_pretrained_equals_compresskit_load(arch: str, groups: Any, tmp_path: Path) -> None:
    model, inputs = compressed(arch, groups), tiny_inputs(arch)
    expected = main_output(model, inputs)
    model.save_pretrained(tmp_path / "sp")  # transformers' own save of a compressed model
    compresskit.save(model, tmp_path / "ck")
    auto = (
        transformers.AutoModelForCausalLM if arch == "llama" else getattr(transformers, type(model).__name__)
    )
    for folder in ("sp", "ck"):
        plain = auto.from_pretrained(tmp_path / folder)
        assert type(plain) is type(model)
        assert torch.equal(main_output(plain, inputs), expected), folder
        assert torch.equal(main_output(compresskit.load(tmp_path / folder), inputs), expected), folder


def test_a_loaded_compressed_model_casts_like_any_model(tmp_path: Path) -> None:
    model = compressed("bert", [KRON_LINEAR])
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    half = loaded.half()  # transformers refuses .half() on quantized models; a compressed one is not
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert half.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float16


def test_a_folder_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    compressed("bert", [LINEAR]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["format"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"format 99.*Upgrade compresskit"):
        compresskit.load(tmp_path)


def test_base_model_class_loads_a_task_model_folder(tmp_path: Path) -> None:
    model, inputs = compressed("bert", [KRON_LINEAR]), tiny_inputs("bert")
    model.save_pretrained(tmp_path)
    base = transformers.AutoModel.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = model.bert(**inputs).last_hidden_state
        assert torch.equal(base(**inputs).last_hidden_state, expected)
    assert type(base.encoder.layer[0].attention.self.query).__name__ == "KroneckerLinear"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_saved_dtype_is_kept_and_dtype_argument_honoured(dtype: torch.dtype, tmp_path: Path) -> None:
    model = tiny_model("bert").to(dtype)
    compresskit.decompose(model, [KRON_LINEAR])
    inputs = tiny_inputs("bert")
    compresskit.save(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    for loaded in (
        compresskit.load(tmp_path),
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path),
    ):
        assert {p.dtype for p in loaded.parameters()} == {dtype}
        assert torch.equal(main_output(loaded, inputs), main_output(model, inputs))
    as_float = compresskit.load(tmp_path, dtype=torch.float32, device_map="cpu")
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    assert {p.device.type for p in as_float.parameters()} == {"cpu"}


def test_load_is_typed_by_the_model_class(tmp_path: Path) -> None:
    compresskit.save(compressed("bert", [LINEAR]), tmp_path)
    loaded: transformers.BertForSequenceClassification = compresskit.load(
        tmp_path, model_class=transformers.BertForSequenceClassification
    )
    assert isinstance(loaded, transformers.BertForSequenceClassification)


def test_pipeline_runs_on_a_compressed_folder(tmp_path: Path) -> None:
    model = compressed("bert", [KRON_LINEAR])
    tokenizer = tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    classify = transformers.pipeline("text-classification", model=str(tmp_path))
    assert type(classify.model.bert.encoder.layer[0].attention.self.query).__name__ == "KroneckerLinear"
    encoded = tokenizer(["w3 w7 w9"], return_tensors="pt")
    with torch.no_grad():
        scores = model(**encoded).logits.softmax(-1)[0]
    result = classify("w3 w7 w9")[0]
    assert result["label"] == model.config.id2label[int(scores.argmax())]
    assert result["score"] == pytest.approx(float(scores.max()), abs=1e-6)


def test_a_factor_missing_from_the_file_is_an_error_not_random_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    compressed("bert", [LINEAR]).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["bert.encoder.layer.0.output.dense.right"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"missing keys: \['bert\.encoder\.layer\.0\.output\.dense\.right'\]"
    ):
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)


WITHOUT_COMPRESSKIT = """
import sys
folder, site_packages, mode = sys.argv[1:4]
if mode == "not-installed":
    sys.path.append(site_packages)  # the venv's packages without its .pth files: compresskit is absent
    try:
        import compresskit
    except ImportError:
        pass
    else:
        raise SystemExit("compresskit is importable")
import transformers
try:
    transformers.AutoModelForSequenceClassification.from_pretrained(folder)
except RuntimeError as exc:
    print("REFUSED", exc)
else:
    print("LOADED")
print("compresskit imported:", "compresskit" in sys.modules)
"""


@pytest.mark.parametrize("mode", ["not-installed", "not-imported"])
def test_without_compresskit_transformers_refuses_the_folder(mode: str, tmp_path: Path) -> None:
    compressed("bert", [LINEAR]).save_pretrained(tmp_path / "model")
    flags = ["-I", "-S"] if mode == "not-installed" else ["-I"]
    site_packages = sysconfig.get_paths()["purelib"]
    result = subprocess.run(
        [sys.executable, *flags, "-c", WITHOUT_COMPRESSKIT, str(tmp_path / "model"), site_packages, mode],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "REFUSED" in result.stdout and "LOADED" not in result.stdout
    assert "compresskit imported: False" in result.stdout
    assert "Unknown quantization type, got compresskit" in result.stderr
    assert "MISMATCH" in result.stderr


ROUND_TRIPS = {
    # GPT-2 (Conv1D), two chained steps: a Kronecker tied embedding + head, then the Conv1D layers
    "gpt2-chained": ("gpt2", [[dict(KRON_EMBEDDING, allow_tied=True)], [LINEAR]]),
    # Llama with an untied LM head compressed on its own
    "llama-untied-head": (
        "llama",
        [[{"names": ["lm_head"], "decomposition": "low_rank", "options": {"rank": 4}}]],
    ),
    # Qwen2 with a tied head and a low-rank embedding (the walker's TiedOutputProjection)
    "qwen2-tied": ("qwen2", [[EMBEDDING], [LINEAR]]),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_save_pretrained_round_trips_keep_the_plan(case: str, tmp_path: Path) -> None:
    arch, steps = ROUND_TRIPS[case]
    model, inputs = tiny_model(arch), tiny_inputs(arch)
    for groups in steps:
        compresskit.decompose(model, groups)
    model.save_pretrained(tmp_path / "first")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "first")
    assert torch.equal(main_output(loaded, inputs), main_output(model, inputs))
    loaded.save_pretrained(tmp_path / "second")  # a loaded model saves again, plans and all
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "second")
    assert torch.equal(main_output(again, inputs), main_output(model, inputs))
    plans = json.loads((tmp_path / "second" / "config.json").read_text())["quantization_config"]["plans"]
    assert len(plans) == len(steps)
    assert [type(m).__name__ for m in again.modules()] == [type(m).__name__ for m in model.modules()]


def test_push_to_hub_uploads_what_save_pretrained_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """push_to_hub, with the Hub replaced by a local folder (no network): the same loadable files."""
    import shutil
    from types import SimpleNamespace

    from transformers.utils import hub

    remote = tmp_path / "remote"

    class LocalHub:
        def create_repo(self, repo_id: str, **kwargs: Any) -> Any:
            (remote / repo_id).mkdir(parents=True, exist_ok=True)
            return SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> Any:
            for operation in operations:
                target = remote / repo_id / operation.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(operation.path_or_fileobj, target)
            return SimpleNamespace(oid="local")

    monkeypatch.setattr(hub, "hf_api", lambda: LocalHub())
    monkeypatch.setattr(
        hub, "create_and_tag_model_card", lambda *a, **k: SimpleNamespace(save=lambda p: None)
    )
    model, inputs = compressed("gpt2", [dict(KRON_EMBEDDING, allow_tied=True), LINEAR]), tiny_inputs("gpt2")
    model.push_to_hub("someone/tiny-compressed")
    model.save_pretrained(tmp_path / "local")
    pushed = remote / "someone" / "tiny-compressed"
    assert sorted(p.name for p in pushed.iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    assert (pushed / "config.json").read_text() == (tmp_path / "local" / "config.json").read_text()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(pushed)
    assert torch.equal(main_output(loaded, inputs), main_output(model, inputs))


def test_dequantize_gives_the_dense_model_in_place(tmp_path: Path) -> None:
    model, inputs = compressed("bert", [KRON_LINEAR]), tiny_inputs("bert")
    expected = main_output(model, inputs)
    model.save_pretrained(tmp_path / "compressed")
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "compressed")
    dense = loaded.dequantize()
    assert dense is loaded and not any(
        isinstance(m, compresskit.CompressedModuleMixin) for m in dense.modules()
    )
    torch.testing.assert_close(main_output(dense, inputs), expected, atol=1e-5, rtol=1e-4)
    dense.save_pretrained(tmp_path / "dense")
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())


HOOK_CHECK = """
import sys
import compresskit
assert "transformers.quantizers.auto" not in sys.modules, "import compresskit stays light"
from transformers.quantizers import auto
print("registered:", "compresskit" in auto.AUTO_QUANTIZER_MAPPING and "compresskit" in auto.AUTO_QUANTIZATION_CONFIG_MAPPING)
"""


def test_import_compresskit_registers_when_transformers_loads_its_quantizers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-c", HOOK_CHECK], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "registered: True" in result.stdout
