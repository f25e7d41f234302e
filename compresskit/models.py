"""Loading models for the pipeline: teacher paths, task heads, tokenizers, and fine-tuned-ness.

Everything here turns a user's ``[model]`` entry into Hugging Face objects, raising a clear
:class:`~compresskit.errors.ConfigError` for a path that does not exist or does not hold a Transformer
(before any training starts).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from compresskit.errors import ConfigError

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


def load_hf_config(path: str, where: str = "model.teacher") -> Any:
    """The model's ``transformers`` config; a folder without one is a ConfigError naming ``where``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{where}: {path!r} is not a Hugging Face Transformer model folder ({first_line}). It needs a "
            "config.json with a `model_type` and the weights (model.safetensors or pytorch_model.bin)."
        ) from None


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
        return auto_class(task).from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot load {str(path)!r} as a model for {task.name!r}: {exc}") from None
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
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: no tokenizer could be loaded from {str(path)!r}: {exc}") from None
    return tokenizer


def forward_inputs(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The items of ``batch`` that ``model.forward`` accepts (task extras such as ids are dropped)."""
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = {"input_ids", "attention_mask", "token_type_ids", "labels", "position_ids"}
        accepted |= set(parameters)
    else:
        accepted = set(parameters)
    return {key: value for key, value in batch.items() if key in accepted}


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
