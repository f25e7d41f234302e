"""The main job, end to end: ``compresskit run CONFIG`` and ``compresskit.compress(model, strategy)``.

Stages, in order (each one's key in ``state.json``)::

    teacher              fine-tune the pre-trained teacher on the task (skipped when already fine-tuned)
    steps[i]:decompose   walker + decomposition plugin on the current student
    steps[i]:distill     a distiller trains the student against the teachers (e.g. two-stage KD)
    evaluate             the task's official metrics of teacher and student on the dev split
    save                 the final student (compresskit.save format) in ``<run>/model``
    measure              parameters, FLOPs, size on disk, CPU latency of teacher and student
    summary              ``summary.json``, the summary table, the tracker's final metrics

Before the first stage, :func:`compresskit.preflight.preflight` checks everything that can be known in
advance (config, component options, model path, task files, a dry-run plan of every decompose step),
so bad input fails before any training. After each stage ``state.json`` records it; an interrupted
run resumes at the next stage, and inside a training stage from the Trainer's last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compresskit import stages
from compresskit.distributed import check_supported_launch, is_main_process, wait_for_everyone
from compresskit.errors import CompressKitError, ConfigError, TrainingError
from compresskit.models import resolve_model_path
from compresskit.registry import Registry
from compresskit.run_lock import LOCK_FILES, RunLock
from compresskit.run_recovery import (
    is_storage_failure,
    non_finite_way_out,
    set_aside_stale_work,
    storage_failure,
)
from compresskit.run_state import RunState, write_json_atomic, write_text_atomic
from compresskit.seeding import seeded
from compresskit.signals import terminate_as_interrupt
from compresskit.strategy import DecomposeStep, DistillStep, Strategy
from compresskit.summary import format_summary, summarize, write_run_card
from compresskit.tracking import NullTracker, Tracker

#: Parts of the strategy every stage depends on (fingerprinted with the steps up to the stage).
BASE_PARTS = ("model", "task", "finetune", "seed")
#: ``state.json`` keys: the tracked run's last status, and the fingerprint each stage last started with.
RUN_STATUS = "run_status"
STARTED = "started"


@dataclass(frozen=True)
class CompressResult:
    """What a run produced: the run directory, the final student's folder, the summary numbers, the
    tracked run's id and — from :func:`compresskit.compress` — the final student itself."""

    run_dir: Path
    model_dir: Path
    summary: dict[str, Any]
    run_id: str | None
    student: torch.nn.Module | None = None

    @property
    def table(self) -> str:
        """The printable summary table (teacher vs student)."""
        return format_summary(self.summary)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "model_dir": str(self.model_dir),
            "run_id": self.run_id,
            "summary": self.summary,
        }


class Pipeline:
    """Runs a :class:`Strategy` in a run directory, resuming whatever is already complete there."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        output_dir: str | Path | None = None,
        registry: Registry | None = None,
        tracker: Tracker | None = None,
        restart: bool = False,
        device: str | None = None,
        progress: bool = True,
        on_stage_end: Callable[[str], None] | None = None,
        echo: Callable[[str], None] | None = None,
        keep: tuple[str, ...] = (),
        return_student: bool = False,
    ) -> None:
        """``keep``: names in the run folder that ``restart`` leaves in place (e.g. the input model
        ``compress()`` saved there); ``return_student``: set :attr:`CompressResult.student` (the final
        student in memory, read from ``<run>/model`` only when this call trained nothing)."""
        self.strategy = strategy
        self.registry = registry or Registry.from_plugins()
        self.run_dir = Path(output_dir or strategy.output_dir or Path("runs") / strategy.name)
        self.restart = restart
        self.device = device or strategy.device
        self.progress = progress
        self.on_stage_end = on_stage_end
        self.main = is_main_process()
        self.echo = (echo or _print_flushed) if self.main else _silent  # messages printed once
        self._tracker = tracker
        self._skips_finetuning = False  # set from the preflight: no step needs a fine-tuned teacher
        self.keep = keep
        self.return_student = return_student
        self._student: tuple[str, torch.nn.Module] | None = None  # (saved folder, the model in memory)

    def run(self) -> CompressResult:
        """Run every stage not already complete; return the :class:`CompressResult`.

        Holds the run folder's lock (:class:`~compresskit.run_lock.RunLock`) throughout, and handles
        SIGTERM like Ctrl-C: the tracked run is marked ``KILLED`` and the interruption propagates.
        """
        from compresskit.preflight import preflight

        check_supported_launch()
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device = 'cuda' (or --device cuda), but torch sees no CUDA device here "
                f"(torch {torch.__version__}); use --device cpu, or run on a machine with a GPU."
            )
        checked = preflight(self.strategy, self.registry)
        lock = RunLock(self.run_dir) if self.main else contextlib.nullcontext()
        with terminate_as_interrupt(), lock:
            if self.restart and self.main:
                _empty_run_dir(self.run_dir, keep=self.keep)
            if self.main:
                self._write_resolved_config()
            wait_for_everyone()  # the other processes read the folder as the main process left it
            state = RunState(self.run_dir, write=self.main)
            return self._run_locked(checked, state)

    def _run_locked(self, checked: Any, state: RunState) -> CompressResult:
        self._skips_finetuning = not checked.teacher_is_finetuned and not checked.finetunes_teacher
        complete = self._all_complete(state)  # a folder of another strategy is refused before tracking
        finished = complete and state.data.get(RUN_STATUS) == "FINISHED"
        quiet = finished or not self.main  # one tracked run, opened by the main process
        tracker: Tracker = NullTracker() if quiet else (self._tracker or self._make_tracker())
        ctx = stages.RunContext(
            strategy=self.strategy,
            registry=self.registry,
            run_dir=self.run_dir,
            task=checked.task,
            tokenizer=checked.tokenizer,
            tracker=tracker,
            pretrained_path=checked.pretrained_path,
            device=self.device,
            progress=self.progress and self.main,
            steps=checked.steps,
            is_main=self.main,
        )
        if finished:
            self.echo(f"[compresskit] every stage is already complete in {self.run_dir}; nothing to track")
        elif self.main:
            self._start_tracking(tracker, state)
        try:
            summary = self._run_stages(ctx, state, checked, log_final=not quiet)
        except KeyboardInterrupt:
            self._end(tracker, state, "KILLED", quiet)
            raise
        except BaseException:
            self._end(tracker, state, "FAILED", quiet)
            raise
        self._end(tracker, state, "FINISHED", quiet)
        model_dir = self.run_dir / stages.MODEL_DIR
        student = self._final_student(model_dir) if self.return_student else None
        return CompressResult(self.run_dir, model_dir, summary, state.data.get("run_id"), student)

    def _final_student(self, model_dir: Path) -> torch.nn.Module:
        """The student this call trained (still in memory), else the one saved in ``model_dir``."""
        if self._student is not None:
            return self._student[1]
        return stages.load_student(model_dir)

    def _end(self, tracker: Tracker, state: RunState, status: str, finished_before: bool) -> None:
        """Close the tracked run with ``status`` and record it (a finished folder re-run changes nothing)."""
        if finished_before:
            return
        try:
            tracker.end_run(status)
        finally:
            state.set(RUN_STATUS, status)

    # ------------------------------------------------------------------ stages

    def _run_stages(
        self, ctx: stages.RunContext, state: RunState, checked: Any, *, log_final: bool = True
    ) -> dict:
        parts = self._stage_parts()
        teacher = self._stage(
            state, "teacher", parts["teacher"], lambda: self._teacher(ctx, checked.finetunes_teacher)
        )
        teacher_dir = teacher["path"]
        current: str | None = None
        for index, step in enumerate(self.strategy.steps):
            key = f"steps[{index}]:{step.kind}"
            out = self.run_dir / "steps" / f"{index:02d}-{step.kind}"
            runner = self._step_runner(ctx, index, step, current, teacher_dir, out)
            current = self._stage(state, key, parts[key], runner)["path"]
        if not self.main:  # evaluation, the final save, measurements, the summary: the main process's
            wait_for_everyone()
            return dict(json.loads((self.run_dir / "summary.json").read_text()))
        evaluate = lambda: self._evaluate(ctx, teacher_dir, current)  # noqa: E731
        evaluation = self._stage(state, "evaluate", parts["evaluate"], evaluate, alone=True)
        saved = self._stage(
            state, "save", parts["save"], lambda: self._save(ctx, teacher_dir, current), alone=True
        )
        measured = self._stage(
            state, "measure", parts["measure"], lambda: self._measure(ctx, saved), alone=True
        )
        summary = summarize(self.strategy, state, teacher, evaluation, measured, saved, ctx.task)
        write_json_atomic(self.run_dir / "summary.json", summary)
        write_run_card(Path(summary["model_dir"]), summary, self.strategy)
        if log_final:
            self._log_final(ctx, summary)
        wait_for_everyone()  # the other processes read the summary
        return summary

    def _stage_parts(self) -> dict[str, dict[str, Any]]:
        """Stage key → the parts of the strategy it depends on (hashed into its fingerprint), in order."""
        parts: dict[str, dict[str, Any]] = {"teacher": self._parts(0)}
        for index, step in enumerate(self.strategy.steps):
            parts[f"steps[{index}]:{step.kind}"] = self._parts(index + 1)
        final = self._parts(len(self.strategy.steps))
        parts["evaluate"] = {**final, "evaluation": self._part("evaluation")}
        parts["save"] = final
        parts["measure"] = {**final, "measure": self._part("measure")}
        return parts

    def _all_complete(self, state: RunState) -> bool:
        return all(state.result(key, _hash(p)) is not None for key, p in self._stage_parts().items())

    def _stage(
        self,
        state: RunState,
        key: str,
        parts: Mapping[str, Any],
        run: Callable[[], dict],
        *,
        alone: bool = False,
    ) -> dict:
        """Run stage ``key`` unless complete with the same settings; record its result.

        Every process runs a stage (and they wait for one another around it) unless ``alone``: then only
        the main process runs it and nobody waits."""
        together = wait_for_everyone if not alone else _silent_wait
        fingerprint = _hash(parts)
        done = state.result(key, fingerprint)
        if done is not None:
            self.echo(f"[compresskit] {key}: already complete in {self.run_dir}, skipped")
            return done
        if self.main:
            self._prepare_stage(state, key, fingerprint)
        together()  # stale work is set aside before any process starts the stage
        self.echo(f"[compresskit] {key}: running")
        start = time.perf_counter()
        try:
            with seeded(self.strategy.seed):  # what a stage builds (a new head, projections): seed only
                result = run()
        except TrainingError as exc:
            if "non-finite" not in str(exc):
                raise
            way_out = non_finite_way_out(self.strategy, key, str(exc), self.run_dir, self.registry)
            raise TrainingError(f"{exc}{way_out}") from None
        except Exception as exc:
            if isinstance(exc, CompressKitError) or not is_storage_failure(exc):
                raise
            intact = "the stages completed before are intact and a rerun resumes after them"
            raise storage_failure(exc, f"the output of stage {key} in {self.run_dir}", intact) from exc
        seconds = time.perf_counter() - start
        together()  # what the main process saved is complete before anyone reads it
        state.complete(key, fingerprint, result, seconds)
        if self.main:  # the stage is recorded: resuming no longer needs its checkpoints
            stages.drop_checkpoints(result.get("work"))
        self.echo(f"[compresskit] {key}: done in {seconds:.1f} s")
        if self.on_stage_end is not None:
            self.on_stage_end(key)
        return result

    def _prepare_stage(self, state: RunState, key: str, fingerprint: str) -> None:
        """Record that ``key`` starts with ``fingerprint``; partial work of other settings is set aside."""
        started = dict(state.data.get(STARTED, {}))
        if started.get(key) not in (None, fingerprint):
            moved = set_aside_stale_work(self.run_dir, key)
            if moved is not None:
                self.echo(
                    f"[compresskit] {key}: its settings changed since it stopped; its partial work was "
                    f"moved to {moved} and the stage starts over"
                )
        started[key] = fingerprint
        state.set(STARTED, started)

    def _teacher(self, ctx: stages.RunContext, finetunes: bool) -> dict[str, Any]:
        given = self.strategy.model.finetuned_teacher
        if given is not None:  # "default" and "~" resolved as the preflight resolved them
            return {"path": resolve_model_path(given, "model.finetuned_teacher"), "finetuned_here": False}
        if not finetunes:  # already fine-tuned, or no stage and no student uses a fine-tuned teacher
            if self._skips_finetuning:
                self.echo("[compresskit] teacher: no step learns from a fine-tuned teacher; not fine-tuned")
            return {"path": ctx.pretrained_path, "finetuned_here": False}
        return stages.finetune_teacher(ctx, self.run_dir / "teacher")

    def _step_runner(
        self,
        ctx: stages.RunContext,
        index: int,
        step: DecomposeStep | DistillStep,
        current: str | None,
        teacher_dir: str,
        out: Path,
    ) -> Callable[[], dict]:
        def run() -> dict[str, Any]:
            student = stages.load_student(current) if current else stages.initial_student(ctx, teacher_dir)
            if isinstance(step, DecomposeStep):
                result = stages.decompose_step(ctx, index, step, student, out)
            else:
                result = stages.distill_step(ctx, index, step, student, teacher_dir, out)
            self._student = (result["path"], student)
            return result

        return run

    def _evaluate(self, ctx: stages.RunContext, teacher_dir: str, current: str | None) -> dict[str, Any]:
        teacher = stages.load_task_model(teacher_dir, ctx.task)
        student = stages.load_student(current) if current else teacher
        return {
            "teacher": stages.evaluate_model(ctx, teacher),
            "student": stages.evaluate_model(ctx, student),
        }

    def _save(self, ctx: stages.RunContext, teacher_dir: str, current: str | None) -> dict[str, Any]:
        model_dir = self.run_dir / stages.MODEL_DIR
        if current is None:
            raise ConfigError("the strategy has no steps: add a [[steps]] decompose and/or distill step.")
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.copytree(current, model_dir)
        ctx.tokenizer.save_pretrained(model_dir)
        teacher_copy = Path(teacher_dir)
        if not (teacher_copy / "model.safetensors").is_file():  # a Hub id or another layout: save a copy
            teacher_copy = self.run_dir / "teacher" / stages.MODEL_DIR
            stages.load_task_model(teacher_dir, ctx.task).save_pretrained(teacher_copy)
            ctx.tokenizer.save_pretrained(teacher_copy)
        return {"path": str(model_dir), "teacher_path": str(teacher_copy)}

    def _measure(self, ctx: stages.RunContext, saved: Mapping[str, Any]) -> dict[str, Any]:
        teacher = stages.load_task_model(saved["teacher_path"], ctx.task)
        student = stages.load_student(saved["path"])
        teacher_numbers = stages.measure(ctx, teacher, Path(saved["teacher_path"]))
        student_numbers = stages.measure(
            ctx, student, Path(saved["path"]), reference_params=teacher_numbers["params"]
        )
        return {"teacher": teacher_numbers, "student": student_numbers}

    # ------------------------------------------------------------------ tracking and helpers

    def _make_tracker(self) -> Tracker:
        from compresskit.config import tracker_options

        spec = self.strategy.tracking
        if spec.tracker == "none":
            return NullTracker()
        options = tracker_options(self.strategy, self.registry)
        return self.registry.create("tracker", spec.tracker, options, where="tracking.options")

    def _start_tracking(self, tracker: Tracker, state: RunState) -> None:
        """Open the run folder's tracked run: the one an earlier invocation opened, else a new one."""
        tags = {
            "strategy": self.strategy.name,
            "task": _task_tag(self.strategy),
            "teacher": self.strategy.model.teacher,
            "run_dir": str(self.run_dir.resolve()),
        }
        previous = state.data.get("run_id")
        experiment = self.strategy.tracking.experiment
        if previous:
            run_id = tracker.resume_run(str(previous), self.strategy.name, experiment=experiment, tags=tags)
        else:
            run_id = tracker.start_run(self.strategy.name, experiment=experiment, tags=tags)
        if run_id is not None:
            state.set("run_id", run_id)
        state.set(RUN_STATUS, "RUNNING")
        tracker.set_description(run_description(self.strategy))
        stages.log_params(tracker, self.strategy)
        tracker.log_artifact(self.run_dir / "strategy.toml")

    def _log_final(self, ctx: stages.RunContext, summary: Mapping[str, Any]) -> None:
        tracker = ctx.tracker
        tracker.log_metrics(summary.get("metrics", {}))
        tracker.log_artifact(self.run_dir / "summary.json")
        tracker.log_summary(summary, format_summary(summary))
        tracker.log_model(summary["model_dir"], input_example=input_example(ctx))

    def _write_resolved_config(self) -> None:
        from compresskit.config import dumps_toml

        write_text_atomic(self.run_dir / "strategy.toml", dumps_toml(self.strategy.to_dict()))

    def _part(self, name: str) -> Any:
        return self.strategy.to_dict().get(name)

    def _parts(self, steps: int) -> dict[str, Any]:
        data = self.strategy.to_dict()
        parts = {**{key: data.get(key) for key in BASE_PARTS}, "steps": data.get("steps", [])[:steps]}
        if self._skips_finetuning:  # only then, so the fingerprints of runs that fine-tune are unchanged
            parts["teacher_finetuned"] = False
        return parts


def _empty_run_dir(run_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """``--restart``: delete everything in the run folder but its lock (held by this process) and
    ``keep``."""
    for entry in run_dir.iterdir():
        if entry.name in LOCK_FILES or entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run_description(strategy: Strategy) -> str:
    """The run's description (Markdown): the strategy's own description and the resolved config."""
    from compresskit.config import dumps_toml

    head = f"**{strategy.name}**" + (f": {strategy.description}" if strategy.description else "")
    return f"{head}\n\n```toml\n{dumps_toml(strategy.to_dict())}```\n"


def input_example(ctx: stages.RunContext, rows: int = 2) -> list[dict[str, str]] | None:
    """The first evaluation examples as model inputs (``text``, ``text_pair``), for the logged model."""
    columns = tuple(getattr(ctx.task, "text_columns", ()))
    if not columns:
        return None
    examples = ctx.task.load_split(ctx.strategy.evaluation.split)
    names = ("text", "text_pair")
    return [
        {name: str(examples[i][column]) for name, column in zip(names, columns, strict=False)}
        for i in range(min(rows, len(examples)))
    ]


def _silent(message: str) -> None:
    """The echo of processes other than the main one."""


def _silent_wait() -> None:
    """No waiting: a stage only the main process runs."""


def _print_flushed(message: str) -> None:
    print(message, flush=True)


def _hash(parts: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _task_tag(strategy: Strategy) -> str:
    inner = strategy.task.options.get("task")
    return f"{strategy.task.name}/{inner}" if inner else strategy.task.name
