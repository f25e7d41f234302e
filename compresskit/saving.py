"""Save, reload and merge compressed models.

A saved folder is ``save_pretrained``-shaped:

- ``config.json``: the Hugging Face config (``architectures`` names the model class);
- ``model.safetensors``: every tensor of the compressed model (tied tensors stored once);
- ``compression_plan.json``: the compresskit version, the model class and every applied plan (module
  names, decomposition, options, spec, and the plugin + distribution version that provided it).

:func:`load` builds the architecture from the config, rebuilds each replacement from its spec through
the plugin registry (``build(..., initialize=False)``, no decomposition re-run) and loads the weights
strictly, so outputs are bit-identical. :func:`merge` multiplies the factors back into plain dense
modules: the result is an ordinary ``transformers`` model that loads without compresskit.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.errors import CheckpointError, CompressKitError, DecompositionError, PluginError
from compresskit.registry import Registry
from compresskit.report import CompressionPlan
from compresskit.walker import PLANS_ATTRIBUTE, build_replacements, swap_modules

PLAN_FILE = "compression_plan.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def compression_plans(model: nn.Module) -> tuple[CompressionPlan, ...]:
    """The plans :func:`compresskit.decompose` applied to ``model``, in order (empty if none)."""
    return tuple(getattr(model, PLANS_ATTRIBUTE, ()))


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``compression_plan.json`` into ``directory``.

    Each file is written under a temporary name and then renamed, so an interrupted save never leaves
    a half-written file under a final name.
    """
    from safetensors.torch import save_model

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    from compresskit.quantize import is_quantized

    if is_quantized(model):
        raise CheckpointError(
            f"cannot save {type(model).__name__} to {folder}: it is dynamically quantised (int8 packed "
            "weights, which safetensors cannot store). Save the float model with compresskit.save and call "
            "compresskit.quantize_dynamic after compresskit.load, or export it with "
            "`compresskit export --quantize int8`."
        )
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise CheckpointError(
            f"cannot save {type(model).__name__} to {folder}: it has no Hugging Face `config`; save works "
            "on transformers models (PreTrainedModel)."
        )
    config = copy.deepcopy(config)
    config.architectures = [type(model).__name__]
    _write_text(folder / CONFIG_FILE, config.to_json_string(use_diff=False))
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_model(model, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS_FILE)
    _write_text(folder / PLAN_FILE, json.dumps(_plan_document(model), indent=2))
    return folder


def _plan_document(model: nn.Module) -> dict[str, Any]:
    from compresskit import __version__

    cls = type(model)
    return {
        "format": FORMAT_VERSION,
        "compresskit_version": __version__,
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "plans": [plan.to_dict() for plan in compression_plans(model)],
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load(
    directory: str | Path,
    *,
    registry: Registry | None = None,
    model_class: type[nn.Module] | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save`: architecture, compressed structure, weights (strict).

    ``model_class`` overrides the class named in ``config.json`` (e.g. ``AutoModel``-style loading of
    another head: pass the class). Raises :class:`CheckpointError` naming the file for a missing or
    corrupt file or mismatching weights, and :class:`PluginError` naming the decomposition and the
    plugin recorded in the plan when that plugin is not installed.
    """
    folder = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, PLAN_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name} is missing; {folder} is not a folder written by save().")
    plans = read_plans(folder)
    registry = registry or Registry.from_plugins()
    _check_plugins(plans, registry, folder)
    model = _instantiate(folder, model_class)
    for plan in plans:
        try:
            swap_modules(model, plan, build_replacements(model, plan, registry=registry, initialize=False))
        except CompressKitError as exc:
            where = folder / PLAN_FILE
            raise CheckpointError(f"{where}: cannot rebuild the compressed structure: {exc}") from exc
    _load_weights(model, folder / WEIGHTS_FILE)
    setattr(model, PLANS_ATTRIBUTE, plans)
    return model.eval()


def read_plans(folder: Path) -> tuple[CompressionPlan, ...]:
    """The plans recorded in ``folder/compression_plan.json``."""
    path = folder / PLAN_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return tuple(CompressionPlan.from_dict(plan) for plan in document["plans"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{path} is not a valid compression plan: {problem}") from None


def _check_plugins(plans: tuple[CompressionPlan, ...], registry: Registry, folder: Path) -> None:
    installed = set(registry.names("decomposition"))
    for plan in plans:
        for module in plan.modules:
            if module.decomposition not in installed:
                plugin = module.plugin
                raise PluginError(
                    f"{folder / PLAN_FILE}: module {module.name!r} was compressed with decomposition "
                    f"{module.decomposition!r} from plugin {plugin.get('plugin', '?')!r} (distribution "
                    f"{plugin.get('distribution', '?')} {plugin.get('version', '')}), which is not installed "
                    f"(or is blocked by COMPRESSKIT_DISABLE_PLUGINS). Install that distribution to load this "
                    "model."
                )


def _instantiate(folder: Path, model_class: type[nn.Module] | None) -> nn.Module:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: cannot read the model config: {exc}") from exc
    if model_class is None:
        names = list(getattr(config, "architectures", None) or [])
        found = getattr(transformers, names[0], None) if names else None
        if not isinstance(found, type):
            raise CheckpointError(
                f"{folder / CONFIG_FILE}: `architectures` is {names!r}, not a transformers model class; "
                "pass model_class=... to load()."
            )
        model_class = found
    from_config = getattr(model_class, "from_config", None)
    model = from_config(config) if callable(from_config) else model_class(config)
    return model


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: the weights do not match the compression plan: {exc}") from None
    except Exception as exc:  # safetensors' SafetensorError: a truncated or garbage file
        raise CheckpointError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or damaged. "
            "Save the model again (or copy the folder again)."
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the weights do not match the compression plan; missing keys: "
            f"{sorted(missing)[:10]}, unexpected keys: {sorted(unexpected)[:10]}."
        )


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
