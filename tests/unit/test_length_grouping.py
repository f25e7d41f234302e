"""Length-grouped batches: every example once per epoch, little padding, epoch-seeded order."""

from __future__ import annotations

import random
from typing import Any

import torch

from compresskit.tasks import PaddingCollator, list_dataloader


class Tokenizer:
    pad_token_id = 0
    padding_side = "right"


def features(n: int = 640, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    lengths = [rng.choice([4, 5, 6, 40, 60, 120]) for _ in range(n)]
    return [{"input_ids": [i + 1] * length, "labels": i % 2} for i, length in enumerate(lengths)]


def epoch(loader: Any, number: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(number) if hasattr(loader.sampler, "set_epoch") else None
    return [batch["input_ids"] for batch in loader]


def padding(batches: list[torch.Tensor]) -> float:
    return sum(int((b == 0).sum()) for b in batches) / sum(b.numel() for b in batches)


def make(items: list[dict[str, Any]], **kwargs: Any) -> Any:
    return list_dataloader(items, PaddingCollator(Tokenizer()), batch_size=16, seed=3, **kwargs)


def test_grouped_epoch_sees_every_example_once_with_far_less_padding() -> None:
    items = features()
    grouped = epoch(make(items, shuffle=True, group_by_length=True), 0)
    shuffled = epoch(make(items, shuffle=True), 0)
    seen = sorted(int(row[0]) for batch in grouped for row in batch)
    assert seen == list(range(1, len(items) + 1))
    assert padding(grouped) < 0.2 and padding(shuffled) > 0.6


def test_grouped_order_depends_on_seed_and_epoch_only() -> None:
    items = features()
    first, again = (
        make(items, shuffle=True, group_by_length=True),
        make(items, shuffle=True, group_by_length=True),
    )
    order = [b[:, 0].tolist() for b in epoch(first, 1)]
    assert order == [b[:, 0].tolist() for b in epoch(again, 1)]  # same seed and epoch: same batches
    assert order != [b[:, 0].tolist() for b in epoch(again, 2)]  # a new epoch: a new order
    assert order == [b[:, 0].tolist() for b in epoch(first, 1)]  # epoch 1 again (resume): the same


def test_unshuffled_grouping_reads_longest_first() -> None:
    widths = [b.shape[1] for b in epoch(make(features(), group_by_length=True), 0)]
    assert widths == sorted(widths, reverse=True)
