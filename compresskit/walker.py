"""The generic module-rewriting walker: plan → build → swap, for any Hugging Face Transformer.

- :func:`plan_compression` is pure: it reads shapes only (works on a ``meta``-device model) and returns
  a :class:`~compresskit.report.CompressionPlan` with every selected, skipped (with its reason) and
  excluded module and the predicted parameters and FLOPs.
- :func:`build_replacements` creates every replacement; if any fails, nothing has been changed yet.
- :func:`swap_modules` resolves every parent first, then only runs ``setattr``: it cannot fail halfway.

Shared structure is handled on purpose:

- one module object reachable under several names (``named_modules(remove_duplicate=False)``) is
  replaced once and the replacement is set at every name; ALBERT's one layer shared by all layers is
  one module, so it gets one replacement, shared exactly as before;
- modules that share a weight tensor (an input embedding tied with the LM head, T5 / BART embeddings
  shared by encoder and decoder) are *tied*: refused with a reason unless the group sets
  ``allow_tied = true``; then the embedding's replacement is set at every embedding that shares it, and
  every tied output projection becomes a :class:`TiedOutputProjection` computing logits from that same
  replacement, so the weights stay tied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresskit.compressed import CompressedModuleMixin
from compresskit.decomposition import DEFAULT_TOKENS, Cost, Decomposition, class_names, dense_bias, dense_cost
from compresskit.errors import CompressKitError, DecompositionError, NonFiniteWeightsError
from compresskit.registry import Registry
from compresskit.report import CompressionPlan, CompressionReport, PlannedModule, SkippedModule
from compresskit.targets import Group, head_names, matches_types, no_match_error, parse_groups, parse_step

#: What :func:`plan_compression` accepts as a strategy: groups, a decompose step, or a preset name.
GroupsLike = str | Mapping[str, Any] | Sequence[Mapping[str, Any] | Group]

#: Attribute on a compressed model holding the plans applied to it, in order (used by ``save``).
PLANS_ATTRIBUTE = "_compresskit_plans"


class TiedOutputProjection(CompressedModuleMixin, nn.Module):
    """Logits ``h Eᵀ + b`` from a replaced input embedding E, so an LM head stays tied to it.

    This is the fallback used when the replacement has no ``tied_head(bias)`` factory of its own. If
    the replacement offers ``project(h)`` (logits without building E, e.g. a Kronecker embedding), it is
    used; otherwise E comes from ``dense_weight()``. The head's bias parameter is kept as it is (same
    object), so ties on the bias survive too. The embedding is referenced, not registered as a child:
    its factors live (and are saved) once, under the embedding's own name.
    """

    source: nn.Module

    def __init__(self, source: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        object.__setattr__(self, "source", source)
        self.bias = bias if isinstance(bias, nn.Parameter) or bias is None else nn.Parameter(bias)
        if isinstance(source, CompressedModuleMixin):
            shape = source.dense_shape()
        else:
            shape = tuple(getattr(source, "dense_weight")().shape)  # noqa: B009
        self.out_features, self.in_features = int(shape[0]), int(shape[1])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        tied = getattr(self.source, "project", None)
        logits = tied(hidden) if callable(tied) else F.linear(hidden, self.dense_weight())
        return logits + self.bias if self.bias is not None else logits

    def dense_weight(self) -> torch.Tensor:
        weight: torch.Tensor = getattr(self.source, "dense_weight")()  # noqa: B009
        return weight

    def factor_tensor(self) -> torch.Tensor:
        return next(iter(self.source.parameters()))

    def to_dense(self) -> nn.Linear:
        weight = self.dense_weight().detach()
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias=self.bias is not None)
        dense.to(weight)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


@dataclass(frozen=True)
class _Entry:
    """One distinct module object and every name it is reachable under."""

    name: str
    aliases: tuple[str, ...]
    module: nn.Module

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def module_entries(model: nn.Module) -> list[_Entry]:
    """Every distinct submodule (root excluded) with all its names, in ``named_modules`` order."""
    names: dict[int, list[str]] = {}
    objects: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
            objects[id(module)] = module
    return [_Entry(n[0], tuple(n[1:]), objects[key]) for key, n in names.items()]


def as_groups(strategy: GroupsLike, registry: Registry) -> tuple[Group, ...]:
    """Groups from a preset name, a decompose step mapping, or a list of group mappings / Groups."""
    if isinstance(strategy, str):
        return parse_step({"preset": strategy}, "strategy", registry=registry)
    if isinstance(strategy, Mapping):
        return parse_step(strategy, "strategy", registry=registry)
    if all(isinstance(g, Group) for g in strategy):
        return tuple(g for g in strategy if isinstance(g, Group))
    return parse_groups([g for g in strategy if isinstance(g, Mapping)], "groups")


class _Planner:
    """State of one planning pass (kept out of the public functions to keep them short)."""

    def __init__(self, model: nn.Module, registry: Registry, tokens: int) -> None:
        self.model, self.registry, self.tokens = model, registry, tokens
        self.entries = module_entries(model)
        self.all_names = [n for e in self.entries for n in e.names]
        self.owners: dict[int, list[_Entry]] = {}
        for entry in self.entries:
            for param in entry.module.parameters(recurse=False):
                self.owners.setdefault(id(param), []).append(entry)
        self.heads = head_names(model)
        self.claimed: set[int] = set()
        self.planned: list[PlannedModule] = []
        self.skipped: list[SkippedModule] = []
        self.excluded: list[SkippedModule] = []
        self._decompositions: dict[str, Decomposition] = {}

    def run(self, groups: Sequence[Group]) -> CompressionPlan:
        for group in groups:
            self.plan_group(group)
        return CompressionPlan(
            tuple(self.planned),
            tuple(self.skipped),
            tuple(self.excluded),
            model_params=sum(p.numel() for p in self.model.parameters()),
            tokens=self.tokens,
        )

    def plan_group(self, group: Group) -> None:
        cls = self.registry.get("decomposition", group.decomposition, where=f"{group.where}.decomposition")
        types = group.type_names(cls.module_types)
        missing = group.names.unmatched(self.all_names)
        if missing:
            raise no_match_error(group, "names", missing, self.all_names)
        selected = [
            e
            for e in self.entries
            if matches_types(e.module, types) and (group.names.empty or group.names.matches(e.names))
        ]
        if not selected:
            present = sorted({type(e.module).__name__ for e in self.entries if _own_params(e.module)})
            what = f"names {group.names.describe()} with types"
            raise no_match_error(group, what, list(types), present, "module types present")
        for index, override in enumerate(group.overrides):
            if not any(override.names.matches(e.names) for e in selected):
                what = f"overrides[{index}].names"
                raise no_match_error(group, what, [override.names.describe()], [e.name for e in selected])
        for entry in selected:
            if id(entry.module) not in self.claimed:
                self.claimed.add(id(entry.module))
                self.plan_entry(group, entry)

    def plan_entry(self, group: Group, entry: _Entry) -> None:
        kind = type(entry.module).__name__
        if group.exclude.matches(entry.names):
            self.excluded.append(SkippedModule(entry.name, kind, group.name, "matched `exclude`"))
            return
        if group.except_head and self.heads & set(entry.names):
            self.excluded.append(SkippedModule(entry.name, kind, group.name, "output head"))
            return
        _check_not_sharded(entry)
        _check_finite(entry)
        options = group.options_for(entry.names)
        decomposition = self.decomposition(group, options)
        if group.types and not decomposition.handles(entry.module):
            raise DecompositionError(
                f"{group.where}: module {entry.name!r} ({kind}) was selected by `types`, but decomposition "
                f"{decomposition.name!r} handles only {', '.join(decomposition.module_types)}. Narrow the "
                "group's `types` / `names`, or pick a decomposition that handles this module type."
            )
        reason = _custom_forward_reason(entry.module)
        aliases, tied_outputs = list(entry.aliases), list[str]()
        if reason is None:
            reason, partner_aliases, tied_outputs = self.tie_partners(group, entry)
            aliases += partner_aliases
        if reason is None:
            try:
                spec = decomposition.make_spec(entry.module, entry.name)
            except DecompositionError as exc:
                reason = str(exc)
        if reason is not None:
            self.skipped.append(SkippedModule(entry.name, kind, group.name, reason))
            return
        info = self.registry.info("decomposition", group.decomposition)
        self.planned.append(
            PlannedModule(
                name=entry.name,
                class_name=kind,
                group=group.name,
                decomposition=group.decomposition,
                options=options,
                spec=spec,
                before=_dense_cost(entry.module, self.tokens),
                after=decomposition.compressed_cost(entry.module, spec, self.tokens),
                aliases=tuple(dict.fromkeys(aliases)),
                tied_outputs=tuple(tied_outputs),
                plugin=info.to_dict(),
            )
        )

    def decomposition(self, group: Group, options: Mapping[str, Any]) -> Decomposition:
        key = group.decomposition + json.dumps(options, sort_keys=True, default=str)
        if key not in self._decompositions:
            where = f"{group.where}.options"
            self._decompositions[key] = self.registry.create(
                "decomposition", group.decomposition, options, where=where
            )
        return self._decompositions[key]

    def tie_partners(self, group: Group, entry: _Entry) -> tuple[str | None, list[str], list[str]]:
        """``(reason to skip or None, names sharing the replacement, tied output projections)``."""
        partners: dict[int, _Entry] = {}
        for param in entry.module.parameters(recurse=False):
            for other in self.owners.get(id(param), []):
                if other.module is not entry.module:
                    partners[id(other.module)] = other
        if not partners:
            return None, [], []
        listing = ", ".join(p.name for p in partners.values())
        is_embedding = "Embedding" in class_names(entry.module)
        embeddings = [p for p in partners.values() if "Embedding" in class_names(p.module)]
        if not is_embedding and embeddings:
            return (
                f"output projection tied to the input embedding {embeddings[0].name!r}; decompose that "
                "embedding with allow_tied = true and this head will share its replacement",
                [],
                [],
            )
        if not group.allow_tied:
            return (
                f"weight is tied with {listing}; set allow_tied = true in group {group.name!r} to replace "
                "them together with one shared module",
                [],
                [],
            )
        aliases: list[str] = []
        outputs: list[str] = []
        for partner in partners.values():
            problem = self.partner_problem(entry, partner, is_embedding)
            if problem:
                return problem, [], []
            same_kind = type(partner.module) is type(entry.module)
            (aliases if same_kind else outputs).extend(partner.names)
            self.claimed.add(id(partner.module))
        return None, aliases, outputs

    def partner_problem(self, entry: _Entry, partner: _Entry, is_embedding: bool) -> str | None:
        if type(partner.module) is type(entry.module):
            return _custom_forward_reason(partner.module)
        weight = getattr(entry.module, "weight", None)
        other = getattr(partner.module, "weight", None)
        linear_like = (
            isinstance(partner.module, nn.Linear) and type(partner.module).forward is nn.Linear.forward
        )
        if is_embedding and linear_like and other is weight:
            return None
        return (
            f"shares parameters with {partner.name!r} ({type(partner.module).__name__}), which cannot be "
            "replaced together with it"
        )


def plan_compression(
    model: nn.Module, strategy: GroupsLike, *, registry: Registry | None = None, tokens: int = DEFAULT_TOKENS
) -> CompressionPlan:
    """Plan which modules each group replaces (pure: shapes only, works on a ``meta`` model)."""
    registry = registry or Registry.from_plugins()
    return _Planner(model, registry, tokens).run(as_groups(strategy, registry))


def build_replacements(
    model: nn.Module, plan: CompressionPlan, *, registry: Registry | None = None, initialize: bool = True
) -> dict[str, nn.Module]:
    """Create every planned replacement, without touching the model; errors name the module."""
    registry = registry or Registry.from_plugins()
    modules = dict(model.named_modules(remove_duplicate=False))
    built: dict[str, nn.Module] = {}
    for planned in plan.modules:
        module = modules.get(planned.name)
        if module is None or type(module).__name__ != planned.class_name:
            found = "nothing" if module is None else type(module).__name__
            raise DecompositionError(
                f"the plan replaces {planned.name!r} ({planned.class_name}), but the model has {found} there."
            )
        if initialize:
            _check_materialised(planned.name, module)
        decomposition = registry.create(
            "decomposition", planned.decomposition, planned.options, where=f"plan.{planned.name}.options"
        )
        built[planned.name] = _build_one(decomposition, module, planned, initialize)
    return built


def _build_one(
    decomposition: Decomposition, module: nn.Module, planned: PlannedModule, initialize: bool
) -> nn.Module:
    try:
        new = decomposition.build(module, planned.spec, initialize=initialize)
    except CompressKitError as exc:
        raise type(exc)(f"{planned.name}: {exc} (the model was left unchanged)") from exc
    except Exception as exc:
        raise DecompositionError(
            f"{planned.name} ({planned.class_name}): decomposition {planned.decomposition!r} failed to build "
            f"its replacement: {type(exc).__name__}: {exc}. The model was left unchanged."
        ) from exc
    old = {p.data_ptr() for p in module.parameters() if not p.is_meta and p.numel()}
    if any(p.data_ptr() in old for p in new.parameters() if not p.is_meta and p.numel()):
        raise DecompositionError(
            f"{planned.name}: decomposition {planned.decomposition!r} returned a module that shares memory "
            "with the module it replaces; a replacement must own new tensors (clone them)."
        )
    return new


def swap_modules(model: nn.Module, plan: CompressionPlan, replacements: Mapping[str, nn.Module]) -> None:
    """Put every replacement at each of its names (parents resolved first, so no half-done swap).

    A replaced Hugging Face ``Conv1D`` keeps showing its (in, out) ``weight`` layout, and a bias the old
    module shared with another module (BERT's MLM ``decoder.bias`` is ``predictions.bias``) stays shared.
    """
    shared = _shared_parameters(model)
    moves: list[tuple[nn.Module, str, nn.Module]] = []
    for planned in plan.modules:
        new = replacements[planned.name]
        old = model.get_submodule(planned.name)
        if planned.class_name == "Conv1D" and isinstance(new, CompressedModuleMixin):
            new.dense_layout = "conv1d"
        _keep_shared_bias(old, new, shared)
        for name in (planned.name, *planned.aliases):
            moves.append((*_parent(model, name), new))
        for name in planned.tied_outputs:
            parent, attribute = _parent(model, name)
            moves.append((parent, attribute, tied_head(new, dense_bias(getattr(parent, attribute)))))
    for parent, attribute, new in moves:
        setattr(parent, attribute, new)


def _shared_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters owned by more than one distinct module."""
    owners: dict[int, int] = {}
    for entry in module_entries(model):
        for param in entry.module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return {key for key, count in owners.items() if count > 1}


def _keep_shared_bias(old: nn.Module, new: nn.Module, shared: set[int]) -> None:
    bias, new_bias = getattr(old, "bias", None), getattr(new, "bias", None)
    if (
        isinstance(bias, nn.Parameter)
        and id(bias) in shared
        and isinstance(new_bias, nn.Parameter)
        and new_bias.shape == bias.shape
    ):
        new.bias = bias


def tied_head(replacement: nn.Module, bias: torch.Tensor | None) -> nn.Module:
    """The output layer tied to a replaced embedding: the plugin's ``tied_head(bias)`` if it offers one,
    else a :class:`TiedOutputProjection`."""
    factory = getattr(replacement, "tied_head", None)
    if callable(factory):
        head: nn.Module = factory(bias)
        return head
    return TiedOutputProjection(replacement, bias)


def decompose(
    model: nn.Module, strategy: GroupsLike, *, registry: Registry | None = None, tokens: int = DEFAULT_TOKENS
) -> CompressionReport:
    """Plan, build and swap in place; return the report (with per-module reconstruction errors)."""
    registry = registry or Registry.from_plugins()
    plan = plan_compression(model, strategy, registry=registry, tokens=tokens)
    replacements = build_replacements(model, plan, registry=registry)
    modules = dict(model.named_modules(remove_duplicate=False))
    errors = {name: relative_error(modules[name], new) for name, new in replacements.items()}
    swap_modules(model, plan, replacements)
    setattr(model, PLANS_ATTRIBUTE, (*getattr(model, PLANS_ATTRIBUTE, ()), plan))
    if "PreTrainedModel" in class_names(model):
        from compresskit.hf_integration import attach

        attach(model)  # save_pretrained / from_pretrained / tie_weights now handle the compressed modules
    return CompressionReport(plan, errors)


def relative_error(old: nn.Module, new: nn.Module) -> float | None:
    """``‖W − Ŵ‖_F / ‖W‖_F`` between the old dense weight and the replacement's ``dense_weight()``."""
    if not callable(getattr(new, "dense_weight", None)):
        return None
    from compresskit.decomposition import dense_weight

    with torch.no_grad():
        reference = dense_weight(old).double()
        approx = new.dense_weight().double()  # type: ignore[operator]
        return float(torch.linalg.norm(reference - approx) / torch.linalg.norm(reference).clamp_min(1e-30))


def _own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attribute = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attribute


def _dense_cost(module: nn.Module, tokens: int) -> Cost:
    try:
        return dense_cost(module, tokens)
    except DecompositionError:
        return Cost(sum(p.numel() for p in module.parameters()), 0)


def _custom_forward_reason(module: nn.Module) -> str | None:
    """A subclass of Linear / Embedding that overrides ``forward`` does more than its weight shows."""
    for base in (nn.Linear, nn.Embedding):
        if isinstance(module, base) and type(module).forward is not base.forward:
            return (
                f"{type(module).__name__} overrides {base.__name__}.forward (e.g. a scale factor) that a "
                "replacement would drop"
            )
    return None


def _check_not_sharded(entry: _Entry) -> None:
    for pname, param in entry.module.named_parameters(recurse=False):
        if hasattr(param, "ds_shape"):
            raise DecompositionError(
                f"{entry.name}.{pname} is sharded by DeepSpeed ZeRO-3 (ds_shape {tuple(param.ds_shape)}, "
                f"local shape {tuple(param.shape)}); decompose before sharding or inside "
                "deepspeed.zero.GatheredParameters."
            )


def _check_finite(entry: _Entry) -> None:
    """Refuse a module whose weights hold NaN / ±Inf: decomposing it would save the damage silently.

    Checked for every selected module before any decomposition sees it, so no plugin can turn it into a
    mere "skipped" line (a meta-device model, which has no values, passes).
    """
    for pname, param in entry.module.named_parameters(recurse=False):
        if param.is_meta or bool(torch.isfinite(param).all()):
            continue
        bad = int((~torch.isfinite(param)).sum())
        raise NonFiniteWeightsError(
            f"{entry.name}.{pname} holds {bad} NaN/Inf value(s) of {param.numel()}; a model with non-finite "
            "weights cannot be compressed (the damage would be saved into the student). Check the model "
            "file (re-download or re-save it) or the training run that produced it."
        )


def _check_materialised(name: str, module: nn.Module) -> None:
    for pname, param in module.named_parameters(recurse=False):
        if param.is_meta:
            raise DecompositionError(
                f"{name}.{pname} is on the meta device (no values); planning works on such a model but "
                "building replacements needs the real weights: load the model without "
                "init_empty_weights / device_map='meta'."
            )
