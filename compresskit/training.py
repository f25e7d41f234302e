"""The training loop, built on 🤗 accelerate: one loop for every stage of every strategy.

accelerate handles device placement, mixed precision (bf16 on CPU or GPU, fp16 with a gradient scaler
on CUDA), multi-process data parallelism (``accelerate launch``) and gradient accumulation; this module
adds what a compression run needs around it:

* AdamW with decoupled weight decay (biases and 1-D parameters such as LayerNorm weights are not
  decayed) and a linear warmup followed by a linear decay to zero (:func:`linear_warmup_decay`);
* gradient clipping, evaluation every N steps with best-checkpoint selection, a tqdm progress bar with the
  running loss terms, tracking of every loss term and the learning rate;
* atomic checkpoints and *exact* resume (:mod:`compresskit.checkpoint`): a run killed at any step and
  resumed ends with bitwise the same weights on CPU as an uninterrupted run with the same seed;
* clear errors for a non-finite loss or gradient, out-of-memory, and a checkpoint of another run.

Example::

    trainer = Trainer(model, TrainingConfig(learning_rate=1e-4, num_epochs=3, eval_every=100),
                      loader, lambda m, b: {"loss": m(**b).loss}, evaluate=my_eval,
                      primary_metric="accuracy", output_dir="runs/sst2")
    result = trainer.train()            # resumes from runs/sst2/checkpoints if present

Several processes: start the script with ``accelerate launch --multi_gpu --num_processes N script.py``
(``torchrun`` works too); on a machine without a GPU the Trainer selects accelerate's multi-CPU (gloo)
backend. Each process then sees its own shard of every epoch; only rank 0 writes checkpoints. Use one
``output_dir`` per stage: a checkpoint of another stage is refused (its fingerprint differs).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from compresskit.errors import ConfigError
from compresskit.tracking import Tracker, flatten

if TYPE_CHECKING:
    from accelerate import Accelerator

MixedPrecision = Literal["no", "bf16", "fp16"]
LossTerms = Mapping[str, "torch.Tensor | float"]
ComputeLoss = Callable[[torch.nn.Module, Any], LossTerms]
Evaluate = Callable[[torch.nn.Module], Mapping[str, float]]


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training stage (the ``[training]`` table of a config file).

    ``max_steps`` counts optimizer steps and, when set, wins over ``num_epochs`` (which may be
    fractional). One optimizer step consumes ``gradient_accumulation_steps`` batches of the loader (the
    last step of an epoch may consume fewer). ``batch_size`` is the per-process batch size used by
    whoever builds the data loader. ``eval_every`` / ``checkpoint_every`` / ``log_every`` count
    optimizer steps. ``cpu=True`` forces the CPU even when a GPU is present. ``load_best_at_end``
    loads the weights of the best checkpoint (by the trainer's ``primary_metric``) into the model when
    training ends; otherwise the model keeps its final weights.
    """

    learning_rate: float = 5e-5
    num_epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    mixed_precision: MixedPrecision = "no"
    eval_every: int | None = None
    checkpoint_every: int | None = None
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 42
    progress: bool = True
    cpu: bool = False
    load_best_at_end: bool = False

    def __post_init__(self) -> None:
        _positive(self, "learning_rate", self.learning_rate)
        _positive(self, "num_epochs", self.num_epochs)
        _positive(self, "batch_size", self.batch_size, integer=True)
        _positive(self, "gradient_accumulation_steps", self.gradient_accumulation_steps, integer=True)
        _positive(self, "log_every", self.log_every, integer=True)
        _positive(self, "keep_checkpoints", self.keep_checkpoints, integer=True)
        for name in ("max_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) is not None:
                _positive(self, name, getattr(self, name), integer=True)
        if self.max_grad_norm is not None:
            _positive(self, "max_grad_norm", self.max_grad_norm)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.weight_decay < 0:
            raise ConfigError(f"training.weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.mixed_precision not in get_args(MixedPrecision):
            raise ConfigError(
                f"training.mixed_precision must be one of 'no', 'bf16', 'fp16', got {self.mixed_precision!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(config: TrainingConfig, name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        expected = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"training.{name} must be {expected}, got {value!r}.")


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`Trainer.train` returns.

    ``losses`` holds, for each loss term (and ``"lr"``), its mean over each logging window, in order;
    ``resumed_from_step`` is the step of the checkpoint the run resumed from (``None`` for a fresh run).
    ``throughput`` measures the training steps of this call only (data loading, forward, backward and
    optimizer; evaluation and checkpoint writes excluded), on this process: ``examples_per_second``,
    ``tokens_per_second`` (real tokens, from the attention mask) and ``padding`` (the fraction of
    padded positions in the batches); empty when no step ran.
    """

    steps: int
    epochs_completed: float
    final_metrics: dict[str, float]
    best_metric: float | None
    best_checkpoint: Path | None
    losses: dict[str, list[float]]
    resumed_from_step: int | None
    final_checkpoint: Path | None = None
    throughput: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("best_checkpoint", "final_checkpoint"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


# --------------------------------------------------------------------------- optimizer and schedule


def linear_warmup_decay(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based).

    ``step / warmup_steps`` while ``step < warmup_steps``, then
    ``max(0, (total_steps - step) / (total_steps - warmup_steps))``: a linear warmup from 0 to the peak,
    then a linear decay to 0 at ``total_steps`` (the schedule of BERT and of KroneckerBERT's training).
    """
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases and 1-D parameters (LayerNorm, scales)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``model`` (see :func:`parameter_groups`)."""
    groups = parameter_groups(model, config.weight_decay)
    if not groups:
        raise ConfigError(
            "the model has no trainable parameter (every parameter has requires_grad=False); "
            "unfreeze the modules to train or check which modules the strategy freezes."
        )
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`linear_warmup_decay`."""
    factor = functools.partial(linear_warmup_decay, warmup_steps=warmup_steps, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def schedule_lengths(config: TrainingConfig, batches_per_epoch: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, warmup_steps)`` for a loader of ``batches_per_epoch`` batches."""
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total = config.max_steps or math.ceil(config.num_epochs * steps_per_epoch)
    return steps_per_epoch, total, math.ceil(config.warmup_ratio * total)


# --------------------------------------------------------------------------- accelerator and run identity

#: Training-config fields that change the trajectory: a checkpoint written with other values is refused.
TRAJECTORY_FIELDS = (
    "learning_rate",
    "num_epochs",
    "max_steps",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "warmup_ratio",
    "weight_decay",
    "mixed_precision",
    "seed",
)


def make_accelerator(trainer: Trainer) -> Accelerator:
    """A fresh :class:`accelerate.Accelerator` for this run's precision, accumulation and data seed."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, GradientState

    config = trainer.config
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise ConfigError(
            "training.mixed_precision='fp16' needs a CUDA GPU (fp16 autocast with a gradient scaler); "
            "on the CPU use mixed_precision='bf16' or 'no'."
        )
    # AcceleratorState is a process-wide singleton that refuses a second precision; several stages (or
    # tests) in one process each need their own, so drop it (the distributed PartialState is kept).
    # GradientState likewise still references the data loaders of a run that stopped with an error.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        cpu=config.cpu or not _accelerator_device_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        step_scheduler_with_optimizer=False,
    )


def _accelerator_device_available() -> bool:
    """Whether torch sees a GPU-like device (CUDA, XPU, MPS, ...).

    Without one the run is put on the CPU explicitly, which is also what makes accelerate use its
    multi-CPU (gloo) backend when the script was started by ``accelerate launch --multi_gpu``/``torchrun``.
    """
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def model_signature(model: torch.nn.Module) -> str:
    """Short hash of the names, shapes and dtypes of a model's state dict (its architecture)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def run_fingerprint(trainer: Trainer, accelerator: Accelerator) -> dict[str, Any]:
    """The flat, JSON-normalised identity of a run: stage, model, trajectory settings, user fingerprint."""
    config = trainer.config
    fingerprint: dict[str, Any] = {
        "stage": trainer.stage,
        "model.class": type(trainer.model).__name__,
        "model.structure": model_signature(trainer.model),
        "processes": accelerator.num_processes,
    }
    fingerprint.update({f"training.{k}": getattr(config, k) for k in TRAJECTORY_FIELDS})
    fingerprint.update(flatten(dict(trainer.fingerprint or {}), prefix="user"))
    try:
        normalised: dict[str, Any] = json.loads(json.dumps(fingerprint))
    except TypeError as exc:
        raise ConfigError(f"Trainer(fingerprint=...) must be JSON-able: {exc}.") from exc
    return normalised


# --------------------------------------------------------------------------- the trainer


@dataclass(eq=False)
class Trainer:
    """Train ``model`` on ``train_loader`` with ``compute_loss``; see the module docstring.

    ``compute_loss(model, batch)`` returns a mapping with the total ``"loss"`` to back-propagate plus any
    named terms to log. ``evaluate(model)`` returns metrics; ``primary_metric`` (one of its keys)
    selects the best checkpoint. ``frozen_modules`` (teachers) are moved to the device, put in eval
    mode without gradients and are not checkpointed. ``fingerprint`` (JSON-able) identifies the run: a
    checkpoint with another fingerprint is refused. ``resume=False`` moves existing checkpoints aside
    (to ``checkpoints.old-N``) and starts fresh. The tracker is a :class:`compresskit.Tracker` whose run
    is already started; metrics are logged as ``"{stage}/{term}"`` and ``"{stage}/eval/{metric}"``.
    """

    model: torch.nn.Module
    config: TrainingConfig
    train_loader: Iterable[Any]
    compute_loss: ComputeLoss
    _: dataclasses.KW_ONLY
    output_dir: str | Path
    evaluate: Evaluate | None = None
    primary_metric: str | None = None
    greater_is_better: bool = True
    tracker: Tracker | None = None
    stage: str = "train"
    fingerprint: Mapping[str, Any] | None = None
    frozen_modules: Iterable[torch.nn.Module] = ()
    resume: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.config, Mapping):
            self.config = TrainingConfig(**self.config)
        if not isinstance(self.config, TrainingConfig):
            raise ConfigError(
                f"Trainer(config=...) must be a TrainingConfig, got {type(self.config).__name__}."
            )
        self.output_dir = Path(self.output_dir)
        self.frozen_modules = tuple(self.frozen_modules)
        if self.primary_metric is not None and self.evaluate is None:
            raise ConfigError(
                f"primary_metric={self.primary_metric!r} needs an evaluate function to compute it; "
                "pass evaluate=... or drop primary_metric."
            )
        if self.config.eval_every is not None and self.evaluate is None:
            raise ConfigError("training.eval_every is set but the Trainer has no evaluate function.")

    def train(self) -> TrainResult:
        """Run (or resume) training to the end; return a :class:`TrainResult`."""
        from compresskit.training_loop import TrainingRun

        return TrainingRun(self).execute()
