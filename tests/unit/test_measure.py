"""compresskit.measure: structure and sanity relations of measurements (never timing thresholds)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from compresskit import ConfigError, LatencyResult, measure_model
from compresskit.measure import (
    count_parameters,
    dense_model_flops,
    measure_latency,
    measurement_metrics,
    size_on_disk_mb,
)


def tiny_bert(hidden: int = 32, layers: int = 2) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def test_parameters_count_tied_weights_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tie the output layer to the embedding table
    assert count_parameters(model) == 40
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 0


def test_dense_flops_follow_the_paper_convention() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Embedding(7, 3))
    # (2n - 1)·m per token for each m×n matrix, embeddings free.
    assert dense_model_flops(model, tokens=4) == ((2 * 6 - 1) * 5 + (2 * 5 - 1) * 3) * 4


def test_size_on_disk_sums_weight_files_recursively(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 1_500_000)
    (tmp_path / "sub" / "b.safetensors").write_bytes(b"y" * 500_000)
    (tmp_path / "tokenizer.json").write_bytes(b"z" * 700_000)  # not the model's size
    assert size_on_disk_mb(tmp_path) == pytest.approx(2.0)
    assert size_on_disk_mb(tmp_path / "a.bin") == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="does not exist"):
        size_on_disk_mb(tmp_path / "missing")


def test_latency_statistics_from_a_fake_clock() -> None:
    ticks = itertools.count()
    durations = iter([0.004, 0.001, 0.003, 0.002, 0.010])
    clock_values: list[float] = []

    def clock() -> float:
        # start/stop pairs: each stop is the start plus the next duration
        if next(ticks) % 2 == 0:
            clock_values.append(float(len(clock_values)))
            return clock_values[-1]
        return clock_values[-1] + next(durations)

    model = tiny_bert()
    result = measure_latency(model, batch_size=2, seq_len=8, warmup=1, repeats=5, threads=1, clock=clock)
    assert result.median_ms == pytest.approx(3.0)
    assert result.min_ms == pytest.approx(1.0)
    assert result.mean_ms == pytest.approx(4.0)
    assert result.p90_ms == pytest.approx(4.0 + 0.6 * 6.0)  # between 4 ms and 10 ms
    assert result.throughput_per_s == pytest.approx(2 / 0.003)
    assert (result.batch_size, result.seq_len, result.repeats, result.threads) == (2, 8, 5, 1)


def test_threads_are_restored_and_training_mode_kept() -> None:
    model = tiny_bert().train()
    before = torch.get_num_threads()
    measure_latency(model, batch_size=1, seq_len=4, warmup=0, repeats=1, threads=1)
    assert torch.get_num_threads() == before
    assert model.training


def test_measure_model_bigger_model_is_bigger(tmp_path: Path) -> None:
    small, big = tiny_bert(hidden=16), tiny_bert(hidden=32)
    results = {}
    for label, model in (("small", small), ("big", big)):
        model.save_pretrained(tmp_path / label)
        results[label] = measure_model(
            model,
            seq_len=8,
            batch_size=2,
            warmup=1,
            repeats=3,
            threads=1,
            saved_dir=tmp_path / label,
            reference_params=count_parameters(big),
        )
    small_r, big_r = results["small"], results["big"]
    assert small_r["params"] < big_r["params"]
    assert small_r["size_mb"] < big_r["size_mb"]
    assert small_r["flops"] < big_r["flops"]
    assert big_r["compression_factor"] == pytest.approx(1.0)
    assert small_r["compression_factor"] > 1.0
    latency = small_r["latency"]
    assert latency["repeats"] == 3 and latency["median_ms"] > 0 and latency["p90_ms"] >= latency["min_ms"]
    assert latency["process_peak_mb"] > 0 and latency["process_peak_mb"] >= latency["peak_memory_mb"]
    assert small_r["flops_source"] == "dense linear layers"
    assert LatencyResult(**{k: v for k, v in latency.items() if k != "throughput_per_s"}).repeats == 3


def test_plan_flops_win_and_metrics_use_shared_names() -> None:
    result = measure_model(tiny_bert(), seq_len=4, warmup=0, repeats=2, threads=1, flops=1234)
    assert result["flops"] == 1234 and result["flops_source"] == "plan"
    metrics = measurement_metrics(result)
    assert metrics["flops"] == 1234.0
    assert metrics["params"] == float(result["params"])
    assert metrics["latency_ms"] == result["latency"]["median_ms"]
    assert "size_mb" not in metrics and "compression_factor" not in metrics  # not measured → not logged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"repeats": 0}, "repeats"), ({"batch_size": -1}, "batch_size"), ({"warmup": -2}, "warmup")],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        measure_latency(tiny_bert(), **kwargs)


def test_models_without_vocab_need_explicit_inputs() -> None:
    with pytest.raises(ConfigError, match="inputs="):
        measure_latency(nn.Linear(3, 3))
    result = measure_latency(nn.Linear(3, 3), inputs={"input": torch.ones(4, 3)}, warmup=0, repeats=2)
    assert result.repeats == 2
