"""Who writes under ``accelerate launch``, and the refusal of sharded back-ends (FSDP, DeepSpeed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compresskit.distributed import check_supported_launch, is_main_process, world_size
from compresskit.errors import UsageError
from compresskit.pipeline import Pipeline
from compresskit.strategy import Strategy


def test_the_launcher_environment_names_the_main_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "3")  # without a world size, a stray RANK does not demote the process
    assert world_size() == 1 and is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert world_size() == 2 and not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


@pytest.mark.parametrize(
    ("variable", "name"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_sharded_launches_are_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, name: str
) -> None:
    check_supported_launch()  # nothing set: fine
    monkeypatch.setenv(variable, "true")
    strategy = Strategy.from_dict({"name": "x", "steps": [{"kind": "distill", "distiller": "logits_kd"}]})
    with pytest.raises(UsageError, match=rf"{name}.*--multi_gpu"):
        Pipeline(strategy, output_dir=tmp_path / "run").run()
    assert not (tmp_path / "run").exists()  # refused before the run folder (or its lock) was made
