"""Loading models for the pipeline: teacher paths, task heads, tokenizers, and fine-tuned-ness.

Everything here turns a user's ``[model]`` entry into Hugging Face objects, raising a clear
:class:`~compresskit.errors.ConfigError` for a path that does not exist or does not hold a Transformer
(before any training starts).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from compresskit.errors import CheckpointError, CompressKitError, ConfigError, NonFiniteWeightsError

#: The ``transformers`` auto class that puts the right head on a model for each task problem type.
AUTO_CLASSES = {
    "single_label_classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    "language_modeling": "AutoModelForMaskedLM",
}


def resolve_model_path(value: str, where: str = "model.teacher") -> str:
    """``"default"`` → the embedded MiniLM-L6 folder; a path is checked to exist; else a Hub id."""
    if value == "default":
        from compresskit.defaults import default_teacher_path

        return str(default_teacher_path())
    path = Path(value).expanduser()
    if path.exists():
        return str(path)
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        return value  # a Hugging Face Hub id; loading it needs a network or the local cache
    raise ConfigError(
        f"{where}: {value!r} does not exist (working directory: {Path.cwd()}). Give a folder holding a "
        "Hugging Face model (config.json + weights), a Hub id like 'bert-base-uncased', or 'default'."
    )


#: Passed to every ``from_pretrained``: code shipped inside a model folder (``auto_map`` in its
#: config.json) is never imported or run, and transformers never asks whether to run it.
NO_REMOTE_CODE: dict[str, Any] = {"trust_remote_code": False}


def load_hf_config(path: str, where: str = "model.teacher") -> Any:
    """The model's ``transformers`` config; a folder without one is a ConfigError naming ``where``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{where}: {path!r} is not a Hugging Face Transformer model folder ({_reason(exc)}). It needs a "
            "config.json with a `model_type` transformers knows, and the weights (model.safetensors or "
            "pytorch_model.bin)."
        ) from None


def _reason(exc: BaseException) -> str:
    """One line about ``exc``; custom-code refusals say that compresskit never runs a folder's code."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "trust_remote_code" in text or "custom code" in text:
        return (
            "its config.json asks to run Python code shipped in the folder (auto_map), and compresskit "
            "never runs code from model files; use a model whose architecture transformers provides"
        )
    return text if len(text) <= 300 else text[:297] + "..."


def pretrained(cls: Any, path: str | Path, where: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, **kwargs)`` without remote code, every failure a clear error.

    A folder transformers cannot read as a model is a :class:`ConfigError`; weights that cannot be
    read (truncated or garbage safetensors, a pickle that ``weights_only`` loading refuses) are a
    :class:`CheckpointError` naming the folder.
    """
    import pickle

    try:
        return cls.from_pretrained(str(path), **kwargs, **NO_REMOTE_CODE)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        if "size mismatch" in str(exc):  # the folder's head does not fit the task
            raise ConfigError(f"{where}: cannot load {str(path)!r}: {_reason(exc)}") from None
        raise CheckpointError(_unreadable_weights(path, where, exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        if type(exc).__name__ == "SafetensorError" or "safetensors" in str(exc).lower():
            raise CheckpointError(_unreadable_weights(path, where, exc)) from None
        raise ConfigError(f"{where}: cannot load {str(path)!r}: {_reason(exc)}") from None
    except Exception as exc:  # e.g. safetensors' own SafetensorError for a truncated file
        raise CheckpointError(_unreadable_weights(path, where, exc)) from None


def _unreadable_weights(path: str | Path, where: str, exc: BaseException) -> str:
    if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
        return (
            f"{where}: the pickle weights in {str(path)!r} were refused: they hold objects other than "
            "tensors, and compresskit reads pickle files only with torch.load(weights_only=True) so that a "
            "model file can never run code. Use a model saved as model.safetensors (if you trust this "
            "file, convert it yourself in a separate, sandboxed step)."
        )
    return (
        f"{where}: the weights in {str(path)!r} cannot be read ({type(exc).__name__}: {_reason(exc)}). The "
        "file is truncated, damaged or not a weights file; re-download or re-save the model."
    )


def check_weight_files(path: str | Path, where: str = "model.teacher") -> None:
    """Read every tensor of the folder's ``*.safetensors`` files: truncated, garbage or non-finite
    weights are a :class:`CheckpointError` before any training (the file is read, nothing is kept)."""
    folder = Path(path)
    if not folder.is_dir():
        return  # a Hub id: checked when loaded
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                    _check_finite_tensor(weights.get_tensor(key), file, key, where)
        except CompressKitError:
            raise
        except Exception as exc:
            raise CheckpointError(_unreadable_weights(file, where, exc)) from None
    if not any(folder.glob("*.safetensors")):
        for file in sorted(folder.glob("*.bin")):
            _check_pickle_weights(file, where)


def _check_pickle_weights(file: Path, where: str) -> None:
    """A pickle weights file read as transformers would (``weights_only=True``: no code can run)."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)  # the legacy format
    except Exception as exc:
        raise CheckpointError(_unreadable_weights(file, where, exc)) from None
    for key, tensor in state.items() if isinstance(state, dict) else ():
        if isinstance(tensor, torch.Tensor):
            _check_finite_tensor(tensor, file, str(key), where)


def _check_finite_tensor(tensor: torch.Tensor, file: Path, key: str, where: str) -> None:
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    raise NonFiniteWeightsError(
        f"{where}: {file} holds {bad} NaN/Inf value(s) in {key!r}; a model with non-finite weights cannot "
        "be fine-tuned or compressed. Re-download or re-save the model, or use the last good checkpoint "
        "of the run that produced it."
    )


def check_head_fits(model: Any, task: Any, *, where: str) -> None:
    """A :class:`ConfigError` when a classification / regression head has another number of outputs
    than ``task`` needs (a 2-label SST-2 model scored on STS-B would give meaningless numbers)."""
    config = getattr(model, "config", None)
    wanted = getattr(task, "num_labels", None)
    if config is None or wanted is None:
        return
    if getattr(task, "problem_type", None) not in ("single_label_classification", "regression"):
        return
    has = int(getattr(config, "num_labels", wanted))
    if has != int(wanted):
        raise ConfigError(
            f"{where}: the model's head has {has} output(s) but the task needs {wanted} "
            f"({task.problem_type}); evaluate a model fine-tuned (or distilled) on this task."
        )


def is_finetuned_for(config: Any, task: Any) -> bool:
    """Whether ``config`` already describes a model with ``task``'s head (so no fine-tuning is needed)."""
    wanted = AUTO_CLASSES.get(task.problem_type, "").removeprefix("AutoModel")
    architectures = list(getattr(config, "architectures", None) or [])
    if not wanted or not any(arch.endswith(wanted) for arch in architectures):
        return False
    if task.problem_type in ("single_label_classification", "regression"):
        return int(getattr(config, "num_labels", -1)) == int(task.num_labels)
    return True


def auto_class(task: Any) -> Any:
    """The ``transformers`` auto class for ``task.problem_type``."""
    import transformers

    name = AUTO_CLASSES.get(task.problem_type)
    if name is None:
        raise ConfigError(
            f"task {task.name!r}: problem type {task.problem_type!r} has no model head here; "
            f"supported: {', '.join(AUTO_CLASSES)}."
        )
    return getattr(transformers, name)


def load_task_model(path: str | Path, task: Any, *, where: str = "model.teacher") -> Any:
    """Load ``path`` with the head ``task`` needs (a new head is initialised when the folder has none)."""
    import transformers

    kwargs = dict(task.model_kwargs()) if hasattr(task, "model_kwargs") else {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialised head" warnings are expected here
    try:
        return pretrained(auto_class(task), path, f"{where} (for task {task.name!r})", **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)


#: Files holding a tokenizer's vocabulary; a folder with none of them has no usable tokenizer.
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "source.spm",
)


def load_tokenizer(path: str | Path, where: str = "model.tokenizer") -> Any:
    """The tokenizer of a model folder or Hub id.

    A local folder without any vocabulary file is refused: transformers would otherwise build a
    tokenizer from the config alone, with a handful of special tokens, which maps every word to
    ``[UNK]`` and gives chance-level scores without any error. Raises :class:`ConfigError` with the fix.
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise ConfigError(
            f"{where}: {str(path)!r} has no tokenizer (none of {', '.join(VOCABULARY_FILES)}); a tokenizer "
            "built without one turns every word into [UNK]. Save the tokenizer into the folder "
            "(tokenizer.save_pretrained(folder)), or say where it is: `compresskit evaluate --tokenizer "
            "PATH`, `[model] tokenizer = PATH` in a strategy."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), **NO_REMOTE_CODE)
    except (OSError, ValueError, KeyError) as exc:
        problem = _reason(exc)
        raise ConfigError(f"{where}: no tokenizer could be loaded from {str(path)!r}: {problem}") from None


def forward_inputs(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The items of ``batch`` that ``model.forward`` accepts (task extras such as ids are dropped)."""
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = {"input_ids", "attention_mask", "token_type_ids", "labels", "position_ids"}
        accepted |= set(parameters)
    else:
        accepted = set(parameters)
    return {key: value for key, value in batch.items() if key in accepted}


def replace_head(source: torch.nn.Module, target: torch.nn.Module) -> list[str]:
    """Give ``target`` the task head of ``source``: copies of every top-level child outside the base model.

    The label set follows (``id2label``, ``label2id``, ``problem_type``), so a student saved with
    another task's head (say 2 labels) becomes a student of ``source``'s task (say 1, for STS-B). Both
    models must be the same transformers class family (same ``base_model_prefix``). Returns the names of
    the replaced children.
    """
    prefix = getattr(target, "base_model_prefix", "")
    if prefix != getattr(source, "base_model_prefix", None) or not hasattr(target, prefix):
        raise ConfigError(
            f"model.student: a {type(target).__name__} cannot take the head of a {type(source).__name__} "
            "(different base models); start from a student of the teacher's architecture."
        )
    replaced = []
    for name, module in source.named_children():
        if name != prefix:
            setattr(target, name, copy.deepcopy(module))
            replaced.append(name)
    for key in ("id2label", "label2id", "problem_type"):
        setattr(target.config, key, copy.deepcopy(getattr(source.config, key)))
    return replaced


def copy_head(source: torch.nn.Module, target: torch.nn.Module) -> list[str]:
    """Copy every parameter of ``source``'s task head (names outside the base model) into ``target``.

    Used for ``student_init = "pretrained"``: the student starts from the pre-trained encoder with
    the fine-tuned teacher's classifier (KroneckerBERT §3.7: uncompressed layers copied from the teacher).
    """
    prefix = getattr(source, "base_model_prefix", "")
    source_state = source.state_dict()
    target_state = target.state_dict()
    copied = []
    for name, value in source_state.items():
        if prefix and name.startswith(f"{prefix}."):
            continue
        if name in target_state and target_state[name].shape == value.shape:
            target_state[name] = value.clone()
            copied.append(name)
    target.load_state_dict(target_state)
    return copied
