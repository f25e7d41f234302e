"""Save, reload and merge compressed models.

A saved folder is an ordinary ``save_pretrained`` folder (see :mod:`compresskit.hf_integration`):

- ``config.json``: the Hugging Face config (``architectures`` names the model class, ``dtype`` the
  saved dtype) with ``quantization_config = {"quant_method": "compresskit", "plans": [...]}``: every
  applied plan (module names, decomposition, options, spec, and the plugin + version that provided it);
- ``model.safetensors``: the factor tensors (tied tensors stored once) and one marker per compressed
  module under the dense weight's name, so that transformers without compresskit refuses the folder.

:func:`load` is ``from_pretrained`` with compresskit's quantizer: the architecture from the config, each
replacement rebuilt from its spec through the plugin registry (``build(..., initialize=False)``, no
decomposition re-run), the weights loaded strictly, so outputs are bit-identical. Folders written by
compresskit 0.1 (plan in ``compression_plan.json``) load too. :func:`merge` multiplies the factors back
into plain dense modules: the result is an ordinary ``transformers`` model that loads without compresskit.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch
from torch import nn

from compresskit import model_card
from compresskit.errors import CheckpointError, CompressKitError, ConfigError, DecompositionError
from compresskit.registry import Registry
from compresskit.report import CompressionPlan
from compresskit.walker import PLANS_ATTRIBUTE

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: The plan file of compresskit 0.1 folders (read for backward compatibility, no longer written).
PLAN_FILE = "compression_plan.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

ModelT = TypeVar("ModelT", bound=nn.Module)


def compression_plans(model: nn.Module) -> tuple[CompressionPlan, ...]:
    """The plans :func:`compresskit.decompose` applied to ``model``, in order (empty if none)."""
    return tuple(getattr(model, PLANS_ATTRIBUTE, ()))


def save(
    model: nn.Module, directory: str | Path, *, tokenizer: Any = None, base_model: str | None = None
) -> Path:
    """``model.save_pretrained(directory)`` for a (compressed) Hugging Face model, file by file atomically.

    Writes ``config.json`` (with the compression plans, the model's real dtype and its label names),
    ``model.safetensors``, ``generation_config.json`` for generative models, the ``tokenizer`` when
    given (so the folder is usable on its own: ``pipeline()``, ``compresskit evaluate``) and a model card
    (``README.md``; ``base_model``: a Hub id, default the config's ``_name_or_path``). The files are written
    into a temporary folder and each is then renamed into ``directory``, so an interrupted save never
    leaves a half-written file under a final name. Raises :class:`CheckpointError` for a model that
    is not a transformers ``PreTrainedModel``.
    """
    from transformers import PreTrainedModel

    from compresskit.hf_integration import attach

    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot save to {folder}: it is a file, not a folder; give a folder path.")
    from compresskit.quantize import is_quantized

    if is_quantized(model):
        raise CheckpointError(
            f"cannot save {type(model).__name__} to {folder}: it is dynamically quantised (int8 packed "
            "weights, which safetensors cannot store). Save the float model with compresskit.save and call "
            "compresskit.quantize_dynamic after compresskit.load, or export it with "
            "`compresskit export --quantize int8`."
        )
    if not isinstance(model, PreTrainedModel):
        raise CheckpointError(
            f"cannot save {type(model).__name__} to {folder}: it has no Hugging Face `config`; save works "
            "on transformers models (PreTrainedModel)."
        )
    attach(model)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".compresskit-save.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    facts = model_card.facts_from_model(model, staging, model_card.base_model_id(base_model))
    model_card.write(staging, facts)
    for file in sorted(staging.iterdir()):
        os.replace(file, folder / file.name)
    staging.rmdir()
    (folder / PLAN_FILE).unlink(missing_ok=True)  # an old plan file would contradict config.json
    return folder


def is_compressed_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a compressed model (plan in config.json, or compression_plan.json)."""
    path = Path(folder)
    if (path / PLAN_FILE).is_file():
        return True
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(quantization, dict) and quantization.get("quant_method") == "compresskit"


@overload
def load(
    directory: str | Path,
    *,
    model_class: type[ModelT],
    dtype: torch.dtype | str | None = None,
    device_map: str | Mapping[str, Any] | torch.device | None = None,
    registry: Registry | None = None,
) -> ModelT: ...


@overload
def load(
    directory: str | Path,
    *,
    model_class: Any = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | Mapping[str, Any] | torch.device | None = None,
    registry: Registry | None = None,
) -> PreTrainedModel: ...


def load(
    directory: str | Path,
    *,
    model_class: Any = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | Mapping[str, Any] | torch.device | None = None,
    registry: Registry | None = None,
) -> Any:
    """Rebuild a model saved by :func:`save` / ``save_pretrained``: architecture, compressed modules, weights.

    ``dtype`` and ``device_map`` mean what they mean for ``from_pretrained`` (default: the saved dtype,
    one device). ``model_class`` overrides the class named in ``config.json`` (a concrete class, or an
    auto class such as ``AutoModelForCausalLM``); the return type is that class. The weights must match
    the plan exactly. Raises :class:`CheckpointError` naming the file for a missing or corrupt file or
    mismatching weights, and :class:`PluginError` naming the decomposition and the plugin recorded in the
    plan when that plugin is not installed. Equivalent to ``AutoModel*.from_pretrained(directory)`` after
    ``import compresskit``, with strict checks.
    """
    from compresskit.hf_integration import using_registry

    _check_dtype(dtype)
    folder = Path(directory)
    config = _compressed_config(folder)
    cls = model_class or _architecture(folder, config)
    with using_registry(registry), _quiet_transformers():
        try:
            model, info = cls.from_pretrained(
                str(folder),
                config=config,
                dtype=dtype if dtype is not None else "auto",
                device_map=device_map,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                trust_remote_code=False,
            )
        except OSError as exc:
            raise CheckpointError(f"{folder}: cannot read the saved model: {exc}") from None
        except CompressKitError:
            raise
        except Exception as exc:  # safetensors' SafetensorError and friends: a truncated or garbage file
            single = Path(folder) / "model.safetensors"
            what = str(single) if single.is_file() else f"{folder}: the saved weights"
            raise CheckpointError(
                f"{what} cannot be read ({type(exc).__name__}: {exc}); the file is "
                "truncated or damaged. Save the model again (or copy the folder again)."
            ) from None
    _check_loading_info(info, folder)
    return model


def _check_dtype(dtype: Any) -> None:
    """``dtype`` must be a torch dtype, ``"auto"`` or the name of a floating torch dtype."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ConfigError(
            f"load(dtype={dtype!r}): not a torch dtype; use e.g. torch.bfloat16, 'bfloat16', 'float16', "
            "'float32' or 'auto' (the saved dtype)."
        )


def read_plans(folder: Path) -> tuple[CompressionPlan, ...]:
    """The plans recorded in ``folder`` (config.json, or compression_plan.json of 0.1 folders)."""
    from compresskit.hf_integration import CompressKitConfig

    config = _compressed_config(folder)
    return CompressKitConfig(**dict(config.quantization_config)).compression_plans()


def _compressed_config(folder: Path) -> Any:
    """The folder's transformers config, with the compresskit plans as its ``quantization_config``."""
    import transformers

    from compresskit.hf_integration import QUANT_METHOD, CompressKitConfig

    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder / CONFIG_FILE} is missing; {folder} is not a saved model folder.")
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: cannot read the model config: {exc}") from exc
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        config.quantization_config = CompressKitConfig(plans=_legacy_plans(folder)).to_dict()
        return config
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method != QUANT_METHOD:
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: quantization_config has quant_method {method!r}, not "
            f"{QUANT_METHOD!r}; this folder was not written by compresskit. Load it with from_pretrained."
        )
    return config


def _legacy_plans(folder: Path) -> list[dict[str, Any]]:
    path = folder / PLAN_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder / CONFIG_FILE} has no compresskit quantization_config and {path} is missing; {folder} "
            "is not a folder written by compresskit.save / save_pretrained of a compressed model."
        )
    try:
        plans = json.loads(path.read_text(encoding="utf-8"))["plans"]
        for plan in plans:
            CompressionPlan.from_dict(plan)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a valid compression plan: {type(exc).__name__}: {exc}"
        ) from None
    return list(plans)


def _architecture(folder: Path, config: Any) -> Any:
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    found = getattr(transformers, names[0], None) if names else None
    if not isinstance(found, type):
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: `architectures` is {names!r}, not a transformers model class; "
            "pass model_class=... to load()."
        )
    return found


def _check_loading_info(info: Mapping[str, Any], folder: Path) -> None:
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        shapes = [f"{name}: file {tuple(a)} vs model {tuple(b)}" for name, a, b in mismatched[:10]]
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE}: the weights do not match the compression plan; missing keys: "
            f"{missing[:10]}, unexpected keys: {unexpected[:10]}, wrong shapes: {shapes}."
        )


class _quiet_transformers:
    """transformers' load report repeats what :func:`_check_loading_info` raises; silence it meanwhile."""

    def __enter__(self) -> None:
        import transformers

        self.level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()

    def __exit__(self, *exc: object) -> None:
        import transformers

        transformers.logging.set_verbosity(self.level)


def merge(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every replacement multiplied back into a plain dense module.

    Replaced ``Conv1D`` modules come back as ``Conv1D`` ((in, out) layout); a tied output projection
    becomes an ``nn.Linear`` sharing the dense embedding's weight, so the weights stay tied. The result
    carries no compresskit module and ``save_pretrained`` writes an ordinary transformers folder.
    """
    merged = copy.deepcopy(model)
    plans = compression_plans(merged)
    dense: dict[int, nn.Module] = {}
    for plan in plans:
        for planned in plan.modules:
            replacement = merged.get_submodule(planned.name)
            if id(replacement) not in dense:
                dense[id(replacement)] = _densify(replacement, planned.name, planned.class_name)
            for name in (planned.name, *planned.aliases):
                _set(merged, name, dense[id(replacement)])
            for name in planned.tied_outputs:
                _set(merged, name, _tied_linear(merged.get_submodule(name), dense[id(replacement)]))
    if PLANS_ATTRIBUTE in vars(merged):
        delattr(merged, PLANS_ATTRIBUTE)
    if "PreTrainedModel" in [cls.__name__ for cls in type(merged).__mro__]:
        from compresskit.hf_integration import detach

        detach(merged)
    return merged


def _densify(replacement: nn.Module, name: str, class_name: str) -> nn.Module:
    to_dense = getattr(replacement, "to_dense", None)
    if not callable(to_dense):
        kind = type(replacement).__name__
        raise DecompositionError(f"{name}: {kind} has no to_dense(); it cannot be merged.")
    result: nn.Module = to_dense()
    if class_name == "Conv1D" and isinstance(result, nn.Linear):
        from transformers.pytorch_utils import Conv1D

        conv = Conv1D(result.out_features, result.in_features).to(result.weight)
        with torch.no_grad():
            conv.weight.copy_(result.weight.t())
            conv.bias.copy_(result.bias if result.bias is not None else torch.zeros_like(conv.bias))
        result = conv
    return result


def _tied_linear(head: nn.Module, embedding: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` whose weight *is* the dense embedding's weight, with the head's bias."""
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, nn.Parameter):
        raise DecompositionError(
            f"cannot tie the merged head to {type(embedding).__name__}: it has no weight."
        )
    bias = getattr(head, "bias", None)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = weight
    if isinstance(bias, torch.Tensor):
        linear.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach().clone())
    return linear


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    path, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(path) if path else model, attribute, module)
