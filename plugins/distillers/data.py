"""Batches for a teacher and a student with different tokenizers.

:class:`PairedCollator` tokenises each raw example twice and yields
``{"student_inputs": {...}, "teacher_inputs": {...}, "labels": tensor}``, the batch format every
built-in distiller accepts (see :func:`.common.split_batch`). Only sequence-level losses (logits, task)
make sense across different tokenizations; token-level losses report a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class PairedCollator:
    """Collate raw examples (dicts with text fields and a label) for two tokenizers."""

    def __init__(
        self,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        *,
        text_fields: Sequence[str] = ("sentence",),
        label_field: str = "label",
        student_max_length: int = 128,
        teacher_max_length: int = 128,
    ) -> None:
        self.tokenizers = {"student": student_tokenizer, "teacher": teacher_tokenizer}
        self.max_lengths = {"student": student_max_length, "teacher": teacher_max_length}
        self.text_fields = tuple(text_fields)
        self.label_field = label_field

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        texts = [[example[f] for example in examples] for f in self.text_fields]
        batch: dict[str, Any] = {}
        for role, tokenizer in self.tokenizers.items():
            encoded = tokenizer(
                *texts,
                truncation=True,
                max_length=self.max_lengths[role],
                padding=True,
                return_tensors="pt",
            )
            batch[f"{role}_inputs"] = dict(encoded)
        if examples and self.label_field in examples[0]:
            batch["labels"] = torch.tensor([example[self.label_field] for example in examples])
        return batch
