"""The Strategy: a typed, frozen description of one compression job, 1:1 with the config file.

Every TOML table maps to one frozen dataclass below and every key to one field, so
``Strategy.from_dict(tomllib.load(f))`` and ``strategy.to_dict()`` round-trip. Composite strategies
(different decompositions on different module groups, decompose → distil → decompose → distil) are
written the same way in Python and in TOML::

    Strategy.from_dict({
        "name": "composed",
        "task": {"name": "glue", "options": {"task": "sst2"}},
        "steps": [
            {"kind": "decompose", "groups": [{"name": "attn", "types": ["Linear"], "names": [...],
                                              "decomposition": "kronecker", "options": {...}}]},
            {"kind": "distill", "distiller": "two_stage_kd", "options": {...}},
        ],
    })

Component option tables (decomposition options, distiller options, task options, tracker options)
are kept as plain mappings here; :func:`compresskit.config.validate_components` checks them against
the registry before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compresskit.component import OptionValueError, parse_options, require_positive
from compresskit.config_lines import ConfigSource
from compresskit.errors import ConfigError, did_you_mean
from compresskit.seeding import SEED_RANGE


@dataclass(frozen=True)
class ModelSpec:
    """``[model]``: the pre-trained teacher, an optional fine-tuned teacher, the student's start."""

    #: ``"default"`` (the embedded MiniLM-L6) or a folder / Hub id of a pre-trained Transformer.
    teacher: str = "default"
    #: A teacher already fine-tuned on the task; when given, teacher fine-tuning is skipped.
    finetuned_teacher: str | None = None
    #: Tokenizer folder / id; defaults to the teacher's.
    tokenizer: str | None = None
    #: Which weights the student is decomposed from: the fine-tuned teacher, or the pre-trained
    #: teacher with the fine-tuned classifier head (KroneckerBERT §3.7 starts from the pre-trained model).
    student_init: Literal["finetuned", "pretrained"] = "finetuned"
    #: A saved student folder (``compresskit.save``, e.g. a run's ``model``) to start from instead of the
    #: teacher — typically a general-KD (stage-1) student shared by several tasks, as KroneckerBERT and
    #: TinyBERT reuse one general student. Its task head is replaced by the fine-tuned teacher's.
    student: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """``[task]``: a registered task and its options."""

    name: str = "glue"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FinetuneSpec:
    """``[finetune]``: teacher fine-tuning (skipped when the teacher is already fine-tuned)."""

    max_length: int | None = None
    train_limit: int | None = None
    #: Batch examples of similar length together (see :func:`compresskit.tasks.list_dataloader`).
    group_by_length: bool = True
    #: ``[finetune.training]``: fields of :class:`compresskit.training.TrainingConfig`.
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_positive(self, "max_length", "train_limit")


@dataclass(frozen=True)
class DecomposeStep:
    """``[[steps]] kind = "decompose"``: replace module groups through the walker.

    ``preset`` expands to the preset's groups, followed by ``groups``; ``decomposition`` is the
    default for groups that do not name one.
    """

    kind: Literal["decompose"] = "decompose"
    name: str | None = None
    preset: str | None = None
    decomposition: str | None = None
    groups: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class DataSpec:
    """``[steps.data.<name>]``: the loader a distiller stage reads (``data = "<name>"`` in its options).

    ``task`` defaults to the run's task (with its options); e.g. ``task = "text"`` gives general text
    for stage 1 of two-stage KD. Batch size comes from the stage's ``training.batch_size``.
    """

    task: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    split: str = "train"
    max_length: int | None = None
    limit: int | None = None
    shuffle: bool = True
    #: Batch examples of similar length together (see :func:`compresskit.tasks.list_dataloader`).
    group_by_length: bool = True

    def __post_init__(self) -> None:
        require_positive(self, "max_length", "limit")


@dataclass(frozen=True)
class DistillStep:
    """``[[steps]] kind = "distill"``: train the student against the teacher(s) with a distiller.

    ``data`` maps the data names the distiller's stages read (two-stage KD: ``stage1``, ``stage2``;
    single-stage distillers: ``train``) to :class:`DataSpec` tables; a name left out reads the run's
    task train split with ``[finetune]``'s ``max_length`` and ``train_limit``.
    """

    kind: Literal["distill"] = "distill"
    name: str | None = None
    distiller: str = "two_stage_kd"
    options: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, DataSpec] = field(default_factory=dict)


Step = DecomposeStep | DistillStep
STEP_KINDS: dict[str, type] = {"decompose": DecomposeStep, "distill": DistillStep}


@dataclass(frozen=True)
class EvaluationSpec:
    """``[evaluation]``: the split, batch size and limits of the final evaluation."""

    split: str = "dev"
    batch_size: int = 64
    max_length: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "max_length", "limit")


@dataclass(frozen=True)
class MeasureSpec:
    """``[measure]``: CPU latency measurement (batch × seq_len, median of ``repeats`` runs)."""

    seq_len: int = 128
    batch_size: int = 1
    repeats: int = 20
    warmup: int = 3
    threads: int | None = None

    def __post_init__(self) -> None:
        require_positive(self, "seq_len", "batch_size", "repeats", "threads")
        require_positive(self, "warmup", zero_allowed=True)


@dataclass(frozen=True)
class TrackingSpec:
    """``[tracking]``: where the run is recorded (``"mlflow"`` or ``"none"``)."""

    tracker: str = "mlflow"
    experiment: str = "compresskit"
    tracking_uri: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    """One compression job: model, task, teacher fine-tuning, ordered steps, evaluation, tracking."""

    name: str
    description: str = ""
    seed: int = 42
    output_dir: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelSpec = field(default_factory=ModelSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    steps: tuple[Step, ...] = ()
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    #: The file and ``--set`` overrides it was read from (for ``file:line`` in errors); not a config key.
    source: ConfigSource | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        low, high = SEED_RANGE
        if not low <= self.seed <= high:
            raise OptionValueError(
                "seed", f"expected an integer from {low} to {high} (2**32 - 1), found {self.seed!r}."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> Strategy:
        """Build from the config-file form; unknown keys raise ConfigError with the dotted path."""
        return strategy_from_dict(data, where=where)

    @classmethod
    def from_file(cls, path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Strategy:
        """Read a TOML config file, apply ``--set key=value`` overrides, validate the schema."""
        from compresskit.config import load_config

        return load_config(path, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The config-file form (``None`` values left out, tuples as lists): JSON- and TOML-able."""
        data = _plain(dataclasses.asdict(dataclasses.replace(self, source=None)))
        data.pop("source", None)
        return dict(data)

    def fingerprint(self, *parts: str) -> str:
        """A short hash of the named top-level parts (all of them when none is named)."""
        data = self.to_dict()
        chosen = {key: data.get(key) for key in parts} if parts else data
        text = json.dumps(chosen, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "task": TaskSpec,
    "finetune": FinetuneSpec,
    "evaluation": EvaluationSpec,
    "measure": MeasureSpec,
    "tracking": TrackingSpec,
}
_SCALARS = {"name", "description", "seed", "output_dir", "device"}


def strategy_from_dict(data: Mapping[str, Any], *, where: str = "") -> Strategy:
    """Parse the config-file mapping into a :class:`Strategy` (schema only, no registry look-ups)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, found {type(data).__name__}.")
    known = _SCALARS | set(_SECTIONS) | {"steps"}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{_join(where, key)}: unknown key.{did_you_mean(key, known)} "
                f"Valid top-level keys: {', '.join(sorted(known))}."
            )
    if "name" not in data:
        raise ConfigError(f'{where or "config"}: missing the top-level `name = "..."` of the strategy.')
    values: dict[str, Any] = {key: data[key] for key in _SCALARS if key in data}
    for key, spec in _SECTIONS.items():
        if key in data:
            values[key] = _section(spec, data[key], _join(where, key))
    if "steps" in data:
        values["steps"] = _steps(data["steps"], _join(where, "steps"))
    return parse_options(Strategy, values, where)


def _section(spec: type, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, found {type(value).__name__} {value!r}.")
    return parse_options(spec, dict(value), where)


def _steps(value: Any, where: str) -> tuple[Step, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected an array of tables ([[steps]]), found {type(value).__name__}.")
    steps: list[Step] = []
    for index, raw in enumerate(value):
        path = f"{where}[{index}]"
        if isinstance(raw, DecomposeStep | DistillStep):
            steps.append(raw)
            continue
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: expected a table, found {type(raw).__name__}.")
        kind = raw.get("kind")
        if kind not in STEP_KINDS:
            raise ConfigError(
                f"{path}.kind: expected one of {', '.join(repr(k) for k in STEP_KINDS)}, found {kind!r}."
                f"{did_you_mean(str(kind), STEP_KINDS)}"
            )
        values = _step_values(raw, path)
        if kind == "distill" and "data" in values:
            values["data"] = _data_specs(values["data"], f"{path}.data")
        steps.append(_section(STEP_KINDS[kind], values, path))
    return tuple(steps)


def _step_values(raw: Mapping[str, Any], path: str) -> dict[str, Any]:
    values = dict(raw)
    groups = values.get("groups")
    if groups is not None:
        if not isinstance(groups, list | tuple) or not all(isinstance(g, Mapping) for g in groups):
            raise ConfigError(f"{path}.groups: expected an array of tables ([[steps.groups]]).")
        values["groups"] = tuple(dict(g) for g in groups)
    return values


def _data_specs(value: Any, where: str) -> dict[str, DataSpec]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of named data tables, found {type(value).__name__}.")
    return {
        str(name): spec if isinstance(spec, DataSpec) else _section(DataSpec, spec, f"{where}.{name}")
        for name, spec in value.items()
    }


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
