"""The public surface for plugin authors and tools: everything a plugin may import besides ``compresskit``.

The base classes, errors and hook markers sit in ``compresskit`` itself; this module adds the building
blocks a plugin of each kind is written with. The built-in plugins (``plugins/``) and the benchmarks
(``benchmarks/``) import nothing else from compresskit (a meta-test enforces it), so they read exactly
as a third-party package would. Names here are stable API: they change only with a CHANGELOG entry.

* **Distillers** — the KD engine: :func:`run_stage` trains a student for one :class:`StagePlan`,
  :func:`check_stage` checks one before training, :func:`parse_stage` / :func:`with_default_losses`
  build stage options, :func:`pick` takes a named teacher or loader with a clear error; the loss plan
  pieces (:func:`plan_losses`, :func:`make_compute_loss`, :func:`split_batch`) for distillers that
  train in their own way.
* **Decompositions** — measured dispatch between factored and dense forward paths
  (:class:`FactoredOrDense`, :func:`choose`, :func:`register_family`, :class:`WeightCache`, ...) and the
  linear algebra they share (:func:`top_singular_triplets`, :func:`all_finite`).
* **Tasks** — loaders and collators (:func:`list_dataloader`, :class:`PaddingCollator`), limits,
  output collection, the shared data folder and the official metric formulas.
* **Trackers and commands** — flattening of nested parameters, text tables, the measurement metric
  names, the command context, loading of tokenizers and saved folders.
* **Tools** (benchmarks) — the config reader, the pipeline, the CLI entry point, checkpoints, the walker's
  plan / build / swap steps, ONNX Runtime sessions, parameter and FLOP counts.
"""

from __future__ import annotations

from compresskit import checkpoint
from compresskit.cli import main as cli_main
from compresskit.commands import CommandContext
from compresskit.config import load_config
from compresskit.defaults import default_teacher_path, shared_data_dir
from compresskit.dispatch import (
    FACTORED_OR_DENSE,
    PROBE_MAX_TOKENS,
    FactoredOrDense,
    WeightCache,
    choose,
    needs_grad,
    probe_generator,
    regime,
    register_family,
    tracing,
)
from compresskit.distillation import OUTPUT_NAMES
from compresskit.errors import did_you_mean
from compresskit.export import ort_session
from compresskit.kd_engine import (
    DistillationModel,
    LossPlan,
    build_losses,
    make_compute_loss,
    make_projection,
    plan_losses,
    split_batch,
    teacher_outputs,
)
from compresskit.kd_stage import (
    check_stage,
    parse_stage,
    pick,
    run_stage,
    training_config,
    with_default_losses,
)
from compresskit.linalg import all_finite, top_singular_triplets
from compresskit.measure import (
    MEASUREMENT_METRICS,
    METRIC_COMPRESSION,
    METRIC_LATENCY_MS,
    METRIC_PARAMS,
    STUDENT_PREFIX,
    TEACHER_PREFIX,
    count_parameters,
    dense_model_flops,
    environment_info,
)
from compresskit.metrics import accuracy, f1_binary, matthews_correlation, pearson, spearman, squad_metrics
from compresskit.models import load_tokenizer
from compresskit.pipeline import Pipeline
from compresskit.report_table import format_table
from compresskit.saving import is_compressed_folder
from compresskit.tasks import (
    PaddingCollator,
    check_limit,
    collect_outputs,
    list_dataloader,
    require_fast_tokenizer,
)
from compresskit.tracking import flatten
from compresskit.walker import PLANS_ATTRIBUTE, build_replacements, swap_modules

__all__ = [
    "FACTORED_OR_DENSE",
    "MEASUREMENT_METRICS",
    "METRIC_COMPRESSION",
    "METRIC_LATENCY_MS",
    "METRIC_PARAMS",
    "OUTPUT_NAMES",
    "PLANS_ATTRIBUTE",
    "PROBE_MAX_TOKENS",
    "STUDENT_PREFIX",
    "TEACHER_PREFIX",
    "CommandContext",
    "DistillationModel",
    "FactoredOrDense",
    "LossPlan",
    "PaddingCollator",
    "Pipeline",
    "WeightCache",
    "accuracy",
    "all_finite",
    "build_losses",
    "build_replacements",
    "check_limit",
    "check_stage",
    "checkpoint",
    "choose",
    "cli_main",
    "collect_outputs",
    "count_parameters",
    "default_teacher_path",
    "dense_model_flops",
    "did_you_mean",
    "environment_info",
    "f1_binary",
    "flatten",
    "format_table",
    "is_compressed_folder",
    "list_dataloader",
    "load_config",
    "load_tokenizer",
    "make_compute_loss",
    "make_projection",
    "matthews_correlation",
    "needs_grad",
    "ort_session",
    "parse_stage",
    "pearson",
    "pick",
    "plan_losses",
    "probe_generator",
    "regime",
    "register_family",
    "require_fast_tokenizer",
    "run_stage",
    "shared_data_dir",
    "spearman",
    "split_batch",
    "squad_metrics",
    "swap_modules",
    "teacher_outputs",
    "top_singular_triplets",
    "tracing",
    "training_config",
    "with_default_losses",
]
