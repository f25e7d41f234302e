"""What a compression step will do (:class:`CompressionPlan`) and did (:class:`CompressionReport`).

Both are frozen, JSON-able dataclasses: one structure feeds the CLI table, ``--json``, MLflow and the
``compression_plan.json`` saved beside a compressed model.

Counting rule (KroneckerBERT, Tahaei et al. 2022, §3.2-3.3): parameters are the numel of weights and
biases; FLOPs count linear maps only, ``(2n - 1)·m`` per token for a dense m×n matrix, at ``tokens``
tokens; an embedding lookup costs no FLOPs. Reconstruction error is ``‖W − Ŵ‖_F / ‖W‖_F`` with Ŵ the
replacement's ``dense_weight()``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from compresskit.decomposition import DEFAULT_TOKENS, Cost
from compresskit.report_table import format_table

COUNTING_RULE = (
    "params = numel of weights and biases; FLOPs = linear maps only, (2n-1)*m per token for a dense "
    "m x n matrix, times {tokens} tokens; embedding lookups 0 FLOPs (KroneckerBERT, Tahaei et al. 2022)"
)


@dataclass(frozen=True)
class PlannedModule:
    """One module to replace: where, by what, with which spec, at what cost."""

    name: str
    class_name: str
    group: str
    decomposition: str
    options: Mapping[str, Any]
    spec: Mapping[str, Any]
    before: Cost
    after: Cost
    aliases: tuple[str, ...] = ()
    tied_outputs: tuple[str, ...] = ()
    plugin: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class_name": self.class_name,
            "group": self.group,
            "decomposition": self.decomposition,
            "options": _jsonable(self.options),
            "spec": _jsonable(self.spec),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "aliases": list(self.aliases),
            "tied_outputs": list(self.tied_outputs),
            "plugin": dict(self.plugin),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedModule:
        return cls(
            name=data["name"],
            class_name=data["class_name"],
            group=data["group"],
            decomposition=data["decomposition"],
            options=dict(data.get("options", {})),
            spec=dict(data["spec"]),
            before=Cost(**data["before"]),
            after=Cost(**data["after"]),
            aliases=tuple(data.get("aliases", ())),
            tied_outputs=tuple(data.get("tied_outputs", ())),
            plugin=dict(data.get("plugin", {})),
        )


@dataclass(frozen=True)
class SkippedModule:
    """A module a group selected but that is left as it is, and why."""

    name: str
    class_name: str
    group: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "class_name": self.class_name, "group": self.group, "reason": self.reason}


@dataclass(frozen=True)
class CompressionPlan:
    """The pure result of planning: nothing allocated, nothing changed."""

    modules: tuple[PlannedModule, ...]
    skipped: tuple[SkippedModule, ...] = ()
    excluded: tuple[SkippedModule, ...] = ()
    model_params: int = 0
    tokens: int = DEFAULT_TOKENS

    @property
    def counting_rule(self) -> str:
        return COUNTING_RULE.format(tokens=self.tokens)

    @property
    def before(self) -> Cost:
        return sum((m.before for m in self.modules), Cost(0, 0))

    @property
    def after(self) -> Cost:
        return sum((m.after for m in self.modules), Cost(0, 0))

    @property
    def model_params_after(self) -> int:
        return self.model_params - self.before.params + self.after.params

    def to_dict(self) -> dict[str, Any]:
        return {
            "modules": [m.to_dict() for m in self.modules],
            "skipped": [s.to_dict() for s in self.skipped],
            "excluded": [s.to_dict() for s in self.excluded],
            "totals": _totals(self.before, self.after, self.model_params, self.model_params_after),
            "tokens": self.tokens,
            "counting_rule": self.counting_rule,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        return cls(
            modules=tuple(PlannedModule.from_dict(m) for m in data["modules"]),
            skipped=tuple(SkippedModule(**s) for s in data.get("skipped", ())),
            excluded=tuple(SkippedModule(**s) for s in data.get("excluded", ())),
            model_params=int(data.get("totals", {}).get("model_params_before", 0)),
            tokens=int(data.get("tokens", DEFAULT_TOKENS)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        """Aligned tables: planned modules, then skipped and excluded ones with reasons, then totals."""
        return CompressionReport(self).format()


@dataclass(frozen=True)
class CompressionReport:
    """What :func:`compresskit.decompose` did: the plan plus the measured reconstruction errors."""

    plan: CompressionPlan
    errors: Mapping[str, float | None] = field(default_factory=dict)

    def with_errors(self, errors: Mapping[str, float | None]) -> CompressionReport:
        return replace(self, errors=dict(errors))

    def to_dict(self) -> dict[str, Any]:
        data = self.plan.to_dict()
        for module in data["modules"]:
            module["relative_error"] = self.errors.get(module["name"])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        plan = self.plan
        columns = ["module", "type", "group", "decomposition", "params", "params after", "MFLOPs"]
        columns += ["MFLOPs after", "rel. error"]
        rows = [
            [
                m.name,
                m.class_name,
                m.group,
                m.decomposition,
                m.before.params,
                m.after.params,
                m.before.flops / 1e6,
                m.after.flops / 1e6,
                _error_cell(self.errors.get(m.name)),
            ]
            for m in plan.modules
        ]
        before, after = plan.before, plan.after
        flops = [before.flops / 1e6, after.flops / 1e6]
        rows.append(["total", "", "", "", before.params, after.params, *flops, ""])
        parts = [format_table(columns, rows, align_right=columns[4:])]
        for title, entries in (("skipped", plan.skipped), ("excluded", plan.excluded)):
            if entries:
                body = [[s.name, s.class_name, s.group, s.reason] for s in entries]
                parts.append(f"\n{title}:\n" + format_table(["module", "type", "group", "reason"], body))
        ratio = plan.model_params / max(plan.model_params_after, 1)
        parts.append(
            f"\nmodel parameters: {plan.model_params:,} -> {plan.model_params_after:,} "
            f"(compression ratio {ratio:.2f}x)\ncounting rule: {plan.counting_rule}"
        )
        return "\n".join(parts)


def _totals(before: Cost, after: Cost, model_before: int, model_after: int) -> dict[str, int]:
    return {
        "params_before": before.params,
        "params_after": after.params,
        "flops_before": before.flops,
        "flops_after": after.flops,
        "model_params_before": model_before,
        "model_params_after": model_after,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _error_cell(error: float | None) -> str:
    return "-" if error is None else f"{error:.3g}"
