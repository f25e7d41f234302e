"""SQuAD features: question + context windows with a document stride, and answer token positions.

A context longer than ``max_length`` is cut into overlapping windows (``stride`` tokens shared
between consecutive windows; Devlin et al., 2019, §4.2). Each window is one *feature*; it keeps the
character offsets of its context tokens so predicted token spans map back to text. For training,
``start_positions`` / ``end_positions`` are the first and last tokens of the (first) gold answer; a
window that does not contain the whole answer, or an unanswerable (v2.0) question, points both at
the ``[CLS]`` token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compresskit.plugin import require_fast_tokenizer

from .data import SquadExample


@dataclass(frozen=True)
class FeatureMeta:
    """What post-processing needs for one window: its example and per-token context offsets."""

    example_index: int
    offsets: tuple[tuple[int, int] | None, ...]  # None for question / special tokens
    cls_index: int


def build_features(
    examples: Sequence[SquadExample], tokenizer: Any, *, max_length: int, doc_stride: int
) -> tuple[list[dict[str, Any]], list[FeatureMeta]]:
    """Tokenise every example into windows; return model inputs (with positions) and their metadata."""
    require_fast_tokenizer(tokenizer, "SQuAD feature creation")
    question_first = getattr(tokenizer, "padding_side", "right") == "right"
    questions = [example.question.lstrip() for example in examples]
    contexts = [example.context for example in examples]
    encoded = tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    context_id = 1 if question_first else 0
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    features, metas = [], []
    for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        input_ids = encoded["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        offsets = tuple(
            tuple(o) if sequence_ids[t] == context_id else None
            for t, o in enumerate(encoded["offset_mapping"][i])
        )
        start, end = answer_positions(examples[example_index], offsets, cls_index)
        features.append({**{k: encoded[k][i] for k in keys}, "start_positions": start, "end_positions": end})
        metas.append(FeatureMeta(example_index, offsets, cls_index))
    return features, metas


def answer_positions(
    example: SquadExample, offsets: Sequence[tuple[int, int] | None], cls_index: int
) -> tuple[int, int]:
    """Token indices of the first gold answer inside this window, or ``(cls, cls)`` when it is not."""
    if example.is_impossible or not example.answer_texts:
        return cls_index, cls_index
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answer_texts[0])
    context_tokens = [t for t, offset in enumerate(offsets) if offset is not None]
    if not context_tokens:
        return cls_index, cls_index
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:  # type: ignore[index]
        return cls_index, cls_index
    start = next(t for t in context_tokens if offsets[t][1] > start_char)  # type: ignore[index]
    end = next(t for t in reversed(context_tokens) if offsets[t][0] < end_char)  # type: ignore[index]
    return start, end
