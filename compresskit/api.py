"""The Python API of the main job: ``compress`` runs a whole strategy; ``distill`` and ``evaluate`` are
the pieces (with ``compresskit.decompose``, the walker).

``compresskit.compress(model_or_path, strategy)`` runs exactly what ``compresskit run`` runs. The
pieces underneath are public too: ``compresskit.decompose`` (the walker), the distillers from the
registry, and :func:`evaluate` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compresskit.distillation import FINETUNED, PRETRAINED
from compresskit.pipeline import CompressResult, Pipeline
from compresskit.registry import Registry
from compresskit.strategy import Strategy
from compresskit.tracking import Tracker

#: The folder of the run directory an in-memory teacher given to :func:`compress` is saved in.
INPUT_MODEL_DIR = "input_model"


def as_strategy(strategy: Strategy | str | Path | Mapping[str, Any]) -> Strategy:
    """A :class:`Strategy` from itself, a config file path or the config-file mapping."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str | Path):
        return Strategy.from_file(strategy)
    return Strategy.from_dict(strategy)


def compress(
    model: Any,
    strategy: Strategy | str | Path | Mapping[str, Any],
    *,
    output_dir: str | Path | None = None,
    tracker: Tracker | None = None,
    restart: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> CompressResult:
    """Compress ``model``: a folder, a Hub id, ``"default"``, or a loaded Hugging Face model (saved into
    the run directory first); ``None`` keeps the strategy's ``[model] teacher``.

    Runs the same pipeline as ``compresskit run`` (fine-tune → decompose → distil → evaluate → save →
    measure → track) in ``output_dir`` and resumes what an earlier call there completed
    (``restart=True``: starts over, keeping only the teacher ``model`` saved there). The result's
    ``student`` is the final student (an ``nn.Module``; also saved in ``result.model_dir``).
    """
    resolved = as_strategy(strategy)
    keep: tuple[str, ...] = ()
    if model is not None and not isinstance(model, str | Path):
        model = _save_input_model(
            model, Path(output_dir or resolved.output_dir or Path("runs") / resolved.name)
        )
        keep = (INPUT_MODEL_DIR,)  # restart=True empties the run folder: the teacher just saved stays
    if model is not None:
        resolved = dataclasses.replace(
            resolved, model=dataclasses.replace(resolved.model, teacher=str(model))
        )
    pipeline = Pipeline(
        resolved,
        output_dir=output_dir,
        tracker=tracker,
        restart=restart,
        device=device,
        progress=progress,
        keep=keep,
        return_student=True,
    )
    return pipeline.run()


def distill(
    student: Any,
    teacher: Any,
    data: Mapping[str, Any],
    *,
    distiller: str = "two_stage_kd",
    options: Mapping[str, Any] | None = None,
    pretrained_teacher: Any = None,
    output_dir: str | Path,
    evaluate: Any = None,
    tracker: Tracker | None = None,
    registry: Registry | None = None,
    seed: int = 42,
) -> dict[str, Any]:
    """Train ``student`` in place against ``teacher`` with a registered distiller.

    ``data`` maps the data names the distiller reads (two-stage KD: ``"stage1"``, ``"stage2"``;
    ``logits_kd``: ``"train"``) to data loaders. ``pretrained_teacher`` is stage 1's teacher in two-stage
    KD (default: ``teacher``). Resumes from the checkpoints in ``output_dir``. ``seed`` seeds what the
    distiller builds before training (learned projections); the caller's random state is restored.
    """
    from compresskit.seeding import seeded
    from compresskit.tracking import NullTracker

    registry = registry or Registry.from_plugins()
    component = registry.create("distiller", distiller, options or {}, where="distill.options")
    teachers = {
        FINETUNED: teacher,
        PRETRAINED: pretrained_teacher if pretrained_teacher is not None else teacher,
    }
    with seeded(seed):
        return dict(
            component.distill(
                student,
                teachers,
                data,
                output_dir=Path(output_dir),
                evaluate=evaluate,
                tracker=tracker or NullTracker(),
                registry=registry,
            )
        )


def evaluate(
    model: Any,
    task: str = "glue",
    /,
    *,
    tokenizer: Any = None,
    split: str = "dev",
    batch_size: int = 64,
    max_length: int | None = None,
    limit: int | None = None,
    registry: Registry | None = None,
    **task_options: Any,
) -> dict[str, float]:
    """The official metrics of ``model`` (a module or a saved folder) on a registered task's split.

    ``evaluate(model, "glue", task="sst2", tokenizer=tok)`` → ``{"accuracy": 0.9}`` (the task name is
    positional, so a task option may be called ``task``). A folder is loaded with its own tokenizer;
    a folder without one is refused (:class:`ConfigError`) before the model is loaded.
    """
    from compresskit.models import check_head_fits, load_tokenizer

    registry = registry or Registry.from_plugins()
    task_obj = registry.create("task", task, task_options, where="task.options")
    if isinstance(model, str | Path):
        folder = Path(model)
        tokenizer = tokenizer or load_tokenizer(folder)  # checked before the model is loaded
        model = _load_any(folder, task_obj)
    if tokenizer is None:
        raise TypeError("evaluate(model, ...) needs tokenizer=... when model is not a saved folder")
    check_head_fits(model, task_obj, where="model")
    return task_obj.evaluate(
        model, tokenizer, split, batch_size=batch_size, max_length=max_length, limit=limit
    )


def _save_input_model(model: Any, run_dir: Path) -> Path:
    """Save an in-memory Hugging Face model as the run's teacher, with the tokenizer of the folder it
    was loaded from when there is one (otherwise set ``[model] tokenizer``)."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            "compress(model, ...): expected a path, 'default' or a Hugging Face model, "
            f"got {type(model).__name__}"
        )
    import contextlib

    from compresskit.errors import ConfigError
    from compresskit.models import load_tokenizer

    folder = run_dir / INPUT_MODEL_DIR
    model.save_pretrained(folder)
    source = str(getattr(model, "name_or_path", "") or "")
    if source and Path(source).is_dir():  # keep the folder usable on its own: its tokenizer beside it
        with contextlib.suppress(ConfigError):  # none there: preflight asks for [model] tokenizer
            load_tokenizer(source).save_pretrained(folder)
    return folder


def _load_any(folder: Path, task: Any) -> Any:
    from compresskit.models import load_task_model
    from compresskit.saving import is_compressed_folder, load

    if is_compressed_folder(folder):
        return load(folder)
    return load_task_model(folder, task)
