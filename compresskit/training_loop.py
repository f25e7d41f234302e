"""One execution of :meth:`compresskit.Trainer.train`: the accelerate loop, resume, logging, checkpoints.

Exact resume rests on three facts. (1) The data order of epoch ``e`` depends only on ``seed + e``
(accelerate's seedable sampler), so ``skip_first_batches`` continues an epoch with the very batches the
interrupted run would have seen. (2) Checkpoints are taken only at optimizer-step boundaries, after
evaluation, so nothing of a half-accumulated step is lost. (3) The RNG states saved with a checkpoint are
put back at the moment the interrupted run would have gone on: before the next epoch's iterator is
created when the checkpoint closed an epoch, otherwise just before the first resumed batch is used
(creating a data-loader iterator draws a seed from the global RNG, which the interrupted run had done
long before). Collate functions that draw from the global RNG while prefetching break (3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from compresskit import checkpoint as ckpt
from compresskit.errors import CheckpointError, DataError, TrainingError
from compresskit.training import (
    TrainResult,
    build_optimizer,
    build_scheduler,
    make_accelerator,
    run_fingerprint,
    schedule_lengths,
)

if TYPE_CHECKING:
    from compresskit.training import Trainer


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint's ``trainer_state.json``."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    last_eval_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=dict)
    window_batches: int = 0

    def to_state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Progress:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in state.items() if k in names})


@dataclass
class Throughput:
    """Seconds, examples and tokens of the training steps of one ``train()`` call (this process)."""

    seconds: float = 0.0
    examples: int = 0
    tokens: int = 0
    positions: int = 0

    def add(self, batch: Any, seconds: float) -> None:
        mask = _attention_mask(batch)
        self.seconds += seconds
        if mask is not None:
            self.examples += int(mask.shape[0])
            self.tokens += int(mask.sum())
            self.positions += int(mask.numel())

    def to_dict(self) -> dict[str, float]:
        if self.seconds <= 0 or not self.examples:
            return {}
        return {
            "examples_per_second": self.examples / self.seconds,
            "tokens_per_second": self.tokens / self.seconds,
            "padding": 1.0 - self.tokens / max(self.positions, 1),
            "seconds": self.seconds,
        }


def _attention_mask(batch: Any) -> torch.Tensor | None:
    """The attention mask of a batch (top level, or the student's inputs of a paired KD batch)."""
    if not isinstance(batch, Mapping):
        return None
    mask = batch.get("attention_mask")
    if mask is None and isinstance(batch.get("student_inputs"), Mapping):
        mask = batch["student_inputs"].get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) else None


class TrainingRun:
    """State of one ``train()`` call: the prepared objects, the progress and the checkpoint folder."""

    def __init__(self, trainer: Trainer) -> None:
        from accelerate.utils import set_seed

        self.trainer = trainer
        self.config = trainer.config
        self.root = Path(trainer.output_dir) / ckpt.CHECKPOINTS_DIR
        self.acc = make_accelerator(trainer)
        set_seed(self.config.seed)
        self.fingerprint = run_fingerprint(trainer, self.acc)
        trainer.model.train()
        for module in trainer.frozen_modules:
            module.to(self.acc.device).eval().requires_grad_(False)
        optimizer = build_optimizer(trainer.model, self.config)
        self.model, self.optimizer, self.loader = self.acc.prepare(
            trainer.model, optimizer, trainer.train_loader
        )
        self.batches_per_epoch = self._loader_length()
        self.steps_per_epoch, self.total_steps, warmup = schedule_lengths(self.config, self.batches_per_epoch)
        self.scheduler = build_scheduler(optimizer, warmup_steps=warmup, total_steps=self.total_steps)
        self.progress = Progress()
        self.pending_rng: dict[str, Any] | None = None
        self.last_saved_step: int | None = None
        # Interrupt safety: the RNG states at the start of the current optimizer step, and whether the
        # model, optimizer and progress are at a step boundary (no half-accumulated gradients, no
        # optimizer update under way), i.e. whether a checkpoint written now resumes exactly.
        self.boundary_rng: dict[str, Any] | None = None
        self.at_boundary = True
        self.bar: Any = None
        self.throughput = Throughput()

    def _loader_length(self) -> int:
        try:
            length = len(self.loader)
        except TypeError as exc:
            raise DataError(
                "the training data loader has no length (an IterableDataset?); the trainer needs a "
                "map-style dataset to resume exactly. Materialise the data or wrap it in a list."
            ) from exc
        if length == 0:
            raise DataError("the training data loader yields no batch; check the data split and batch_size.")
        return int(length)

    # ------------------------------------------------------------------ top level

    def execute(self) -> TrainResult:
        try:
            resumed_from = self._resume()
            self._open_bar()
            try:
                while self.progress.step < self.total_steps:
                    self._run_epoch()
            except KeyboardInterrupt:  # Ctrl-C and SIGTERM (errors.Terminated): keep the work done so far
                self._save_on_interrupt()
                raise
            self._finish()
            self._track({f"{self.trainer.stage}/{k}": v for k, v in self.throughput.to_dict().items()})
            self._load_best_if_asked()
            return self._result(resumed_from)
        finally:
            if self.bar is not None:
                self.bar.close()
            # remove accelerate's autocast / fp32-output wrappers from the caller's model
            self.acc.unwrap_model(self.model, keep_fp32_wrapper=False)

    def _open_bar(self) -> None:
        from tqdm.auto import tqdm

        enabled = self.config.progress and self.acc.is_main_process
        self.bar = tqdm(
            total=self.total_steps, initial=self.progress.step, desc=self.trainer.stage, disable=not enabled
        )

    def _result(self, resumed_from: int | None) -> TrainResult:
        p = self.progress
        return TrainResult(
            steps=p.step,
            epochs_completed=p.epoch + p.batches_in_epoch / self.batches_per_epoch,
            final_metrics=dict(p.last_metrics),
            best_metric=p.best_metric,
            best_checkpoint=self.root / p.best_checkpoint if p.best_checkpoint else None,
            losses={k: list(v) for k, v in p.history.items()},
            resumed_from_step=resumed_from,
            final_checkpoint=ckpt.find_latest(self.root),
            throughput=self.throughput.to_dict(),
        )

    # ------------------------------------------------------------------ resume

    def _resume(self) -> int | None:
        if not self.trainer.resume:
            self._move_old_checkpoints_aside()
            return None
        folder = ckpt.find_latest(self.root)
        if folder is None:
            return None
        saved = ckpt.read_checkpoint(folder)
        if not isinstance(saved.state.get("progress"), Mapping):
            raise CheckpointError(
                f"{folder / ckpt.STATE_FILE} has no training progress: it was not written by a Trainer. "
                "Use another output_dir or restart."
            )
        ckpt.check_fingerprint(folder, saved.state.get("fingerprint", {}), self.fingerprint)
        ckpt.load_model(self.acc.unwrap_model(self.model), folder)
        try:
            if saved.optimizer is not None:
                self.optimizer.load_state_dict(saved.optimizer)
            if saved.scheduler is not None:
                self.scheduler.load_state_dict(saved.scheduler)
            if saved.scaler is not None and self.acc.scaler is not None:
                self.acc.scaler.load_state_dict(saved.scaler)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"cannot restore the optimizer state from {folder}: {exc}") from exc
        self.progress = Progress.from_state(saved.state["progress"])
        if self.progress.batches_in_epoch >= self.batches_per_epoch:
            self.progress.epoch += 1
            self.progress.batches_in_epoch = 0
        self.pending_rng = saved.rng
        self.last_saved_step = saved.step
        return saved.step

    def _move_old_checkpoints_aside(self) -> None:
        if not self.root.exists() or not self.acc.is_main_process:
            self.acc.wait_for_everyone()
            return
        number = 1
        while (aside := self.root.with_name(f"{self.root.name}.old-{number}")).exists():
            number += 1
        self.root.rename(aside)
        self.acc.wait_for_everyone()

    def _restore_pending_rng(self) -> None:
        if self.pending_rng is not None:
            ckpt.restore_rng_state(self.pending_rng)
            self.pending_rng = None

    # ------------------------------------------------------------------ the loop

    def _epoch_batches(self) -> Any:
        p = self.progress
        self.loader.set_epoch(p.epoch)
        if p.batches_in_epoch:
            return self.acc.skip_first_batches(self.loader, p.batches_in_epoch)
        self._restore_pending_rng()  # the interrupted run would now create this epoch's iterator
        return self.loader

    def _run_epoch(self) -> None:
        p = self.progress
        if p.batches_in_epoch == 0:  # an epoch-closing checkpoint holds the RNG before the new iterator
            self.boundary_rng = ckpt.capture_rng_state()
        started = time.perf_counter()  # loading the batch counts, evaluation and checkpoints do not
        for batch in self._epoch_batches():
            self._restore_pending_rng()  # mid-epoch resume: just before the first resumed batch is used
            if self.at_boundary and p.batches_in_epoch > 0:
                self.boundary_rng = ckpt.capture_rng_state()
            stepped = self._guarded_micro_step(batch)
            self.at_boundary = stepped
            self.throughput.add(batch, time.perf_counter() - started)
            p.batches_in_epoch += 1
            if stepped:
                self._after_optimizer_step()
                if p.step >= self.total_steps:
                    return
            started = time.perf_counter()
        p.epoch += 1
        p.batches_in_epoch = 0

    def _guarded_micro_step(self, batch: Any) -> bool:
        try:
            return self._micro_step(batch)
        except torch.cuda.OutOfMemoryError as exc:  # the same class as torch.OutOfMemoryError
            raise self._oom_error(exc) from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc) or "can't allocate memory" in str(exc):
                raise self._oom_error(exc) from exc
            raise

    def _micro_step(self, batch: Any) -> bool:
        """Forward, backward and (at an accumulation boundary) clip + optimizer + scheduler step."""
        with self.acc.accumulate(self.model):
            with self.acc.autocast():
                terms = self.trainer.compute_loss(self.model, batch)
            values = self._check_terms(terms)
            self.acc.backward(terms["loss"])
            if self.acc.sync_gradients:
                self.at_boundary = False  # parameters and optimizer state change from here on
                self._clip_gradients()
            self.optimizer.step()
            if self.acc.sync_gradients and not self.acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad()
        self._add_to_window(values)
        return bool(self.acc.sync_gradients)

    def _check_terms(self, terms: Any) -> dict[str, float]:
        if not isinstance(terms, Mapping) or "loss" not in terms:
            raise TrainingError(
                f"compute_loss must return a mapping with the key 'loss' (the total to minimise) plus "
                f"named terms, e.g. {{'loss': total, 'kd': kd}}; got {type(terms).__name__} "
                f"{list(terms) if isinstance(terms, Mapping) else ''} in stage {self.trainer.stage!r}."
            )
        if not isinstance(terms["loss"], torch.Tensor) or not terms["loss"].requires_grad:
            raise TrainingError(
                f"compute_loss returned a 'loss' that is not a tensor with a gradient "
                f"({type(terms['loss']).__name__}) in stage {self.trainer.stage!r}: return the "
                "differentiable total loss (did the model run under torch.no_grad() or are all its "
                "parameters frozen?)."
            )
        values = {name: _scalar(name, value) for name, value in terms.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        flag = torch.tensor(float(bool(bad)), device=self.acc.device)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        if flag.item() > 0:
            found = ", ".join(f"{n}={values[n]}" for n in bad) or "on another process"
            raise self._non_finite_error(f"non-finite loss ({found})")
        return values

    def _clip_gradients(self) -> None:
        if self.config.max_grad_norm is None:
            return
        norm = self.acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        if norm is not None and self.acc.scaler is None and not torch.isfinite(norm).item():
            raise self._non_finite_error(f"non-finite gradient norm ({float(norm)})")

    def _last_good(self) -> str:
        latest = ckpt.find_latest(self.root)
        if latest:
            return f"the last good checkpoint, {latest}, is intact and a new run resumes from it"
        return "no checkpoint was written yet, so a new run starts this stage from its beginning"

    def _where(self) -> str:
        p = self.progress
        return (
            f"stage {self.trainer.stage!r}, optimizer step {p.step + 1}, epoch {p.epoch}, "
            f"batch {p.batches_in_epoch + 1} of {self.batches_per_epoch}"
        )

    def _non_finite_error(self, what: str) -> TrainingError:
        return TrainingError(
            f"training stopped: {what} at {self._where()}. Training cannot continue from NaN/Inf; "
            f"{self._last_good()}. Try a lower learning_rate "
            f"(now {self.config.learning_rate}), max_grad_norm (now {self.config.max_grad_norm}), "
            "bf16 instead of fp16, or check the inputs and the loss weights."
        )

    def _oom_error(self, exc: BaseException) -> TrainingError:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrainingError(
            f"out of memory at {self._where()} ({first_line}). {self._last_good()}. Lower "
            f"batch_size (now {self.config.batch_size}) and raise gradient_accumulation_steps (now "
            f"{self.config.gradient_accumulation_steps}) to keep the effective batch, use "
            "mixed_precision='bf16', or shorten the sequences."
        )

    # ------------------------------------------------------------------ after each optimizer step

    def _add_to_window(self, values: Mapping[str, float]) -> None:
        window = self.progress.window
        for name, value in values.items():
            window[name] = window.get(name, 0.0) + value
        self.progress.window_batches += 1

    def _after_optimizer_step(self) -> None:
        p = self.progress
        p.step += 1
        lr = float(self.scheduler.get_last_lr()[0])
        if p.window_batches:  # running means of this logging window (this process)
            running = {k: f"{v / p.window_batches:.4g}" for k, v in p.window.items()}
            self.bar.set_postfix(running | {"lr": f"{lr:.3g}"}, refresh=False)
        self.bar.update(1)
        if p.step % self.config.log_every == 0:
            self._log_window(lr)
        saved = False
        if self.config.eval_every and p.step % self.config.eval_every == 0:
            saved = self._evaluate_and_maybe_save()
        if not saved and self.config.checkpoint_every and p.step % self.config.checkpoint_every == 0:
            self._save()

    def _log_window(self, lr: float) -> None:
        p = self.progress
        if not p.window_batches:
            return
        names = sorted(p.window)
        means = torch.tensor([p.window[n] / p.window_batches for n in names], dtype=torch.float64)
        if self.acc.num_processes > 1:
            means = self.acc.reduce(means.to(self.acc.device), reduction="mean").cpu()
        logged = dict(zip(names, means.tolist(), strict=True)) | {"lr": lr}
        for name, value in logged.items():
            p.history.setdefault(name, []).append(value)
        p.window, p.window_batches = {}, 0
        self._track({f"{self.trainer.stage}/{k}": v for k, v in logged.items()})

    def _track(self, metrics: Mapping[str, float]) -> None:
        if metrics and self.trainer.tracker is not None and self.acc.is_main_process:
            self.trainer.tracker.log_metrics(dict(metrics), step=self.progress.step)

    # ------------------------------------------------------------------ evaluation and checkpoints

    def _run_evaluate(self) -> dict[str, float]:
        from accelerate.utils import broadcast_object_list

        evaluate = self.trainer.evaluate
        if evaluate is None:  # pragma: no cover - Trainer.__post_init__ and _finish rule this out
            return {}
        model = self.acc.unwrap_model(self.model)
        model.eval()
        try:
            with torch.no_grad():
                raw = evaluate(model)
        finally:
            model.train()
        metrics = _numeric_metrics(raw, self.trainer.stage)
        if self.acc.num_processes > 1:
            box: list[Any] = [metrics]
            broadcast_object_list(box, from_process=0)
            metrics = box[0]
        return metrics

    def _evaluate_and_maybe_save(self) -> bool:
        """Evaluate; when the primary metric improves, save a checkpoint marked best. Return whether saved."""
        p = self.progress
        metrics = self._run_evaluate()
        p.last_metrics, p.last_eval_step = metrics, p.step
        self._track({f"{self.trainer.stage}/eval/{k}": v for k, v in metrics.items()})
        name = self.trainer.primary_metric
        if name is None:
            return False
        if name not in metrics:
            raise TrainingError(
                f"primary_metric {name!r} is not among the metrics evaluate() returned "
                f"({sorted(metrics)}) in stage {self.trainer.stage!r}; pass one of those names."
            )
        value = metrics[name]
        better = p.best_metric is None or (
            value > p.best_metric if self.trainer.greater_is_better else value < p.best_metric
        )
        if not better:
            return False
        p.best_metric, p.best_step = value, p.step
        p.best_checkpoint = ckpt.checkpoint_name(p.step)
        self._save(best=True)
        return True

    def _save(self, *, best: bool = False) -> None:
        """Write a checkpoint of the current step (rank 0 only); every process waits for it."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            folder = ckpt.write_checkpoint(
                self.root,
                self.progress.step,
                model=self.acc.unwrap_model(self.model),
                state=self._state(),
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
                rng=ckpt.capture_rng_state(),
            )
            if best:
                ckpt.write_pointer(self.root, ckpt.BEST_POINTER, folder.name)
            protect = {self.root / self.progress.best_checkpoint} if self.progress.best_checkpoint else set()
            ckpt.prune(self.root, self.config.keep_checkpoints, protect)
        self.last_saved_step = self.progress.step
        self.acc.wait_for_everyone()

    def _save_on_interrupt(self) -> None:
        """Checkpoint the last completed optimizer step when an interrupt arrives between steps.

        Only where the checkpoint resumes exactly: at a step boundary (an interrupt inside an optimizer
        update or a half-accumulated step writes nothing; the previous checkpoint stays the newest), with
        the RNG states as they were when that boundary was reached, in a single process (other
        processes may not reach the same point).
        """
        p = self.progress
        if not self.at_boundary or self.acc.num_processes != 1 or p.step == (self.last_saved_step or 0):
            return
        self.optimizer.zero_grad()
        ckpt.write_checkpoint(
            self.root,
            p.step,
            model=self.acc.unwrap_model(self.model),
            state=self._state(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            rng=self.boundary_rng or ckpt.capture_rng_state(),
        )
        self.last_saved_step = p.step

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.progress.step,
            "progress": self.progress.to_state(),
            "fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "stage": self.trainer.stage,
            "saved_at": time.time(),
        }

    def _load_best_if_asked(self) -> None:
        best = self.progress.best_checkpoint
        if self.config.load_best_at_end and best is not None:
            self.acc.wait_for_everyone()
            ckpt.load_model(self.acc.unwrap_model(self.model), self.root / best)

    def _finish(self) -> None:
        """Final evaluation and checkpoint, unless the last step already had them."""
        p = self.progress
        if p.window_batches:
            self._log_window(float(self.scheduler.get_last_lr()[0]))
        saved = self.last_saved_step == p.step
        if self.trainer.evaluate is not None and p.last_eval_step != p.step:
            saved = self._evaluate_and_maybe_save() or saved
        if not saved:
            self._save()


def _numeric_metrics(raw: Any, stage: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise TrainingError(
            f"evaluate() must return a mapping of metric names to numbers in stage {stage!r}, "
            f"got {type(raw).__name__}."
        )
    try:
        return {str(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"evaluate() returned a metric that is not a number in stage {stage!r}: {dict(raw)!r}."
        ) from exc


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TrainingError(
                f"compute_loss returned {name!r} with shape {tuple(value.shape)}; every term must be a "
                "scalar (reduce it with .mean() or .sum())."
            )
        return float(value.detach().float().item())
    if isinstance(value, int | float):
        return float(value)
    raise TrainingError(f"compute_loss returned {name!r} of type {type(value).__name__}; expected a tensor.")
