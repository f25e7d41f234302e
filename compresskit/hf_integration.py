"""Compressed models as ordinary Hugging Face models: ``from_pretrained``, ``save_pretrained``, ``pipeline``.

How loading works, and why this way:

- **The format.** A compressed folder is a plain ``save_pretrained`` folder. ``config.json`` carries
  ``"quantization_config": {"quant_method": "compresskit", "plans": [...]}``: every applied
  compression plan (module names, decomposition, spec, providing plugin). ``model.safetensors`` holds
  the factor tensors under their module names (``...query.a``, ``...query.b``) and, for every compressed
  module, a one-element *marker* tensor under the dense weight's name (``...query.weight``).
- **With compresskit imported**, transformers' own extension point for checkpoints whose modules differ
  from the dense architecture does the work: :class:`CompressKitConfig` and
  :class:`CompressKitHfQuantizer` are registered under ``quant_method = "compresskit"``
  (``register_quantization_config`` / ``register_quantizer``, as compressed-tensors does). While
  ``from_pretrained`` holds the model on the meta device, the quantizer rebuilds every replacement
  from the saved plan (the plugin's ``build(..., initialize=False)``, no decomposition re-run); the
  factors then load like any weight, with ``dtype=`` and ``device_map=`` honoured, and a factor missing
  from the file is an error. This beats loading beside transformers (our own ``load`` only): every
  path that ends in ``from_pretrained`` — ``AutoModel*``, ``pipeline()``, the Hub, accelerate's big-model
  loading — works unchanged. Registration happens on ``import compresskit`` (:mod:`compresskit.hf_hook`).
- **Without compresskit** (not installed, or installed but not imported: transformers has no plugin
  discovery for quantizers, so ``import compresskit`` is required and documented in every model card),
  transformers 5.x only logs "Unknown quantization type ... we will skip the quantization" and would
  load the dense architecture with random matrices. The markers prevent that: each is 1-D where the
  dense weight is 2-D, so transformers' size check fails and ``from_pretrained`` raises (unless the
  caller passes ``ignore_mismatched_sizes=True``, which prints every re-initialised matrix). Loading
  is correct or loud, never silently random.
- **Saving.** A model compressed in this process gets the same config and quantizer attached
  (:func:`attach`), so ``model.save_pretrained`` / ``push_to_hub`` write the plan and the markers too.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from compresskit.compressed import CompressedModuleMixin
from compresskit.errors import CheckpointError, CompressKitError, DecompositionError, PluginError
from compresskit.registry import Registry
from compresskit.report import CompressionPlan
from compresskit.walker import PLANS_ATTRIBUTE, build_replacements, swap_modules

#: ``quant_method`` of compresskit folders in ``config.json``.
QUANT_METHOD = "compresskit"
#: Version of the folder format (1: plan in compression_plan.json; 2: plan in config.json + markers).
FORMAT_VERSION = 2

_REGISTRY: contextvars.ContextVar[Registry | None] = contextvars.ContextVar(
    "compresskit_registry", default=None
)


class CompressKitConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a compressed model: the compression plans applied, in order."""

    def __init__(
        self,
        plans: Sequence[Mapping[str, Any]] = (),
        format: int = FORMAT_VERSION,  # the key's name in config.json
        compresskit_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        from compresskit import __version__

        self.quant_method = QUANT_METHOD  # type: ignore[assignment]
        self.format = int(format)
        self.compresskit_version = compresskit_version or __version__
        self.plans = [dict(plan) for plan in plans]

    @classmethod
    def from_plans(cls, plans: Sequence[CompressionPlan]) -> CompressKitConfig:
        return cls(plans=[plan.to_dict() for plan in plans])

    def compression_plans(self) -> tuple[CompressionPlan, ...]:
        try:
            return tuple(CompressionPlan.from_dict(plan) for plan in self.plans)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"config.json: quantization_config.plans is not a valid compression plan "
                f"({type(exc).__name__}: {exc})."
            ) from None


class CompressKitHfQuantizer(HfQuantizer):
    """Rebuilds the compressed modules of a saved model before transformers loads its weights."""

    requires_calibration = False
    quantization_config: CompressKitConfig

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if not self.pre_quantized:
            raise CheckpointError(
                "quantization_config=CompressKitConfig(...) was given for a checkpoint that is not "
                "compressed. Load the dense model plainly and compress it with compresskit.decompose "
                "(or `compresskit compress`); compressed folders carry their own config."
            )
        written = self.quantization_config.format
        if written > FORMAT_VERSION:
            raise CheckpointError(
                f"config.json: this folder was written in compresskit format {written} (compresskit "
                f"{self.quantization_config.compresskit_version}); this compresskit reads formats up to "
                f"{FORMAT_VERSION}. Upgrade compresskit to load it."
            )
        check_plugins(self.quantization_config.compression_plans(), active_registry())

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        rebuild(model, self.quantization_config.compression_plans(), active_registry())
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        check_factors_loaded(model)
        # A compressed model is an ordinary floating-point model: transformers' restrictions for
        # quantized models (no .half() / .float(), no Trainer fine-tuning) must not apply to it.
        model.is_quantized = False
        return model

    def get_state_dict_and_metadata(self, model: Any) -> tuple[dict[str, Any], dict[str, str]]:
        from compresskit import __version__

        return {**model.state_dict(), **weight_markers(model)}, {"compresskit": __version__}

    def is_serializable(self) -> bool:
        return True

    def _dequantize(self, model: Any, dtype: Any = None) -> Any:
        """``model.dequantize()``: every compressed module replaced, in place, by its dense product."""
        from compresskit.saving import merge

        dense = merge(model)
        for name, child in list(dense.named_children()):
            setattr(model, name, child)
        if PLANS_ATTRIBUTE in vars(model):
            delattr(model, PLANS_ATTRIBUTE)
        detach(model)
        return model.to(dtype) if dtype is not None else model

    @property
    def is_trainable(self) -> bool:
        return True


def register() -> None:
    """Register :class:`CompressKitConfig` and :class:`CompressKitHfQuantizer` (idempotent)."""
    from transformers.quantizers import auto

    if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config(QUANT_METHOD)(CompressKitConfig)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(CompressKitHfQuantizer)


@contextlib.contextmanager
def using_registry(registry: Registry | None) -> Iterator[None]:
    """Within the block, loading rebuilds modules with ``registry`` (default: the installed plugins)."""
    token = _REGISTRY.set(registry)
    try:
        yield
    finally:
        _REGISTRY.reset(token)


def active_registry() -> Registry:
    return _REGISTRY.get() or Registry.from_plugins()


def check_plugins(plans: Sequence[CompressionPlan], registry: Registry) -> None:
    """Raise :class:`PluginError` naming the decomposition and plugin of any module that cannot be rebuilt."""
    installed = set(registry.names("decomposition"))
    for plan in plans:
        for module in plan.modules:
            if module.decomposition not in installed:
                plugin = module.plugin
                raise PluginError(
                    f"config.json: module {module.name!r} was compressed with decomposition "
                    f"{module.decomposition!r} from plugin {plugin.get('plugin', '?')!r} (distribution "
                    f"{plugin.get('distribution', '?')} {plugin.get('version', '')}), which is not installed "
                    "(or is blocked by COMPRESSKIT_DISABLE_PLUGINS). Install that distribution to load this "
                    "model."
                )


def rebuild(model: nn.Module, plans: Sequence[CompressionPlan], registry: Registry) -> None:
    """Put the planned replacements (uninitialised) into ``model``, renamed to its class's module names."""
    rebased = tuple(rebase_plan(plan, model) for plan in plans)
    for plan in rebased:
        try:
            swap_modules(model, plan, build_replacements(model, plan, registry=registry, initialize=False))
        except CompressKitError as exc:
            raise CheckpointError(f"config.json: cannot rebuild the compressed structure: {exc}") from exc
    setattr(model, PLANS_ATTRIBUTE, rebased)
    adapt(model)
    ignored = getattr(model, "_keys_to_ignore_on_load_unexpected", None)
    if isinstance(ignored, set):  # the markers are expected in the file and unused by the model
        ignored.update(re.escape(name) + "$" for name in weight_markers(model, shapes_only=True))


def rebase_plan(plan: CompressionPlan, model: nn.Module) -> CompressionPlan:
    """The plan with names adapted to ``model``: a task model's plan loaded as its base model (or the
    reverse) differs by the ``base_model_prefix``; modules the class lacks (another head) are dropped."""
    import dataclasses

    names = {name for name, _ in model.named_modules(remove_duplicate=False)}
    prefix = str(getattr(model, "base_model_prefix", "") or "")

    def resolve(name: str) -> str | None:
        if name in names:
            return name
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in names:
            return name[len(prefix) + 1 :]
        if prefix and f"{prefix}.{name}" in names:
            return f"{prefix}.{name}"
        return None

    modules = []
    for planned in plan.modules:
        name = resolve(planned.name)
        if name is None:
            continue
        aliases = tuple(a for a in map(resolve, planned.aliases) if a is not None)
        tied = tuple(t for t in map(resolve, planned.tied_outputs) if t is not None)
        modules.append(dataclasses.replace(planned, name=name, aliases=aliases, tied_outputs=tied))
    return dataclasses.replace(plan, modules=tuple(modules))


def compressed_names(model: nn.Module) -> list[str]:
    """Names of the modules the model's plans replaced (tied output layers included), in plan order."""
    names: list[str] = []
    for plan in getattr(model, PLANS_ATTRIBUTE, ()):
        for planned in plan.modules:
            names += [planned.name, *planned.tied_outputs]
    return list(dict.fromkeys(names))


def check_factors_loaded(model: nn.Module) -> None:
    """Raise :class:`CheckpointError` if a compressed module's factor was not loaded from the checkpoint."""
    missing = []
    for name in compressed_names(model):
        for pname, param in model.get_submodule(name).named_parameters():
            if not param.is_meta and not getattr(param, "_is_hf_initialized", False):
                missing.append(f"{name}.{pname}")
    if missing:
        where = getattr(getattr(model, "config", None), "_name_or_path", "") or "the checkpoint"
        raise CheckpointError(
            f"{where}: the weights do not match the compression plan; missing keys: {missing[:10]} (factors "
            "of compressed modules, absent from the file or of another shape; they would stay random). The "
            "folder is incomplete, or its config.json plan does not belong to its weights."
        )


def weight_markers(model: nn.Module, *, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """One 1-element tensor under ``<module>.weight`` for every compressed module (see module docstring)."""
    markers: dict[str, torch.Tensor] = {}
    fallback = next(iter(model.parameters()), torch.empty(0))
    for name in compressed_names(model):
        like = next(iter(model.get_submodule(name).parameters()), fallback)
        device = "meta" if shapes_only else "cpu"
        markers[f"{name}.weight"] = torch.full((1,), float(FORMAT_VERSION), dtype=like.dtype, device=device)
    return markers


def attach(model: nn.Module) -> None:
    """Make a model compressed in this process save and load like a Hugging Face model.

    Sets ``config.quantization_config`` and ``hf_quantizer`` (so ``save_pretrained`` writes the plan and
    the markers) on a ``PreTrainedModel``, then :func:`adapt`. No effect on other modules.
    """
    from transformers import PreTrainedModel

    plans = tuple(getattr(model, PLANS_ATTRIBUTE, ()))
    if not isinstance(model, PreTrainedModel) or not plans:
        return
    config = CompressKitConfig.from_plans(plans)
    model.config.quantization_config = config
    model.hf_quantizer = CompressKitHfQuantizer(config, pre_quantized=True)  # type: ignore[assignment]
    model.quantization_method = QUANT_METHOD  # type: ignore[assignment]
    adapt(model)


def detach(model: nn.Module) -> None:
    """Undo :func:`attach` on a model whose modules are dense again (``compresskit.merge``)."""
    for attribute in ("hf_quantizer", "quantization_method", "is_quantized", "resize_token_embeddings"):
        if attribute in vars(model):
            delattr(model, attribute)
    config = getattr(model, "config", None)
    if config is not None and "quantization_config" in vars(config):
        del config.quantization_config
    for sub in model.modules():
        if "_tied_weights_keys" in vars(sub):
            delattr(sub, "_tied_weights_keys")
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    if callable(expand):
        model.all_tied_weights_keys = expand(all_submodels=True)


def adapt(model: nn.Module) -> None:
    """What transformers' model-level code needs once modules are compressed.

    - ``_tied_weights_keys`` pairs whose tensor is now computed by a compressed module are dropped (the
      tie is carried by the shared factors), so ``tie_weights()`` and loading do not try to assign a
      compressed ``weight``;
    - ``resize_token_embeddings`` is refused with a clear error when an embedding is compressed.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            keys = getattr(sub, "_tied_weights_keys", None)
            if isinstance(keys, dict) and keys:
                kept = _retie(sub, keys)
                if kept != keys:
                    sub._tied_weights_keys = kept
    if hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    compressed = [
        name
        for name, module in model.named_modules()
        if isinstance(module, CompressedModuleMixin)
        and module in (model.get_input_embeddings(), _output_embeddings(model))
    ]
    if compressed:
        # transformers has no hook for resizing a non-nn.Embedding; without this its resize would raise a
        # TypeError that names neither the module nor the fix (or silently build a dense table).
        refuse = functools.partial(refuse_resize, tuple(compressed))
        model.resize_token_embeddings = refuse  # type: ignore[method-assign]


def _retie(model: nn.Module, keys: Mapping[str, str]) -> dict[str, str]:
    """``_tied_weights_keys`` for the compressed model.

    A pair whose two names reach one compressed module (T5's ``shared`` / ``encoder.embed_tokens``)
    ties its factors instead; a pair with a compressed side otherwise (an LM head computed from the
    compressed embedding) is dropped: the shared factors carry that tie.
    """
    kept: dict[str, str] = {}
    for target, source in keys.items():
        target_module, source_module = _compressed_owner(model, target), _compressed_owner(model, source)
        if target_module is None and source_module is None:
            kept[target] = source
        elif target_module is source_module and isinstance(target_module, nn.Module):
            target_path, source_path = target.rpartition(".")[0], source.rpartition(".")[0]
            for pname, _ in target_module.named_parameters():
                kept[f"{target_path}.{pname}"] = f"{source_path}.{pname}"
    return kept


def _compressed_owner(model: nn.Module, name: str) -> CompressedModuleMixin | None:
    """The compressed module whose ``weight`` dotted ``name`` is (a plain name, not a pattern), or None."""
    path, _, attribute = name.rpartition(".")
    if not re.fullmatch(r"[\w.]+", name) or attribute != "weight":
        return None
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return None
    return module if isinstance(module, CompressedModuleMixin) else None


def _output_embeddings(model: Any) -> Any:
    try:
        return model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def refuse_resize(names: tuple[str, ...], *args: Any, **kwargs: Any) -> Any:
    """``resize_token_embeddings`` of a model whose embedding is compressed: a clear error."""
    raise DecompositionError(
        f"resize_token_embeddings: {', '.join(names)} is compressed (its table is computed from factors), "
        "so it cannot be resized in place. Resize the dense model first, then compress it: load it, "
        "call model.resize_token_embeddings(n), run compresskit.decompose(model, ...); or resize "
        "compresskit.merge(model) and compress that again."
    )


register()
