"""Reading, overriding, validating and writing strategy config files (TOML).

* :func:`load_config` reads a file with stdlib :mod:`tomllib`, applies ``--set key=value`` overrides and
  returns a :class:`~compresskit.strategy.Strategy`; an unknown key is a :class:`ConfigError` naming the
  dotted path (``steps[1].options.stage2.lrr``), the file and line, and a did-you-mean.
* :func:`apply_overrides` implements ``--set``: the key is a dotted path with ``[i]`` indices, the value is
  read with TOML semantics (``1e-4`` is a float, ``true`` a bool, ``[2, 8]`` an array); anything that is not
  a TOML value is taken as a string (``--set model.teacher=./my-bert``).
* :func:`validate_components` instantiates every named component (task, tracker, distillers, presets,
  decompositions) through the registry, so bad options fail before any training starts.
* :func:`dumps_toml` writes a strategy back as TOML (the resolved config saved in each run directory).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compresskit.config_lines import ConfigSource, locate
from compresskit.distillation import FINETUNED, PRETRAINED, StagePlan, check_loss_weight
from compresskit.errors import ConfigError, UsageError, did_you_mean
from compresskit.registry import Registry
from compresskit.strategy import DecomposeStep, DistillStep, Strategy, strategy_from_dict

#: The teachers a run gives its distillers (the pre-trained and the fine-tuned model).
RUN_TEACHERS = (PRETRAINED, FINETUNED)

_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_KEY_PATH = re.compile(r"[^.\[\]=\s]+(\[\d+\]|\.[^.\[\]=\s]+)*")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a :class:`ConfigError` naming the file."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(
            f"{file} is a folder; give the strategy's .toml file (e.g. configs/demo-minilm-sst2.toml)."
        )
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist (working directory: {Path.cwd()}).")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not UTF-8 text (byte {exc.start}: {exc.reason}); TOML files are UTF-8. "
            "Save it as UTF-8."
        ) from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Strategy:
    """Read ``path``, apply ``--set`` ``overrides`` and return the validated :class:`Strategy`.

    The strategy remembers its source (``Strategy.source``), so later checks — the preflight of every
    component option — can point at ``file:line`` too.
    """
    overrides = list(overrides)
    data = apply_overrides(read_toml(path), overrides)
    source = ConfigSource.read(path, overrides)
    try:
        strategy = strategy_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(locate(str(exc), source)) from None
    return dataclasses.replace(strategy, source=source)


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Split ``"a.b[1].c=value"`` into ``(["a", "b", 1, "c"], value)`` with TOML value semantics."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(
            f"--set {text!r}: expected KEY=VALUE, e.g. --set steps[1].options.training.learning_rate=1e-4."
        )
    return parse_key_path(key.strip()), parse_value(raw.strip())


def parse_key_path(key: str) -> list[str | int]:
    """``"steps[1].options"`` → ``["steps", 1, "options"]`` (``steps.1.options`` works too)."""
    if not _KEY_PATH.fullmatch(key):
        raise UsageError(f"--set {key!r}: malformed key path; use dotted keys and [i] for array items.")
    return [
        int(index) if index else (int(word) if word.isdigit() else word)
        for word, index in _PATH_TOKEN.findall(key)
    ]


def parse_value(raw: str) -> Any:
    """The TOML value written in ``raw``, or ``raw`` itself as a string when it is not TOML."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``data`` with every ``KEY=VALUE`` of ``overrides`` set (creating tables)."""
    result = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        _set_path(result, path, value, text)
    return result


def _set_path(data: Any, path: Sequence[str | int], value: Any, text: str) -> None:
    node = data
    for depth, token in enumerate(path):
        last = depth == len(path) - 1
        where = format_path(path[: depth + 1])
        if isinstance(token, int):
            if not isinstance(node, list) or not -len(node) <= token < len(node):
                size = len(node) if isinstance(node, list) else "no"
                raise ConfigError(f"--set {text!r}: {where} does not exist ({size} items there).")
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: {format_path(path[:depth])} is not a table.")
        if last:
            node[token] = value
        else:
            if isinstance(token, str) and token not in node:
                node[token] = [] if isinstance(path[depth + 1], int) else {}
            node = node[token]


def format_path(path: Sequence[str | int]) -> str:
    """``["steps", 1, "options"]`` → ``"steps[1].options"``."""
    text = ""
    for token in path:
        text += f"[{token}]" if isinstance(token, int) else (f".{token}" if text else token)
    return text


def validate_components(strategy: Strategy, registry: Registry | None = None) -> dict[int, Any]:
    """Instantiate every component the strategy names, so bad names or options fail up front.

    Returns each step resolved (step index → the :class:`~compresskit.targets.Group` tuple of a
    decompose step, presets expanded, or the :class:`~compresskit.Distiller` of a distill step), made
    here once for the preflight's dry run and the run itself.
    """
    registry = registry or Registry.from_plugins()
    registry.get("task", strategy.task.name, where="task.name")  # an unknown name points at the name
    registry.create("task", strategy.task.name, strategy.task.options, where="task.options")
    if strategy.tracking.tracker != "none":
        options = tracker_options(strategy, registry)
        registry.create("tracker", strategy.tracking.tracker, options, where="tracking.options")
    _validate_training(strategy.finetune.training, "finetune.training")
    resolved: dict[int, Any] = {}
    for index, step in enumerate(strategy.steps):
        where = f"steps[{index}]"
        if isinstance(step, DistillStep):
            registry.get("distiller", step.distiller, where=f"{where}.distiller")
            distiller = registry.create("distiller", step.distiller, step.options, where=f"{where}.options")
            _validate_distiller_stages(distiller, registry, f"{where}.options")
            _validate_data_names(step, distiller, f"{where}.data")
            resolved[index] = distiller
            for name, data in step.data.items():
                if data.task is not None:
                    registry.create("task", data.task, data.options, where=f"{where}.data.{name}.options")
        elif isinstance(step, DecomposeStep):
            resolved[index] = _validate_decompose(step, registry, where)
    return resolved


def tracker_options(strategy: Strategy, registry: Registry) -> dict[str, Any]:
    """``[tracking] options`` plus ``experiment`` / ``tracking_uri`` where the tracker takes them."""
    spec = strategy.tracking
    options = dict(spec.options)
    cls = registry.get("tracker", spec.tracker, where="tracking.tracker")
    fields = getattr(getattr(cls, "Options", None), "__dataclass_fields__", {})
    if "experiment" in fields:
        options.setdefault("experiment", spec.experiment)
    if "tracking_uri" in fields and spec.tracking_uri is not None:
        options.setdefault("tracking_uri", spec.tracking_uri)
    return options


def distiller_stages(distiller: Any, where: str) -> list[StagePlan]:
    """The distiller's declared stages; a :class:`ConfigError` it raises names ``where`` (the options'
    config path) instead of the distiller."""
    try:
        return list(distiller.stages())
    except ConfigError as exc:  # the distiller names itself; point at the config path instead
        message = str(exc)
        own = f"{distiller.name}."
        raise ConfigError(f"{where}.{message[len(own) :]}" if message.startswith(own) else message) from None


def _validate_distiller_stages(distiller: Any, registry: Registry, where: str) -> None:
    """Validate each declared stage: its teacher, training fields and loss names."""
    for plan in distiller_stages(distiller, where):
        at = plan.where(where)
        if plan.teacher not in RUN_TEACHERS:
            raise ConfigError(
                f"{at}.teacher: {plan.teacher!r} is not a teacher a run provides; use "
                f"{' or '.join(repr(t) for t in RUN_TEACHERS)}."
            )
        _validate_training(plan.options.training, f"{at}.training")
        losses = plan.options.losses
        if losses is not None:
            if not losses:
                raise ConfigError(
                    f"{at}.losses: the table is empty, so this stage would have nothing to minimise. Name at "
                    "least one loss with its weight (e.g. losses = { logit_kl = 1.0 }), or leave the table "
                    "out to use the distiller's default losses."
                )
            for loss, value in losses.items():
                registry.get("loss", str(loss), where=f"{at}.losses")
                check_loss_weight(value, f"{at}.losses.{loss}")


def _validate_data_names(step: DistillStep, distiller: Any, where: str) -> None:
    """Every ``[steps.data.<name>]`` table must name data a stage of the distiller reads (a misspelt
    name would otherwise be ignored and the stage would read its default data)."""
    read = [plan.data for plan in distiller_stages(distiller, where)]
    for name in step.data:
        if name not in read:
            raise ConfigError(
                f"{where}.{name}: distiller {step.distiller!r} has no stage that reads data {name!r}."
                f"{did_you_mean(name, read)} Its stages read: {', '.join(sorted(set(read)))}."
            )


def _validate_training(values: Mapping[str, Any], where: str) -> None:
    from compresskit.component import parse_options

    try:
        from compresskit.training import TrainingConfig
    except ImportError:  # the training loop is optional at validation time
        return
    parse_options(TrainingConfig, dict(values), where)


def _validate_decompose(step: DecomposeStep, registry: Registry, where: str) -> tuple[Any, ...]:
    """Parse the step's groups with the walker's own rules, validate every options table, return them."""
    from compresskit.targets import parse_step

    groups = parse_step(step_as_mapping(step), where, registry=registry)
    for group in groups:
        registry.get("decomposition", group.decomposition, where=f"{group.where}.decomposition")
        registry.create("decomposition", group.decomposition, group.options, where=f"{group.where}.options")
        for number, override in enumerate(group.overrides):
            merged = {**group.options, **override.options}
            at = f"{group.where}.overrides[{number}].options"
            registry.create("decomposition", group.decomposition, merged, where=at)
    return groups


def step_as_mapping(step: DecomposeStep) -> dict[str, Any]:
    """The config-file form of a decompose step, as the walker's ``parse_step`` reads it."""
    return {key: value for key, value in dataclasses.asdict(step).items() if value not in (None, ())}


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write a config mapping as TOML (tables after scalars, arrays of tables as ``[[...]]``)."""
    lines: list[str] = []
    _write_table(lines, data, [])
    return "\n".join(lines).strip() + "\n"


def _write_table(lines: list[str], data: Mapping[str, Any], prefix: list[str]) -> None:
    tables = []
    for key, value in data.items():
        if value is None:
            continue
        if (isinstance(value, Mapping) and value) or _is_table_array(value):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables:
        path = [*prefix, _key(key)]
        if isinstance(value, Mapping):
            lines.extend(["", f"[{'.'.join(path)}]"])
            _write_table(lines, value, path)
        else:
            for item in value:
                lines.extend(["", f"[[{'.'.join(path)}]]"])
                _write_table(lines, item, path)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} as TOML.")
