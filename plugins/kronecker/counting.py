"""Whole-model parameter and FLOP counts for a list of groups, without building anything.

Counting rule (KroneckerBERT Table 1, recomputed in ``reference/kroneckerbert.md`` §1.6): every parameter
of the model is counted once (tied weights once); a module matched by a group is counted at the
``compressed_cost`` of its spec, every other parameter (biases of unmatched layers, LayerNorms, position /
token-type embeddings, the pooler) as it is. FLOPs: linear maps only (``Linear`` / ``Conv1D``),
(2n − 1)·m per dense matrix and Eq. 7 per Kronecker layer, at ``tokens`` tokens, except modules named in
``per_sequence`` (the BERT pooler), which run on one token per sequence. Embedding lookups cost 0.

This needs only shapes, so a model built on the ``meta`` device works. Group matching: the first group
whose ``types`` (class names along the MRO) and ``names`` match, and whose ``exclude`` does not, takes the
module; ``names`` is a full regex (a string) or a list of exact names / dotted suffixes; inside a group the
first matching ``overrides`` entry replaces the group's options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compresskit import Cost, DecompositionError, class_names, dense_cost

from .decomposition import Kronecker

LINEAR_TYPES = {"Linear", "Conv1D", "Embedding"}


@dataclass(frozen=True)
class Count:
    """Totals before and after, plus per-module ``(group, spec)`` and skip reasons."""

    dense: Cost
    compressed: Cost
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.dense.params / self.compressed.params


def names_match(name: str, pattern: str | Sequence[str] | None) -> bool:
    """Full regex for a string; exact name or dotted suffix for a list; ``None`` matches everything."""
    if pattern is None:
        return True
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def find_group(
    name: str, module: nn.Module, groups: Sequence[Mapping[str, Any]]
) -> tuple[Mapping[str, Any], dict[str, Any]] | None:
    """The first group taking ``module`` and its options after overrides, or ``None``."""
    kinds = set(class_names(module))
    for group in groups:
        if not kinds & set(group.get("types", LINEAR_TYPES)):
            continue
        if not names_match(name, group.get("names")) or (
            group.get("exclude") is not None and names_match(name, group["exclude"])
        ):
            continue
        options = dict(group.get("options", {}))
        for override in group.get("overrides", ()):
            if names_match(name, override.get("names")):
                options.update(override.get("options", {}))
                break
        return group, options
    return None


def count(
    model: nn.Module,
    groups: Sequence[Mapping[str, Any]],
    *,
    tokens: int = 128,
    per_sequence: Sequence[str] = ("pooler.dense",),
) -> Count:
    """Dense and compressed totals of ``model`` under ``groups`` (only ``kronecker`` groups are priced)."""
    dense, after = Cost(0, 0), Cost(0, 0)
    specs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        before = Cost(sum(p.numel() for p in own), 0)
        if LINEAR_TYPES & set(class_names(module)) and own:
            step = 1 if names_match(name, list(per_sequence)) else tokens
            before = Cost(before.params, dense_cost(module, step).flops)
        dense, cost = dense + before, before
        found = find_group(name, module, groups) if own else None
        if found is not None:
            cost = _priced(name, module, found, specs, skipped, tokens) or before
        after = after + cost
    return Count(dense, after, specs, skipped)


def _priced(
    name: str,
    module: nn.Module,
    found: tuple[Mapping[str, Any], dict[str, Any]],
    specs: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    tokens: int,
) -> Cost | None:
    group, options = found
    if group.get("decomposition", "kronecker") != "kronecker":
        raise DecompositionError(f"{name}: this counter prices kronecker groups only, not {group!r}.")
    decomposition = Kronecker(options, where=f"groups.{group.get('name', '?')}.options")
    try:
        spec = decomposition.make_spec(module, name)
    except DecompositionError as exc:
        skipped[name] = str(exc)
        return None
    specs[name] = spec
    return decomposition.compressed_cost(module, spec, tokens)
