"""Which modules a compression step touches: groups, selectors and their validation.

A *group* (config files, presets and the Python API share the form)::

    {name = "ffn", types = ["Linear"], names = ["intermediate.dense"], exclude = "...",
     decomposition = "kronecker", options = {...}, allow_tied = false,
     overrides = [{names = "...", options = {...}}, ...]}

Matching rules:

- ``types``: class names matched along the MRO (``"Linear"``, ``"Conv1D"``, ``"Embedding"``), so a config
  needs no imports. Left out, a group takes the types its decomposition declares (``module_types``).
  The pseudo-type ``"linear_except_head"`` means every ``Linear`` / ``Conv1D`` except the model's heads,
  found from the model's structure (see :func:`head_names`), not from attribute names.
- ``names`` / ``exclude``: a string is a regular expression matched with ``re.fullmatch`` against the
  dotted module name; a list holds exact names or dotted suffixes (``"query"`` matches
  ``encoder.layer.0.attention.self.query``). A module reachable under several names matches if any does.
- A module belongs to the first group (in order) whose selector matches it.
- ``overrides`` are applied in order on top of the group's ``options``; when several match one module,
  the later override wins key by key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compresskit.decomposition import class_names
from compresskit.errors import ConfigError, NoMatchingModulesError, did_you_mean

#: The pseudo-type selecting every Linear / Conv1D except the model's output heads.
LINEAR_EXCEPT_HEAD = "linear_except_head"
GROUP_KEYS = ("name", "types", "names", "exclude", "decomposition", "options", "overrides", "allow_tied")
OVERRIDE_KEYS = ("names", "options")
STEP_KEYS = ("kind", "preset", "decomposition", "groups", "name")


@dataclass(frozen=True)
class NameSelector:
    """A full regular expression (``pattern``) or a tuple of exact names / dotted suffixes (``names``)."""

    pattern: str | None = None
    names: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.pattern is None and not self.names

    def describe(self) -> str:
        if self.empty:
            return "(any name)"
        return f"regex {self.pattern!r}" if self.pattern is not None else repr(list(self.names))

    def entry_matches(self, entry: str, name: str) -> bool:
        """One list entry: the exact name or a dotted suffix of it."""
        return name == entry or name.endswith("." + entry)

    def matches(self, names: Iterable[str]) -> bool:
        """True when any of ``names`` (the aliases of one module) is selected."""
        for name in names:
            if self.pattern is not None and re.fullmatch(self.pattern, name):
                return True
            if any(self.entry_matches(entry, name) for entry in self.names):
                return True
        return False

    def unmatched(self, all_names: Sequence[str]) -> list[str]:
        """The regex or list entries that match none of ``all_names``."""
        if self.pattern is not None:
            hit = any(re.fullmatch(self.pattern, n) for n in all_names)
            return [] if hit else [self.pattern]
        return [e for e in self.names if not any(self.entry_matches(e, n) for n in all_names)]


@dataclass(frozen=True)
class Override:
    """Options applied on top of a group's options for the modules ``names`` selects."""

    names: NameSelector
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Group:
    """One validated group: what to select and how to decompose it."""

    name: str
    decomposition: str
    types: tuple[str, ...] = ()
    names: NameSelector = field(default_factory=NameSelector)
    exclude: NameSelector = field(default_factory=NameSelector)
    options: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()
    allow_tied: bool = False
    where: str = ""

    @property
    def except_head(self) -> bool:
        return LINEAR_EXCEPT_HEAD in self.types

    def type_names(self, default: Sequence[str]) -> tuple[str, ...]:
        """The class names this group selects (``linear_except_head`` expanded, ``default`` if none)."""
        if not self.types:
            return tuple(default)
        expanded = [t for t in self.types if t != LINEAR_EXCEPT_HEAD]
        if self.except_head:
            expanded += ["Linear", "Conv1D"]
        return tuple(dict.fromkeys(expanded))

    def options_for(self, names: Iterable[str]) -> dict[str, Any]:
        """Group options, then every matching override in order (later overrides win)."""
        names = list(names)
        merged = dict(self.options)
        for override in self.overrides:
            if override.names.matches(names):
                merged.update(override.options)
        return merged


def parse_selector(value: Any, where: str) -> NameSelector:
    """``None`` → empty; a string → full regex; a list of strings → exact names / dotted suffixes."""
    if value is None:
        return NameSelector()
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{where}: invalid regular expression {value!r}: {exc}.") from None
        return NameSelector(pattern=value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return NameSelector(names=tuple(value))
    raise ConfigError(
        f"{where}: expected a regular expression (string) or a list of module names / dotted suffixes, "
        f"found {type(value).__name__} {value!r}."
    )


def _check_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table (mapping), found {type(raw).__name__} {raw!r}.")
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: unknown key.{did_you_mean(str(key), allowed)} "
                f"Valid keys: {', '.join(allowed)}."
            )


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of options, found {type(value).__name__} {value!r}.")
    return dict(value)


def parse_group(
    raw: Mapping[str, Any], where: str, *, default_decomposition: str | None = None, index: int = 0
) -> Group:
    """Validate one group mapping (see the module docstring); errors carry the dotted config path."""
    _check_keys(raw, GROUP_KEYS, where)
    decomposition = raw.get("decomposition", default_decomposition)
    if not isinstance(decomposition, str) or not decomposition:
        raise ConfigError(
            f"{where}.decomposition: missing; name a decomposition (e.g. 'kronecker', 'low_rank') in the "
            "group or as the step's default `decomposition`."
        )
    types = raw.get("types", [])
    if isinstance(types, str) or not all(isinstance(t, str) for t in types):
        raise ConfigError(f"{where}.types: expected a list of class names, found {types!r}.")
    allow_tied = raw.get("allow_tied", False)
    if not isinstance(allow_tied, bool):
        raise ConfigError(f"{where}.allow_tied: expected true or false, found {allow_tied!r}.")
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list | tuple):
        raise ConfigError(f"{where}.overrides: expected a list of tables, found {overrides!r}.")
    return Group(
        name=str(raw.get("name", f"group{index}")),
        decomposition=decomposition,
        types=tuple(types),
        names=parse_selector(raw.get("names"), f"{where}.names"),
        exclude=parse_selector(raw.get("exclude"), f"{where}.exclude"),
        options=_mapping(raw.get("options"), f"{where}.options"),
        overrides=tuple(_parse_override(o, f"{where}.overrides[{i}]") for i, o in enumerate(overrides)),
        allow_tied=allow_tied,
        where=where,
    )


def _parse_override(raw: Any, where: str) -> Override:
    _check_keys(raw, OVERRIDE_KEYS, where)
    selector = parse_selector(raw.get("names"), f"{where}.names")
    if selector.empty:
        raise ConfigError(f"{where}.names: an override needs `names` (a regex or a list of names).")
    return Override(selector, _mapping(raw.get("options"), f"{where}.options"))


def parse_groups(
    raw_groups: Sequence[Mapping[str, Any]],
    where: str = "groups",
    *,
    default_decomposition: str | None = None,
) -> tuple[Group, ...]:
    """Validate a list of group mappings."""
    if not isinstance(raw_groups, list | tuple):
        raise ConfigError(f"{where}: expected a list of groups, found {type(raw_groups).__name__}.")
    return tuple(
        parse_group(g, f"{where}[{i}]", default_decomposition=default_decomposition, index=i)
        for i, g in enumerate(raw_groups)
    )


def parse_step(raw: Mapping[str, Any], where: str = "steps[0]", *, registry: Any = None) -> tuple[Group, ...]:
    """A decompose step: the preset's groups (if ``preset`` is set) followed by the step's own groups."""
    _check_keys(raw, STEP_KEYS, where)
    if raw.get("kind", "decompose") != "decompose":
        raise ConfigError(f"{where}.kind: expected 'decompose', found {raw.get('kind')!r}.")
    default = raw.get("decomposition")
    groups: tuple[Group, ...] = ()
    preset = raw.get("preset")
    if preset is not None:
        if registry is None:
            from compresskit.registry import Registry

            registry = Registry.from_plugins()
        preset_groups = list(registry.get("preset", preset, where=f"{where}.preset").groups)
        groups = parse_groups(preset_groups, f"preset {preset!r} groups", default_decomposition=default)
    own = parse_groups(list(raw.get("groups", [])), f"{where}.groups", default_decomposition=default)
    if not groups and not own:
        raise ConfigError(f"{where}: a decompose step needs `preset` or at least one `[[{where}.groups]]`.")
    return groups + own


def head_names(model: nn.Module) -> set[str]:
    """Dotted names of the model's heads, found from its structure.

    - The module producing the LM logits: ``get_output_embeddings()``.
    - A task model is a base model plus a head block, whatever the head's attribute names
      (``classifier``, BART's and T5's ``classification_head.dense`` / ``out_proj``, ``qa_outputs``,
      ``score``, ``cls.predictions.transform``):

      * every module outside the base model (Hugging Face's ``base_model_prefix`` names the base
        model's attribute: ``bert``, ``model``, ``transformer``);
      * every module the task class adds to its architecture's base class (``AutoModel`` of its
        config, built on the meta device): this finds the head of a model that is its own base, such
        as T5's ``qa_outputs`` beside ``encoder`` / ``decoder``.
    """
    heads: set[str] = set()
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    base = _base_model(model)
    entries = list(model.named_modules(remove_duplicate=False))
    base_paths = tuple(name for name, module in entries if base is not None and module is base and name)
    body = _base_class_module_names(model)
    for name, module in entries:
        if output is not None and module is output:
            heads.add(name)
        inside = any(name == path or name.startswith(path + ".") for path in base_paths)
        if name and base_paths and not inside:
            heads.add(name)
        if name and body is not None and _strip(name, base_paths) not in body:
            heads.add(name)
    return heads


def _strip(name: str, base_paths: Sequence[str]) -> str:
    for path in base_paths:
        if name.startswith(path + "."):
            return name[len(path) + 1 :]
    return name


def _base_class_module_names(model: nn.Module) -> set[str] | None:
    """Module names of the base architecture of ``model``'s config (None when there is none to build)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or "PreTrainedModel" not in class_names(model):
        return None
    import copy

    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            base = AutoModel.from_config(copy.deepcopy(config))
    except Exception:  # no base class registered for this config: the other rules apply
        return None
    if type(base) is type(model):
        return None
    return {name for name, _ in base.named_modules(remove_duplicate=False)}


def _base_model(model: nn.Module) -> nn.Module | None:
    """The base model a task model wraps (``model.<base_model_prefix>``), or None if it is its own base."""
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if isinstance(prefix, str) and prefix else None
    return base if isinstance(base, nn.Module) and base is not model else None


def matches_types(module: nn.Module, types: Sequence[str]) -> bool:
    """Whether any class along the module's MRO is named in ``types``."""
    return bool(set(types) & set(class_names(module)))


def no_match_error(
    group: Group, what: str, patterns: Sequence[str], candidates: Sequence[str], listing: str = ""
) -> Exception:
    """:class:`NoMatchingModulesError` listing the patterns and the closest module names.

    With ``listing`` (e.g. ``"module types present"``) every candidate is shown instead of the closest.
    """
    if listing:
        shown = ", ".join(candidates)
    else:
        close: list[str] = []
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in candidates})
        for pattern in patterns:
            close += difflib.get_close_matches(pattern, candidates, n=3, cutoff=0.3)
            close += difflib.get_close_matches(pattern, suffixes, n=3, cutoff=0.5)
        shown = ", ".join(dict.fromkeys(close)) or ", ".join(candidates[:8])
        listing = "closest module names"
    return NoMatchingModulesError(
        f"{group.where or group.name}: {what} {', '.join(repr(p) for p in patterns)} matched no module of "
        f"the model. {listing.capitalize()}: {shown}. A string is a full regex; a list holds exact names "
        "or dotted suffixes. Run `compresskit inspect --model PATH` to list the modules."
    )


def read_step_file(path: str | Path) -> dict[str, Any]:
    """A decompose step from a TOML file: one ``[[steps]]`` decompose step, or top-level ``groups``.

    Top-level form: ``preset = "..."``, ``decomposition = "..."`` and ``[[groups]]``; other top-level
    tables of a full config file (``[model]``, ``[training]``, ...) are ignored here.
    """
    import tomllib

    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"strategy file {str(file)!r} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}.") from None
    steps = [s for s in data.get("steps", []) if isinstance(s, Mapping) and s.get("kind") == "decompose"]
    if len(steps) > 1:
        raise ConfigError(
            f"{file}: has {len(steps)} decompose steps; `inspect` / `compress` apply one. Use "
            "`compresskit run` for multi-step strategies, or keep one [[steps]] decompose step."
        )
    if steps:
        return dict(steps[0])
    step: dict[str, Any] = {key: data[key] for key in ("preset", "decomposition", "groups") if key in data}
    if not step:
        raise ConfigError(
            f'{file}: found neither a [[steps]] table with kind = "decompose" nor top-level [[groups]] '
            "or preset."
        )
    return step
