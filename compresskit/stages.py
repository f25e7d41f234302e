"""The stages of ``compresskit run``, each a function of a :class:`RunContext` returning a JSON result.

Stages save what they produce (a fine-tuned teacher, a decomposed or distilled student) in their own
folder of the run directory before they return, so the pipeline can record them as complete and a
rerun can start from the saved model. Long stages (fine-tuning, distillation) run on the shared
:class:`~compresskit.training.Trainer`, which checkpoints and resumes inside the stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compresskit.component import parse_options
from compresskit.config import step_as_mapping
from compresskit.distillation import FINETUNED, PRETRAINED, problem_type_of
from compresskit.errors import ConfigError
from compresskit.models import copy_head, forward_inputs, load_task_model, replace_head
from compresskit.registry import Registry
from compresskit.strategy import DecomposeStep, DistillStep, Strategy
from compresskit.tracking import Tracker, flatten
from compresskit.training import TrainingConfig

MODEL_DIR = "model"
#: The config key of the fine-tuned teacher (named in errors about it).
FINETUNED_KEY = "model.finetuned_teacher"


@dataclass
class RunContext:
    """What every stage needs: the strategy, registry, run directory, task, tokenizer and tracker."""

    strategy: Strategy
    registry: Registry
    run_dir: Path
    task: Any
    tokenizer: Any
    tracker: Tracker
    pretrained_path: str
    device: str = "auto"
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    #: Each step resolved once by the preflight (index → a decompose step's groups, a distill step's
    #: Distiller); a step missing here is resolved from the strategy.
    steps: Mapping[int, Any] = field(default_factory=dict)
    #: Whether this process writes the run's files (see :mod:`compresskit.distributed`).
    is_main: bool = True

    @property
    def torch_device(self) -> torch.device:
        if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    @property
    def training_defaults(self) -> dict[str, Any]:
        """The run's :class:`TrainingConfig` fields (seed, progress, cpu) under every training table's own."""
        defaults: dict[str, Any] = {"seed": self.strategy.seed, "progress": self.progress}
        if self.device == "cpu":
            defaults["cpu"] = True
        return defaults

    def training_config(self, values: Mapping[str, Any], where: str) -> Any:
        """A :class:`TrainingConfig` from a config table, over :attr:`training_defaults`."""
        return parse_options(TrainingConfig, {**self.training_defaults, **values}, where)


# --------------------------------------------------------------------------- teacher


def finetune_teacher(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Fine-tune the pre-trained teacher on the task's train split; save it to ``out/model``."""
    from compresskit.training import Trainer

    spec = ctx.strategy.finetune
    model = load_task_model(ctx.pretrained_path, ctx.task)
    config = ctx.training_config(spec.training, "finetune.training")
    loader = ctx.task.dataloader(
        "train",
        ctx.tokenizer,
        batch_size=config.batch_size,
        shuffle=True,
        seed=ctx.strategy.seed,
        max_length=spec.max_length,
        limit=spec.train_limit,
        group_by_length=spec.group_by_length,
    )
    result = Trainer(
        model,
        config,
        loader,
        task_loss,
        output_dir=out / "work",
        tracker=ctx.tracker,
        stage="finetune",
        fingerprint={"stage": "finetune", "strategy": ctx.strategy.fingerprint("model", "task", "finetune")},
    ).train()
    if ctx.is_main:
        model.save_pretrained(out / MODEL_DIR)
        ctx.tokenizer.save_pretrained(out / MODEL_DIR)  # a folder usable on its own (evaluate, pipeline)
    return {
        "path": str(out / MODEL_DIR),
        "finetuned_here": True,
        "steps": result.steps,
        "throughput": result.throughput,
        "work": str(out / "work"),
    }


def task_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own task loss (cross-entropy, or MSE for regression) on a labelled batch."""
    output = model(**forward_inputs(model, batch))
    return {"loss": output.loss}


# --------------------------------------------------------------------------- student steps


def initial_student(ctx: RunContext, teacher_dir: str) -> torch.nn.Module:
    """The student before its first step: a saved student (``model.student``) with the fine-tuned
    teacher's head, the fine-tuned teacher, or the pre-trained one with the fine-tuned head."""
    finetuned = load_task_model(teacher_dir, ctx.task, where="model.finetuned_teacher")
    if ctx.strategy.model.student is not None:
        student = load_student(ctx.strategy.model.student)
        replace_head(finetuned, student)
        return student
    if ctx.strategy.model.student_init == "finetuned":
        return finetuned
    student = load_task_model(ctx.pretrained_path, ctx.task)
    copy_head(finetuned, student)
    return student


def decompose_step(
    ctx: RunContext, index: int, step: DecomposeStep, student: torch.nn.Module, out: Path
) -> dict:
    """Apply one decompose step through the walker; save the student and the report."""
    from compresskit.walker import decompose

    groups = ctx.steps.get(index) or step_as_mapping(step)
    report = decompose(student, groups, registry=ctx.registry)
    report_data = report.to_dict() if hasattr(report, "to_dict") else {}
    if ctx.is_main:  # every process decomposes its own copy of the student; one writes
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report_data, indent=2, default=str))
        if hasattr(report, "format"):
            (out / "report.txt").write_text(report.format())
        save_student(student, out / MODEL_DIR, ctx.tokenizer)
        ctx.tracker.log_artifact(out / "report.json", f"steps/{index:02d}-decompose")
    totals = report_data.get("totals", {})
    return {"path": str(out / MODEL_DIR), "report": str(out / "report.json"), "totals": totals}


def distill_step(
    ctx: RunContext, index: int, step: DistillStep, student: torch.nn.Module, teacher_dir: str, out: Path
) -> dict[str, Any]:
    """Train the student with the step's distiller, against the teachers and on the data its stages name."""
    where = f"steps[{index}].options"
    distiller = ctx.steps.get(index) or ctx.registry.create(
        "distiller", step.distiller, step.options, where=where
    )
    plans = distiller.stages(problem_type_of(student))
    sources = {PRETRAINED: (ctx.pretrained_path, "model.teacher"), FINETUNED: (teacher_dir, FINETUNED_KEY)}
    teachers = {  # only the teachers the stages learn from
        name: load_task_model(sources[name][0], ctx.task, where=sources[name][1])
        for name in dict.fromkeys(plan.teacher for plan in plans)
        if name in sources
    }
    data = {
        plan.data: distill_loader(ctx, step, plan.data, plan.batch_size, f"steps[{index}].data.{plan.data}")
        for plan in plans
    }
    result = distiller.distill(
        student,
        teachers,
        data,
        output_dir=out / "work",
        evaluate=lambda model: evaluate_model(ctx, model),
        tracker=ctx.tracker,
        registry=ctx.registry,
        defaults=ctx.training_defaults,
    )
    if ctx.is_main:
        save_student(student, out / MODEL_DIR, ctx.tokenizer)
    return {
        "path": str(out / MODEL_DIR),
        "distiller": step.distiller,
        "result": _jsonable(result),
        "work": str(out / "work"),
    }


def distill_loader(ctx: RunContext, step: DistillStep, name: str, batch_size: int | None, where: str) -> Any:
    """The loader of data ``name``: its ``[steps.data.<name>]`` table, else the run task's train split."""
    spec = step.data.get(name)
    if spec is None:
        from compresskit.strategy import DataSpec

        finetune = ctx.strategy.finetune
        spec = DataSpec(
            max_length=finetune.max_length,
            limit=finetune.train_limit,
            group_by_length=finetune.group_by_length,
        )
    task = ctx.task
    if spec.task is not None:
        task = ctx.registry.create("task", spec.task, spec.options, where=f"{where}.options")
    return task.dataloader(
        spec.split,
        ctx.tokenizer,
        batch_size=batch_size or TrainingConfig.batch_size,
        shuffle=spec.shuffle,
        seed=ctx.strategy.seed,
        max_length=spec.max_length,
        limit=spec.limit,
        group_by_length=spec.group_by_length,
    )


# --------------------------------------------------------------------------- saving and loading


def save_student(model: torch.nn.Module, folder: Path, tokenizer: Any = None) -> None:
    """Save a (possibly decomposed) model, with its tokenizer, so :func:`load_student` rebuilds it exactly."""
    from compresskit.saving import save

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(model, tmp, tokenizer=tokenizer)
    except BaseException:  # a full disk or an interruption leaves no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def drop_checkpoints(work: str | Path | None) -> None:
    """Delete the training checkpoints under a finished stage's ``work`` folder (only resuming needs them)."""
    from compresskit.checkpoint import CHECKPOINTS_DIR

    if not work or not Path(work).is_dir():
        return
    for folder in sorted(Path(work).rglob(CHECKPOINTS_DIR), reverse=True):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def load_student(folder: str | Path) -> torch.nn.Module:
    """Load a model saved by :func:`save_student` (compressed structure rebuilt from its plan)."""
    from compresskit.saving import load

    return load(folder)


# --------------------------------------------------------------------------- evaluation and measurement


def evaluate_model(ctx: RunContext, model: torch.nn.Module) -> dict[str, float]:
    """The task's official metrics on the evaluation split (``[evaluation]``)."""
    spec = ctx.strategy.evaluation
    if spec.split not in ctx.task.splits():
        raise ConfigError(
            f"evaluation.split: {spec.split!r} is not a split of this task ({ctx.task.splits()})."
        )
    model.to(ctx.torch_device)
    metrics = ctx.task.evaluate(
        model,
        ctx.tokenizer,
        spec.split,
        batch_size=spec.batch_size,
        max_length=spec.max_length,
        limit=spec.limit,
        device=ctx.torch_device,
    )
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}


def measure(ctx: RunContext, model: torch.nn.Module, saved_dir: Path, **extra: Any) -> dict[str, Any]:
    """Parameters, FLOPs, size on disk and latency of ``model`` (``[measure]``), on CPU unless cuda."""
    from compresskit.measure import measure_model

    spec = ctx.strategy.measure
    model.to(ctx.torch_device)
    return measure_model(
        model,
        seq_len=spec.seq_len,
        batch_size=spec.batch_size,
        warmup=spec.warmup,
        repeats=spec.repeats,
        threads=spec.threads,
        saved_dir=saved_dir,
        **extra,
    )


def log_params(tracker: Tracker, strategy: Strategy) -> None:
    """Log the whole resolved strategy, flattened (``steps.0.groups.1.options.rank``)."""
    data = strategy.to_dict()
    steps = data.pop("steps", [])
    params = flatten(data)
    for index, step in enumerate(steps):
        params.update(flatten(_index_lists(step), f"steps.{index}"))
    tracker.log_params(params)


def _index_lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _index_lists(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return {str(i): _index_lists(v) for i, v in enumerate(value)}
    return value


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)
