"""Save / load / merge of compressed models, and the inspect / compress commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import compresskit
from compresskit.cli import main as cli_main
from compresskit.errors import CheckpointError, PluginError
from compresskit.registry import Registry
from compresskit.tiny_models import main_output, tiny_inputs, tiny_model

EMBEDDING = {"types": ["Embedding"], "decomposition": "low_rank", "options": {"rank": 8}, "allow_tied": True}
LINEAR = {"types": ["linear_except_head"], "decomposition": "low_rank", "options": {"rank": 4}}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _compressed(arch: str, registry: Registry, groups: list[dict[str, Any]] | None = None) -> torch.nn.Module:
    model = tiny_model(arch)
    linear = dict(LINEAR, exclude=["wo"]) if arch == "t5" else LINEAR
    compresskit.decompose(model, groups or [EMBEDDING, linear], registry=registry)
    return model


@pytest.mark.parametrize("arch", ["gpt2", "t5", "albert"])
def test_load_rebuilds_the_structure_with_bit_identical_outputs(
    arch: str, registry: Registry, tmp_path: Path
) -> None:
    model = _compressed(arch, registry)
    inputs = tiny_inputs(arch)
    compresskit.save(model, tmp_path)
    files = {p.name for p in tmp_path.iterdir()} - {"generation_config.json"}
    assert files == {"README.md", "config.json", "model.safetensors"}
    loaded = compresskit.load(tmp_path, registry=registry)
    assert type(loaded) is type(model)
    assert torch.equal(main_output(loaded, inputs), main_output(model, inputs))
    plan = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert plan["quant_method"] == "compresskit"
    assert plan["plans"][0]["modules"][0]["plugin"]["distribution"] == "compresskit"
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_kronecker_model_reloads_bit_identically(registry: Registry, tmp_path: Path) -> None:
    options = {"a_shape": [4, 4], "b_shape": [8, 8], "num_terms": 2}
    model = _compressed(
        "bert", registry, [{"names": ["query", "key"], "decomposition": "kronecker", "options": options}]
    )
    compresskit.save(model, tmp_path)
    inputs = tiny_inputs("bert")
    assert torch.equal(
        main_output(compresskit.load(tmp_path, registry=registry), inputs), main_output(model, inputs)
    )


def test_load_names_a_missing_plugin(registry: Registry, tmp_path: Path) -> None:
    compresskit.save(_compressed("bert", registry, [LINEAR]), tmp_path)
    without = Registry.from_plugins(compresskit.get_plugin_manager(disabled=["low_rank"]))
    with pytest.raises(
        PluginError, match=r"'low_rank' from plugin 'compresskit_plugins\.low_rank'.*not installed"
    ):
        compresskit.load(tmp_path, registry=without)


def test_weights_that_do_not_match_the_plan_name_the_file(registry: Registry, tmp_path: Path) -> None:
    compresskit.save(_compressed("bert", registry, [LINEAR]), tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"]["plans"][0]["modules"][0]["spec"]["rank"] = 3
    config_file.write_text(json.dumps(config))
    weights = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=r"the weights do not match the compression plan"):
        compresskit.load(tmp_path, registry=registry)
    assert (tmp_path / "model.safetensors").read_bytes() == weights


def test_missing_keys_are_listed(registry: Registry, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    compresskit.save(_compressed("bert", registry, [LINEAR]), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["bert.pooler.dense.left"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: \['bert\.pooler\.dense\.left'\]"):
        compresskit.load(tmp_path, registry=registry)


def test_load_of_a_folder_without_a_plan_is_a_checkpoint_error(tmp_path: Path) -> None:
    tiny_model("bert").save_pretrained(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"no compresskit quantization_config.*compression_plan\.json is missing"
    ):
        compresskit.load(tmp_path)


MERGED_CHECK = """
import sys, torch, transformers
folder, expected = sys.argv[1], torch.load(sys.argv[2])
for name, cls in (("gpt2", transformers.GPT2LMHeadModel), ("t5", transformers.T5ForConditionalGeneration)):
    model = cls.from_pretrained(f"{folder}/{name}").eval()
    with torch.no_grad():
        logits = model(**expected[name]["inputs"]).logits
    print(name, float((logits - expected[name]["logits"]).abs().max()),
          model.get_output_embeddings().weight is model.get_input_embeddings().weight)
print("compresskit imported:", any(m.startswith("compresskit") for m in sys.modules))
"""


def test_merged_model_loads_with_plain_transformers(registry: Registry, tmp_path: Path) -> None:
    expected = {}
    for arch in ("gpt2", "t5"):
        model = _compressed(arch, registry)
        merged = compresskit.merge(model)
        assert not any("LowRank" in type(m).__name__ for m in merged.modules())
        if arch == "gpt2":
            assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
        merged.save_pretrained(tmp_path / arch)
        expected[arch] = {"inputs": tiny_inputs(arch), "logits": main_output(model, tiny_inputs(arch))}
    torch.save(expected, tmp_path / "expected.pt")
    result = subprocess.run(
        [sys.executable, "-I", "-c", MERGED_CHECK, str(tmp_path), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for arch in ("gpt2", "t5"):
        difference, tied = lines[arch].split()
        assert float(difference) < 1e-4 and tied == "True"
    assert lines["compresskit"] == "imported: False"


STRATEGY = """
[[steps]]
kind = "decompose"
decomposition = "low_rank"
[[steps.groups]]
name = "attention"
names = ["query", "key", "value"]
options = { rank = 4 }
"""


def test_inspect_changes_nothing_and_compress_saves_a_loadable_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "dense"
    tiny_model("bert").save_pretrained(source)
    (tmp_path / "s.toml").write_text(STRATEGY)
    before = sorted(p.name for p in source.iterdir())
    assert cli_main(["inspect", "--model", str(source), "--config", str(tmp_path / "s.toml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["modules"]) == 6 and plan["totals"]["params_after"] < plan["totals"]["params_before"]
    assert sorted(p.name for p in source.iterdir()) == before
    assert cli_main(["inspect", "--model", str(source)]) == 0
    assert "bert.encoder.layer.1.attention.self.query" in capsys.readouterr().out
    out = tmp_path / "out"
    argv = ["compress", "--model", str(source), "--config", str(tmp_path / "s.toml"), "--output", str(out)]
    with pytest.warns(UserWarning, match=r"has no tokenizer, so .* has none either"):  # not usable alone
        assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "attention" in printed and "counting rule" in printed
    loaded = compresskit.load(out)
    assert type(loaded.bert.encoder.layer[0].attention.self.query).__name__ == "LowRankLinear"


def test_cli_reports_no_match_as_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "dense"
    tiny_model("bert").save_pretrained(source)
    (tmp_path / "s.toml").write_text(STRATEGY.replace('"query"', '"qeury"'))
    assert cli_main(["inspect", "--model", str(source), "--config", str(tmp_path / "s.toml")]) == 3
    assert "'qeury' matched no module" in capsys.readouterr().err


def test_kronecker_tied_head_reloads_and_merges_tied(registry: Registry, tmp_path: Path) -> None:
    options = {"embedding_n": 8, "num_terms": 2}
    groups = [{"names": ["wte"], "decomposition": "kronecker", "options": options, "allow_tied": True}]
    model, inputs = _compressed("gpt2", registry, groups), tiny_inputs("gpt2")
    compresskit.save(model, tmp_path)
    assert torch.equal(
        main_output(compresskit.load(tmp_path, registry=registry), inputs), main_output(model, inputs)
    )
    merged = compresskit.merge(model)
    assert type(merged.lm_head) is torch.nn.Linear and merged.lm_head.weight is merged.transformer.wte.weight
    torch.testing.assert_close(main_output(merged, inputs), main_output(model, inputs), atol=1e-5, rtol=1e-4)


def test_load_accepts_an_auto_class(registry: Registry, tmp_path: Path) -> None:
    import transformers

    model, inputs = _compressed("gpt2", registry), tiny_inputs("gpt2")
    compresskit.save(model, tmp_path)
    loaded = compresskit.load(tmp_path, registry=registry, model_class=transformers.AutoModelForCausalLM)
    assert type(loaded) is type(model)
    assert torch.equal(main_output(loaded, inputs), main_output(model, inputs))


def test_commands_refuse_a_folder_without_a_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_model("bert").save_pretrained(tmp_path / "no-tokenizer")
    argv = [
        "evaluate",
        "--model",
        str(tmp_path / "no-tokenizer"),
        "--task",
        "glue",
        "--task-option",
        "task=sst2",
    ]
    assert cli_main(argv) == 3  # a configuration error: the folder given lacks what it needs
    error = capsys.readouterr().err
    assert (
        "has no tokenizer" in error
        and "tokenizer.save_pretrained(folder)" in error
        and "--tokenizer" in error
    )
    with pytest.raises(compresskit.ConfigError, match="has no tokenizer"):
        compresskit.evaluate(tmp_path / "no-tokenizer", "glue", task="sst2")
