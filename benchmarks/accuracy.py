"""Accuracy at scale: teachers and compressed students on full GLUE training sets, one command.

Every result is a ``compresskit`` command (``finetune`` for teachers, ``run`` for students), run one after
the other; a finished job is skipped when the command is started again and an interrupted one resumes
from its checkpoints, so the whole grid can be stopped and restarted at any time. After every job the
tables are rewritten from what is finished: ``benchmarks/results/<name>.{json,md}``.

Items (``--items``, in this order):

``teachers``  MiniLM-L6 fine-tuned on each task (full training set, full dev set, official metrics).
``general``   one general-KD (stage-1) student per preset on Wikipedia text (configs/general-kd-minilm.toml).
``students``  task KD (stage 2) of each general student on each task (configs/task-kd-minilm.toml).
``ablation``  on SST-2 and MRPC, KB8: no stage 1 (SVD-initialised student, task KD only), no
              intermediate losses (general student, logit KD + labels only), labels only (SVD-initialised
              student fine-tuned on the labels, no KD).
``pareto``    low-rank and tensor-train students at the parameter counts of KB8 and KB21 on SST-2, same
              protocol as the Kronecker ones (general KD, then task KD).
``seeds``     seeds 1 and 2 of teachers and KB8 / KB21 students on MRPC, RTE and CoLA (seed 42 is the
              main run): mean ± std over 3 seeds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/accuracy.py --items teachers,general,students \\
        --name glue_minilm_cpu

``--scale smoke`` runs every job on a few batches (checks the plumbing; numbers mean nothing);
``--device cuda`` runs on a GPU. ``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GENERAL = ROOT / "configs" / "general-kd-minilm.toml"
TASK_KD = ROOT / "configs" / "task-kd-minilm.toml"
ITEMS = ("teachers", "general", "students", "ablation", "pareto", "seeds")


@dataclass(frozen=True)
class TaskPlan:
    """Per task: teacher epochs and learning rate, task-KD epochs, the primary metric (×100)."""

    teacher_epochs: float
    teacher_lr: float
    kd_epochs: float
    metric: str


TASKS: dict[str, TaskPlan] = {
    "sst2": TaskPlan(3.0, 5e-5, 2.0, "accuracy"),
    "mrpc": TaskPlan(5.0, 1e-4, 5.0, "f1"),
    "stsb": TaskPlan(5.0, 1e-4, 5.0, "spearman"),
    "rte": TaskPlan(5.0, 1e-4, 5.0, "accuracy"),
    "cola": TaskPlan(5.0, 1e-4, 5.0, "matthews_correlation"),
}
PRESETS = ("kroneckerbert8", "kroneckerbert21")
SEEDS = (1, 2)
SEED_TASKS = ("mrpc", "rte", "cola")
ABLATION_TASKS = ("sst2", "mrpc")
#: Students whose attention / FFN matrices keep the fraction of weights a Kronecker preset keeps (KB8:
#: 1/4 of each attention matrix, 1/16 of each FFN matrix; KB21: 1/32 of each), with the preset's Kronecker
#: word embedding, so only the decomposition of the encoder matrices differs.
PARETO: dict[str, tuple[str, float, float, int]] = {
    "lowrank@kb8": ("low_rank", 1 / 4, 1 / 16, 8),
    "lowrank@kb21": ("low_rank", 1 / 32, 1 / 32, 16),
    "tt@kb8": ("tensor_train", 1 / 4, 1 / 16, 8),
    "tt@kb21": ("tensor_train", 1 / 32, 1 / 32, 16),
}
#: Module-name patterns of BERT-family encoders (the groups of the Kronecker presets).
ATTENTION = r"(.*\.)?layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"
FFN = r"(.*\.)?layer\.\d+\.(intermediate|output)\.dense"
WORD_EMBEDDING = r"(.*\.)?embeddings\.word_embeddings"
INTERMEDIATE = {"embedding_mse": 1.0, "attention_score_mse": 0.02, "hidden_mse": 1.0}


@dataclass
class Job:
    """One command; ``done`` is the file it leaves when finished."""

    name: str
    argv: list[str]
    done: Path
    meta: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated, from {ITEMS}")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--name", default="glue_minilm_cpu", help="results file stem")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "accuracy"))
    parser.add_argument("--scale", choices=["full", "smoke"], default="full")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--tables-only", action="store_true", help="rewrite the tables from finished jobs")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- the jobs


class Grid:
    """Builds the jobs of the chosen items, in dependency order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs = Path(args.runs_dir)
        self.tasks = [t for t in args.tasks.split(",") if t]
        self.presets = [p for p in args.presets.split(",") if p]
        self.smoke = args.scale == "smoke"
        self.exe = str(Path(sys.executable).with_name("compresskit"))

    def teacher_dir(self, task: str, seed: int = 42) -> Path:
        return self.runs / "teachers" / f"{task}-s{seed}"

    def general_dir(self, label: str) -> Path:
        return self.runs / "general" / label

    def teacher(self, task: str, seed: int = 42) -> Job:
        plan, out = TASKS[task], self.teacher_dir(task, seed)
        argv = [self.exe, "finetune", "--model", "default", "--task", "glue", "--task-option", f"task={task}"]
        argv += ["--output", str(out), "--lr", str(plan.teacher_lr), "--batch-size", "32"]
        argv += ["--max-length", "128", "--seed", str(seed), "--no-progress", "--json"]
        argv += (
            ["--max-steps", "3", "--eval-limit", "64"]
            if self.smoke
            else ["--epochs", str(plan.teacher_epochs)]
        )
        meta = {"kind": "teacher", "task": task, "seed": seed}
        return Job(f"teacher-{task}-s{seed}", argv, out / "finetune_metrics.json", meta)

    def run_job(self, name: str, config: Path, sets: list[str], out: Path, meta: dict[str, Any]) -> Job:
        argv = [self.exe, "run", str(config), "--output", str(out), "--no-progress"]
        argv += ["--device", self.args.device]
        for item in sets + self.smoke_sets(config):
            argv += ["--set", item]
        return Job(name, argv, out / "summary.json", meta)

    def smoke_sets(self, config: Path) -> list[str]:
        if not self.smoke:
            return []
        step = "steps[1]" if config == GENERAL else "steps[0]"
        stage = f"{step}.options.training" if config == GENERAL else f"{step}.options.stage2.training"
        return [f"{stage}.max_steps=2", "evaluation.limit=64", "measure.repeats=1"]

    def general(self, label: str, decompose: dict[str, Any]) -> Job:
        """General KD of ``label``. It reads no task data and only the pre-trained teacher, so the
        pre-trained model stands in for the fine-tuned one (no fine-tuning is run); the saved student's
        head is untrained and task KD replaces it."""
        sets = ['model.finetuned_teacher="default"', f'task.options.task="{self.tasks[0]}"']
        sets.append(f'name="general-{label}"')
        sets += [f"steps[0]={_inline(decompose)}"]
        return self.run_job(f"general-{label}", GENERAL, sets, self.general_dir(label), {"kind": "general"})

    def task_kd(self, label: str, task: str, seed: int = 42, **extra: Any) -> Job:
        """Stage 2 of general student ``label`` on ``task`` (``losses`` / ``student`` overridable)."""
        plan = TASKS[task]
        logit = "logit_mse" if task == "stsb" else "logit_soft_ce"
        losses = extra.get("losses", {**INTERMEDIATE, logit: 1.0, "task": 1.0})
        student = extra.get("student", self.general_dir(label) / "model")
        variant = extra.get("variant", "two-stage")
        sets = list(extra.get("sets", []))  # first: they may replace the steps
        distill = f"steps[{extra.get('distill_index', 0)}]"
        sets += [
            f'name="{variant}-{label}-{task}-s{seed}"',
            f'model.finetuned_teacher="{self.teacher_dir(task, seed)}"',
            f'task.options.task="{task}"',
            f"seed={seed}",
            f"{distill}.options.stage2.losses={_inline(losses)}",
            f"{distill}.options.stage2.training.num_epochs={plan.kd_epochs}",
        ]
        if student is not None:
            sets.append(f'model.student="{student}"')
        out = self.runs / variant / f"{label}-{task}-s{seed}"
        meta = {"kind": "student", "variant": variant, "label": label, "task": task, "seed": seed}
        return self.run_job(f"{variant}-{label}-{task}-s{seed}", TASK_KD, sets, out, meta)

    def jobs(self, items: list[str]) -> Iterator[Job]:
        if "teachers" in items:
            yield from (self.teacher(task) for task in self.tasks)
        if "general" in items:
            yield from (self.general(p, {"kind": "decompose", "preset": p}) for p in self.presets)
        if "students" in items:
            yield from (self.task_kd(p, task) for p in self.presets for task in self.tasks)
        if "ablation" in items:
            yield from self.ablation()
        if "pareto" in items:
            yield from self.pareto()
        if "seeds" in items:
            yield from self.seeds()

    def ablation(self) -> Iterator[Job]:
        preset = "kroneckerbert8"
        decompose = f'steps=[{{kind = "decompose", preset = "{preset}"}}, {_inline(_stage2_step())}]'
        for task in ABLATION_TASKS:
            logit = "logit_mse" if task == "stsb" else "logit_soft_ce"
            svd = {
                "student": None,
                "distill_index": 1,
                "sets": [decompose, 'model.student_init="pretrained"'],
            }
            yield self.task_kd(preset, task, variant="no-stage1", **svd)
            yield self.task_kd(preset, task, variant="no-intermediate", losses={logit: 1.0, "task": 1.0})
            yield self.task_kd(preset, task, variant="labels-only", losses={"task": 1.0}, **svd)

    def pareto(self) -> Iterator[Job]:
        for label, (decomposition, attention, ffn, embedding_n) in PARETO.items():
            groups = [
                {"name": "attention", "types": ["Linear"], "names": ATTENTION,
                 "decomposition": decomposition, "options": {"param_ratio": attention}},
                {"name": "ffn", "types": ["Linear"], "names": FFN,
                 "decomposition": decomposition, "options": {"param_ratio": ffn}},
                {"name": "word_embedding", "types": ["Embedding"], "names": WORD_EMBEDDING,
                 "decomposition": "kronecker", "options": {"embedding_n": embedding_n}},
            ]  # fmt: skip
            yield self.general(label, {"kind": "decompose", "groups": groups})
            yield self.task_kd(label, "sst2")

    def seeds(self) -> Iterator[Job]:
        for seed in SEEDS:
            for task in SEED_TASKS:
                if task in self.tasks:
                    yield self.teacher(task, seed)
                    yield from (self.task_kd(p, task, seed) for p in self.presets)


def _stage2_step() -> dict[str, Any]:
    """The task-KD step of configs/task-kd-minilm.toml, as a table."""
    import compresskit

    step: dict[str, Any] = compresskit.Strategy.from_file(TASK_KD).to_dict()["steps"][0]
    return {key: value for key, value in step.items() if value not in (None, {}, ())}


def _inline(value: Any) -> str:
    """A TOML inline value for ``--set``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else json.dumps(key)


# --------------------------------------------------------------------------- running


def run(job: Job, dry_run: bool) -> bool:
    """Run ``job`` unless finished; return whether it is finished now."""
    if job.done.is_file():
        return True
    print(f"[accuracy] {job.name}: {' '.join(job.argv)}", flush=True)
    if dry_run:
        return False
    log = job.done.parent.with_name(job.done.parent.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("a") as out:
        code = subprocess.call(job.argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    minutes = (time.time() - started) / 60
    print(f"[accuracy] {job.name}: exit {code} after {minutes:.1f} min (log {log})", flush=True)
    return code == 0 and job.done.is_file()


# --------------------------------------------------------------------------- results


def collect(grid: Grid, jobs: list[Job]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        if not job.done.is_file():
            continue
        data = json.loads(job.done.read_text())
        row = dict(job.meta, name=job.name, command=" ".join(job.argv[1:]))
        if job.meta["kind"] == "teacher":
            row["metrics"] = data["metrics"]
        else:
            row |= {key: data.get(key) for key in ("teacher", "student")}
        rows.append(row)
    return rows


def primary(task: str, metrics: dict[str, float]) -> float | None:
    value = metrics.get(TASKS[task].metric)
    return None if value is None else 100.0 * float(value)


def markdown(name: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    teachers = {(r["task"], r["seed"]): r for r in rows if r["kind"] == "teacher"}
    students = [r for r in rows if r["kind"] == "student"]
    lines = [f"# {name}: MiniLM-L6 teachers and compressed students, full GLUE training sets", ""]
    lines += [
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Updated: {meta['date']}",
        "",
    ]
    lines += ["Metrics ×100 on the full dev sets (official: accuracy; F1 for MRPC; Spearman for STS-B; "
              "Matthews for CoLA). Retention = student / teacher on the same dev set.", ""]  # fmt: skip
    lines += ["## Teachers (seed 42)", "", "| task | metric | dev | all metrics |", "|---|---|---:|---|"]
    for (task, seed), row in sorted(teachers.items()):
        if seed == 42:
            value = primary(task, row["metrics"])
            rest = ", ".join(f"{k} {100 * v:.2f}" for k, v in row["metrics"].items())
            lines.append(f"| {task} | {TASKS[task].metric} | {value:.2f} | {rest} |")
    lines += ["", "## Students (seed 42)", ""]
    lines += ["| variant | student | task | params | CF | teacher | student | retention % |"]
    lines += ["|---|---|---|---:|---:|---:|---:|---:|"]
    for row in sorted(students, key=lambda r: (r["variant"], r["label"], r["task"])):
        if row["seed"] != 42:
            continue
        t, s = (
            primary(row["task"], row["teacher"]["metrics"]),
            primary(row["task"], row["student"]["metrics"]),
        )
        params = row["student"].get("params", 0) / 1e6
        factor = row["student"].get("compression_factor", 0)
        retention = 100 * s / t if t else float("nan")
        lines.append(
            f"| {row['variant']} | {row['label']} | {row['task']} | {params:.2f}M | {factor:.1f}x | "
            f"{t:.2f} | {s:.2f} | {retention:.1f} |"
        )
    lines += seed_table(rows)
    return "\n".join(lines) + "\n"


def seed_table(rows: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row.get("task") not in SEED_TASKS:
            continue
        if row["kind"] == "teacher":
            groups.setdefault(("teacher", row["task"]), []).append(primary(row["task"], row["metrics"]) or 0)
        elif row["variant"] == "two-stage":
            value = primary(row["task"], row["student"]["metrics"]) or 0
            groups.setdefault((row["label"], row["task"]), []).append(value)
    lines = ["", "## Seeds (mean ± std over the seeds finished)", "", "| model | task | n | mean | std |"]
    lines.append("|---|---|---:|---:|---:|")
    for (model, task), values in sorted(groups.items()):
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {model} | {task} | {len(values)} | {statistics.mean(values):.2f} | {std:.2f} |")
    return lines


def write_tables(grid: Grid, jobs: list[Job], command: str) -> None:
    rows = collect(grid, jobs)
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, device {grid.args.device}, load {os.getloadavg()}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{grid.args.name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{grid.args.name}.md").write_text(markdown(grid.args.name, rows, meta))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    items = [i for i in args.items.split(",") if i]
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        raise SystemExit(f"unknown items {unknown}; choose from {', '.join(ITEMS)}")
    grid = Grid(args)
    jobs = list(grid.jobs(items))
    command = " ".join(["python benchmarks/accuracy.py", *(argv if argv is not None else sys.argv[1:])])
    failed = []
    for job in jobs:
        if args.tables_only:
            break
        if not run(job, args.dry_run) and not args.dry_run:
            failed.append(job.name)
        if not args.dry_run:
            write_tables(grid, jobs, command)
    if args.tables_only:
        write_tables(grid, jobs, command)
    if failed:
        print(f"[accuracy] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
