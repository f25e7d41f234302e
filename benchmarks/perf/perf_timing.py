"""Interleaved latency of several models (one process; A, B, C, A, B, C, ...; medians and spread)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def interleaved_ms(runs: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, Any]:
    """Per name: median, p10, p90 and min of ``rounds`` timed calls, the calls interleaved across names.

    A call that raises (e.g. out of memory) marks that name ``{"error": ...}`` and the others go on.
    """
    samples: dict[str, list[float]] = {name: [] for name in runs}
    failed: dict[str, str] = {}
    load_before = os.getloadavg()
    for _ in range(warmup):
        for name, run in runs.items():
            _call(name, run, failed)
    for _ in range(rounds):
        for name, run in runs.items():
            if name in failed:
                continue
            start = time.perf_counter()
            if _call(name, run, failed):
                samples[name].append((time.perf_counter() - start) * 1e3)
    load = [round((a + b) / 2, 2) for a, b in zip(load_before, os.getloadavg(), strict=True)]
    out: dict[str, Any] = {}
    for name, values in samples.items():
        if name in failed:
            out[name] = {"error": failed[name]}
        elif values:
            ordered = sorted(values)
            out[name] = {
                "median_ms": round(statistics.median(ordered), 3),
                "p10_ms": round(ordered[int(0.1 * (len(ordered) - 1))], 3),
                "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
                "min_ms": round(ordered[0], 3),
                "rounds": len(ordered),
                "load_avg_1_5_15": load,
            }
    return out


def _call(name: str, run: Callable[[], object], failed: dict[str, str]) -> bool:
    try:
        run()
        return True
    except (torch.OutOfMemoryError, MemoryError) as exc:
        failed[name] = f"out of memory: {str(exc).splitlines()[0][:200]}"
    except RuntimeError as exc:
        failed[name] = f"failed: {str(exc).splitlines()[0][:200]}"
    return False


def forward(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], object]:
    """One inference forward of ``model`` on ``ids``."""

    def run() -> object:
        with torch.inference_mode():
            return model(input_ids=ids)

    return run


def train_step(
    model: torch.nn.Module, ids: torch.Tensor, teacher: torch.nn.Module | None
) -> Callable[[], object]:
    """One AdamW step of ``model`` on ``ids`` (cross-entropy); with ``teacher``, a KD step (teacher forward
    under no_grad + hidden-state MSE + logit MSE), as the two-stage recipe does."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    labels = torch.zeros(ids.shape[0], dtype=torch.long)

    def run() -> object:
        model.train()
        out = model(input_ids=ids, labels=labels, output_hidden_states=teacher is not None)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                ref = teacher(input_ids=ids, output_hidden_states=True)
            pairs = zip(out.hidden_states, ref.hidden_states, strict=True)
            loss = loss + sum(torch.nn.functional.mse_loss(a, b) for a, b in pairs)
            loss = loss + torch.nn.functional.mse_loss(out.logits, ref.logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return run
