"""The Distiller and Loss base classes, the outputs they compare, the layer mapping and the stage plan.

A :class:`Loss` compares what a student and a teacher produced on a batch (logits, hidden states,
pre-softmax attention scores, ...) — two :class:`DistillationOutputs` — and returns a weighted scalar.
A :class:`Distiller` trains a student against one or more teachers with a set of weighted losses.
Both are registered through plugins. :class:`LayerMapping` says which student layer is compared with
which teacher layer (one-to-one, TinyBERT's uniform skip, or an explicit list). A distiller declares
the stages it will run as :class:`StagePlan` objects (:meth:`Distiller.stages`): which teacher and data
each needs, its options and where they sit in the config, so whoever runs it (``compresskit run``,
``compresskit distill``) provides exactly that and reads nothing of the distiller's own option layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from compresskit.component import Component
from compresskit.errors import ConfigError
from compresskit.tasks import PROBLEM_TYPES

#: Teacher names a runner provides: the pre-trained model (headless for stage-1 KD on general text)
#: and the model fine-tuned on the task.
PRETRAINED = "pretrained"
FINETUNED = "finetuned"

#: Output names a loss may require (see :attr:`Loss.requires`).
OUTPUT_NAMES = ("logits", "hidden_states", "attention_scores", "labels", "loss")


@dataclass
class DistillationOutputs:
    """What one model produced on one batch.

    ``hidden_states[0]`` is the embedding output and ``hidden_states[l]`` the output of transformer
    layer ``l`` (1-based); ``attention_scores[l - 1]`` are layer ``l``'s pre-softmax scores
    ``QKᵀ/√d_k`` of shape (batch, heads, query, key), without the padding mask. ``attention_mask`` is the
    (batch, tokens) padding mask of the inputs this model saw (1 = real token).
    """

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None
    attention_mask: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    captured: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers whose outputs were captured."""
        return len(self.hidden_states) - 1 if self.hidden_states else 0

    def detach(self) -> DistillationOutputs:
        """A copy with every tensor detached (for cached teacher outputs)."""
        return DistillationOutputs(
            **{f.name: _detach(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )

    def to(self, device: torch.device | str) -> DistillationOutputs:
        """A copy with every tensor moved to ``device``."""
        values = {f.name: _move(getattr(self, f.name), device) for f in dataclasses.fields(self)}
        return DistillationOutputs(**values)


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _move(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class LayerMapping:
    """Pairs ``(student_layer, teacher_layer)`` of transformer layers, 1-based (0 = embeddings).

    Build it with :meth:`build` from ``"one_to_one"``, ``"uniform"`` (TinyBERT, Jiao et al. 2020:
    student layer ``i`` ↔ teacher layer ``i·k`` with ``k = teacher_layers / student_layers``) or an
    explicit list: ``[t1, t2, ...]`` (teacher layer of each student layer) or ``[[s, t], ...]``.
    """

    pairs: tuple[tuple[int, int], ...]

    @classmethod
    def build(
        cls, spec: str | Sequence[Any], student_layers: int, teacher_layers: int, *, where: str = "mapping"
    ) -> LayerMapping:
        """Validate ``spec`` against the two depths; a bad spec raises :class:`ConfigError`."""
        if spec == "one_to_one":
            if student_layers != teacher_layers:
                raise ConfigError(
                    f"{where}: 'one_to_one' needs equal depths, but the student has {student_layers} "
                    f"layers and the teacher {teacher_layers}; use 'uniform' or an explicit list."
                )
            pairs = tuple((i, i) for i in range(1, student_layers + 1))
        elif spec == "uniform":
            if student_layers < 1 or teacher_layers % student_layers:
                raise ConfigError(
                    f"{where}: 'uniform' needs the teacher depth ({teacher_layers}) to be a multiple of "
                    f"the student depth ({student_layers}); give an explicit list instead."
                )
            step = teacher_layers // student_layers
            pairs = tuple((i, i * step) for i in range(1, student_layers + 1))
        elif isinstance(spec, str):
            raise ConfigError(f"{where}: unknown mapping {spec!r}; use 'one_to_one', 'uniform' or a list.")
        else:
            pairs = _explicit_pairs(spec, where)
        for s, t in pairs:
            if not (1 <= s <= student_layers and 1 <= t <= teacher_layers):
                raise ConfigError(
                    f"{where}: pair (student {s}, teacher {t}) is out of range: the student has layers "
                    f"1..{student_layers} and the teacher 1..{teacher_layers}."
                )
        return cls(pairs)


def _explicit_pairs(spec: Sequence[Any], where: str) -> tuple[tuple[int, int], ...]:
    if all(isinstance(t, int) and not isinstance(t, bool) for t in spec):
        return tuple((i, int(t)) for i, t in enumerate(spec, start=1))
    if all(isinstance(p, Sequence) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in spec):
        return tuple((int(p[0]), int(p[1])) for p in spec)
    raise ConfigError(
        f"{where}: expected a list of teacher layers or of [student, teacher] pairs, got {spec!r}."
    )


@dataclass(frozen=True)
class LossInputs:
    """Everything a loss sees: both models' outputs, the batch and the layer mapping."""

    student: DistillationOutputs
    teacher: DistillationOutputs
    batch: Mapping[str, Any]
    mapping: LayerMapping


class Loss(Component):
    """Base class of distillation and task losses (``compresskit_register_losses``).

    ``requires`` names the outputs the loss reads (from :data:`OUTPUT_NAMES`) so that a strategy that
    asks for an output the model cannot produce fails before training starts (:meth:`check`).
    ``needs_teacher`` is ``False`` for losses on the student alone (task loss, MLM). Subclasses implement
    :meth:`compute`; ``__call__`` multiplies it by ``options.weight`` when the options have one and
    returns a float32 scalar. ``problem_types`` lists the problem types (:data:`PROBLEM_TYPES`) whose
    outputs the loss can use, ``None`` for any: a softmax over a single regression output is constant,
    so a softmax-based logit loss on STS-B would be exactly 0 with zero gradient. :meth:`check_problem_type`
    refuses such a pairing before training. Losses reduce in float32 whatever the models' dtype (a
    half-precision sum of squared attention-score differences overflows to inf).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    needs_teacher: ClassVar[bool] = True
    problem_types: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.problem_types or ()) - set(PROBLEM_TYPES))
        if unknown:
            raise TypeError(
                f"loss {cls.__name__}: problem_types {unknown} are not problem types; use "
                f"{', '.join(PROBLEM_TYPES)}."
            )

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        weight = float(getattr(self.options, "weight", 1.0))
        return weight * self.compute(inputs).float()

    def check_problem_type(self, problem_type: str | None, *, where: str = "") -> None:
        """Raise :class:`ConfigError` if this loss cannot use the outputs of a ``problem_type`` model.

        ``None`` (unknown) passes; the loss then checks the outputs it is given when it runs.
        """
        if problem_type is None or self.problem_types is None or problem_type in self.problem_types:
            return
        raise ConfigError(
            f"{where or self.name}: loss {self.name!r} does not fit a {problem_type} model (it fits "
            f"{', '.join(sorted(self.problem_types))}). For regression use 'logit_mse' for logit KD and "
            "'task' for the labels."
        )

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        """The unweighted loss value (a scalar tensor)."""
        raise NotImplementedError(f"loss {self.name!r} does not implement compute()")

    def check(self, available: frozenset[str], *, model: str, where: str = "") -> None:
        """Raise :class:`ConfigError` if ``model`` cannot produce an output this loss requires."""
        missing = sorted(self.requires - available)
        if missing:
            raise ConfigError(
                f"{where or self.name}: loss {self.name!r} needs the {', '.join(missing)} of the {model}, "
                f"which it does not produce (it produces: {', '.join(sorted(available)) or 'nothing'}). "
                "Remove the loss or use a model with that output."
            )


#: Head class-name suffixes of transformers models and the problem type their outputs have.
_HEAD_PROBLEM_TYPES = {
    "ForQuestionAnswering": "question_answering",
    "ForMaskedLM": "language_modeling",
    "ForCausalLM": "language_modeling",
    "LMHeadModel": "language_modeling",
}


def problem_type_of(model: torch.nn.Module) -> str | None:
    """The problem type of ``model``'s outputs (one of :data:`PROBLEM_TYPES`), or ``None`` if unknown.

    Read from ``model.config.problem_type`` when it names one; otherwise a sequence classifier with one
    label is a regression, with more a single-label classifier, and question-answering and LM heads
    are known by their class name.
    """
    config = getattr(model, "config", None)
    declared = getattr(config, "problem_type", None)
    if declared in PROBLEM_TYPES:
        return str(declared)
    name = type(model).__name__
    if name.endswith("ForSequenceClassification") and declared is None:
        return "regression" if int(getattr(config, "num_labels", 2)) == 1 else "single_label_classification"
    return next((kind for suffix, kind in _HEAD_PROBLEM_TYPES.items() if name.endswith(suffix)), None)


@dataclass(frozen=True)
class StageOptions:
    """Options of one stage (a ``[steps.options.stage1]`` table, or a single-stage distiller's options).

    ``losses`` maps loss names to a weight or to a table of that loss's options (``None``: the
    distiller's defaults for the student's problem type, e.g. logit MSE instead of a softmax-based logit
    loss for a regression head); ``teacher`` and
    ``data`` name entries of the ``teachers`` and ``data`` mappings given to ``distill``; ``mapping`` is
    ``"auto"`` (one-to-one for equal depths, else uniform), ``"one_to_one"``, ``"uniform"`` or a list;
    ``training`` holds :class:`compresskit.training.TrainingConfig` fields.
    """

    losses: dict[str, Any] | None = None
    teacher: str = FINETUNED
    data: str = "train"
    training: dict[str, Any] = field(default_factory=dict)
    mapping: str | tuple[Any, ...] = "auto"
    cache_teacher_outputs: bool = False
    primary_metric: str | None = None
    greater_is_better: bool = True


@dataclass(frozen=True)
class StagePlan:
    """One stage a distiller will run, as it declares it (:meth:`Distiller.stages`).

    ``name`` names the stage (its training folder, its tracker prefix, ``stage '<name>'`` in messages);
    ``options`` are its validated :class:`StageOptions` (teacher, data, losses, training fields);
    ``path`` is where those options sit under the distiller's ``options`` table, as a dotted path
    (``"stage1"``; ``""`` when the table is the stage itself), so messages name the key the user wrote.
    """

    name: str
    options: StageOptions
    path: str = ""

    @property
    def teacher(self) -> str:
        """The name of the teacher this stage learns from (e.g. :data:`PRETRAINED`)."""
        return self.options.teacher

    @property
    def data(self) -> str:
        """The name of the data this stage reads."""
        return self.options.data

    @property
    def batch_size(self) -> int | None:
        """The stage's ``training.batch_size``; ``None``: the training default."""
        value = self.options.training.get("batch_size")
        return None if value is None else int(value)

    def where(self, options_path: str) -> str:
        """The config path of this stage's options under ``options_path`` (e.g. ``steps[1].options``)."""
        return f"{options_path}.{self.path}" if self.path else options_path


def check_loss_weight(value: Any, where: str) -> None:
    """A loss weight must be a finite number ≥ 0 (a negative weight would train *away* from the teacher)."""
    weight = value.get("weight", 1.0) if isinstance(value, Mapping) else value
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        return  # the type is the loss options' parser's to report
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(
            f"{where}: weight {weight!r}; a loss weight must be a finite number ≥ 0 (a negative weight "
            "maximises the loss, i.e. pushes the student away from the teacher). Use e.g. 1.0, or 0 to "
            "switch the loss off."
        )


class Distiller(Component):
    """Base class of distillers (``compresskit_register_distillers``).

    :meth:`stages` declares the stages the distiller will run (teacher, data, options of each);
    :meth:`distill` trains ``student`` in place against ``teachers`` (named, e.g. :data:`PRETRAINED` and
    :data:`FINETUNED`) on the loaders in ``data`` (named as the stages name them) and returns a JSON-able
    summary. The KD engine (:mod:`compresskit.kd_stage`, :mod:`compresskit.kd_engine`) runs a stage in
    a few lines.
    """

    def stages(self, problem_type: str | None = None) -> list[StagePlan]:
        """The stages :meth:`distill` will run, in order, for a student of ``problem_type`` (one of
        :data:`~compresskit.tasks.PROBLEM_TYPES`, ``None`` when unknown). Raises :class:`ConfigError`
        for invalid stage options. Runners use it to load only the teachers and data the stages name."""
        raise NotImplementedError(f"distiller {self.name!r} does not implement stages()")

    def distill(
        self,
        student: torch.nn.Module,
        teachers: Mapping[str, torch.nn.Module],
        data: Mapping[str, Any],
        *,
        output_dir: Any,
        evaluate: Any = None,
        tracker: Any = None,
        registry: Any = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train the student; return per-stage results (losses, metrics, checkpoints).

        ``registry`` is the run's plugin registry (losses, mappings; ``None``: the installed one);
        ``defaults`` are :class:`~compresskit.training.TrainingConfig` fields of the run (seed,
        progress, cpu) that each stage's own ``training`` table overrides.
        """
        raise NotImplementedError(f"distiller {self.name!r} does not implement distill()")

    def check_student(
        self,
        student: torch.nn.Module,
        teachers: Mapping[str, torch.nn.Module],
        *,
        registry: Any = None,
        where: str = "",
    ) -> None:
        """Raise a :class:`ConfigError` (naming ``where``, the options' config path) if :meth:`distill`
        could not run against this student; called before any training.

        ``student`` and ``teachers`` are shape-only copies on the ``meta`` device (the student as the
        earlier decompose steps will leave it); they may be changed freely. Check what fails late
        otherwise: loss names and options, the outputs the losses need, layer mappings, modules copied
        from a teacher. The default checks nothing.
        """
