"""compresskit: pluggable compression and knowledge distillation for Hugging Face Transformers.

The names below are the public API; everything else is an implementation detail.
"""

from compresskit import hf_hook as _hf_hook
from compresskit.api import compress, distill, evaluate
from compresskit.commands import Command
from compresskit.component import Component
from compresskit.compressed import CompressedModuleMixin, DenseWeightView
from compresskit.decomposition import (
    DEFAULT_TOKENS,
    CompressedModule,
    Cost,
    Decomposition,
    class_names,
    dense_bias,
    dense_cost,
    dense_linear_flops,
    dense_weight,
    is_conv1d,
    linear_shape,
)
from compresskit.distillation import (
    FINETUNED,
    PRETRAINED,
    DistillationOutputs,
    Distiller,
    LayerMapping,
    Loss,
    LossInputs,
    StageOptions,
    StagePlan,
    problem_type_of,
)
from compresskit.errors import (
    CheckpointError,
    CompressKitError,
    ConfigError,
    DataError,
    DecompositionError,
    DuplicateNameError,
    MissingDependencyError,
    NoMatchingModulesError,
    NonFiniteWeightsError,
    PluginError,
    RunLockedError,
    StorageError,
    TrainingError,
    UnknownNameError,
    UsageError,
)
from compresskit.export import export_onnx
from compresskit.hookspecs import hookimpl, hookspec
from compresskit.measure import LatencyResult, measure_model, size_on_disk_mb
from compresskit.pipeline import CompressResult
from compresskit.plugins import get_plugin_manager
from compresskit.presets import Preset
from compresskit.quantize import quantize_dynamic
from compresskit.registry import Registry
from compresskit.report import CompressionPlan, CompressionReport
from compresskit.saving import load, merge, save
from compresskit.strategy import Strategy
from compresskit.tasks import Task
from compresskit.tracking import NullTracker, Tracker
from compresskit.training import Trainer, TrainingConfig, TrainResult
from compresskit.walker import decompose, plan_compression

__version__ = "0.1.0"

# `AutoModel*.from_pretrained(compressed_folder)` works once compresskit is imported (hf_integration.py).
_hf_hook.install()

__all__ = [
    "DEFAULT_TOKENS",
    "FINETUNED",
    "PRETRAINED",
    "CheckpointError",
    "Command",
    "Component",
    "CompressKitError",
    "CompressResult",
    "CompressedModule",
    "CompressedModuleMixin",
    "CompressionPlan",
    "CompressionReport",
    "ConfigError",
    "Cost",
    "DataError",
    "Decomposition",
    "DecompositionError",
    "DenseWeightView",
    "DistillationOutputs",
    "Distiller",
    "DuplicateNameError",
    "LatencyResult",
    "LayerMapping",
    "Loss",
    "LossInputs",
    "MissingDependencyError",
    "NoMatchingModulesError",
    "NonFiniteWeightsError",
    "NullTracker",
    "PluginError",
    "Preset",
    "Registry",
    "RunLockedError",
    "StageOptions",
    "StagePlan",
    "StorageError",
    "Strategy",
    "Task",
    "Tracker",
    "TrainResult",
    "Trainer",
    "TrainingConfig",
    "TrainingError",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "class_names",
    "compress",
    "decompose",
    "dense_bias",
    "dense_cost",
    "dense_linear_flops",
    "dense_weight",
    "distill",
    "evaluate",
    "export_onnx",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "is_conv1d",
    "linear_shape",
    "load",
    "measure_model",
    "merge",
    "plan_compression",
    "problem_type_of",
    "quantize_dynamic",
    "save",
    "size_on_disk_mb",
]
