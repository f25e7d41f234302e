"""The Task base class: a benchmark or data source with loaders and official metrics.

Registered through ``compresskit_register_tasks``. A task knows its data files, how to tokenise an
example for a model, which head the model needs (``problem_type``, ``num_labels``) and how to compute
its official metrics from predictions.

The API every trainer and distiller codes against::

    task = registry.create("task", "glue", {"task": "sst2"})
    loader = task.dataloader("train", tokenizer, batch_size=32, shuffle=True)
    metrics = task.evaluate(model, tokenizer, "dev")      # {"accuracy": 0.91}
    model = AutoModelForSequenceClassification.from_pretrained(path, **task.model_kwargs())

Batches are dicts of tensors (``input_ids``, ``attention_mask``, ``token_type_ids`` when the tokenizer
makes them, ``labels``, plus task extras), padded per batch to the longest sequence (dynamic padding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from compresskit.component import Component
from compresskit.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    import datasets
    import torch
    from torch.utils.data import DataLoader

#: The problem types a task (and a model's head) can have; losses declare which they fit
#: (:attr:`compresskit.Loss.problem_types`).
PROBLEM_TYPES = ("single_label_classification", "regression", "question_answering", "language_modeling")


class Task(Component):
    """Base class of tasks. Concrete tasks (GLUE, SQuAD, a text corpus) live in plugins.

    ``problem_type`` is one of ``"single_label_classification"``, ``"regression"``,
    ``"question_answering"`` or ``"language_modeling"``; ``primary_metric`` names the metric used to
    select the best checkpoint. Both are class attributes; a task whose options change them (GLUE's
    STS-B is a regression, CoLA is scored by Matthews correlation) sets them on the instance.
    """

    problem_type: str = "single_label_classification"
    #: Names of the one or two text fields of an example (e.g. ``("sentence1", "sentence2")``), if any.
    text_columns: tuple[str, ...] = ()
    primary_metric: str = "accuracy"
    #: Whether a larger ``primary_metric`` is better (``False`` for e.g. perplexity).
    greater_is_better: bool = True

    @property
    def num_labels(self) -> int:
        """Size of the classification head (1 for regression)."""
        return 1

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """Human-readable class names in class-id order (saved as the model's ``id2label``), if any."""
        return None

    def splits(self) -> list[str]:
        """Names of the splits this task can load, e.g. ``["train", "dev"]``."""
        return ["train", "dev"]

    def load_split(self, split: str) -> datasets.Dataset:
        """The raw, validated examples of ``split``."""
        raise NotImplementedError(f"task {self.name!r} does not implement load_split()")

    def dataloader(
        self,
        split: str,
        tokenizer: Any,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 42,
        max_length: int | None = None,
        limit: int | None = None,
        group_by_length: bool = False,
    ) -> DataLoader[Any]:
        """Tokenised, dynamically padded batches of ``split`` (dicts of tensors).

        ``group_by_length`` batches examples of similar length together (see :func:`list_dataloader`).
        """
        raise NotImplementedError(f"task {self.name!r} does not implement dataloader()")

    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        split: str = "dev",
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        limit: int | None = None,
        device: Any = None,
    ) -> dict[str, float]:
        """The task's official metrics of ``model`` on ``split``."""
        raise NotImplementedError(f"task {self.name!r} does not implement evaluate()")

    def compute_metrics(self, predictions: Any, references: Any) -> dict[str, float]:
        """Official metrics from predictions and references (the format is the task's own)."""
        raise NotImplementedError(f"task {self.name!r} does not implement compute_metrics()")

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoModelFor....from_pretrained``: head size, problem type and, when the
        task names its classes, ``id2label`` / ``label2id`` (so saved models and ``pipeline()`` show them)."""
        if self.problem_type not in ("single_label_classification", "regression"):
            return {}
        kwargs: dict[str, Any] = {"num_labels": self.num_labels, "problem_type": self.problem_type}
        names = self.label_names
        if names and len(names) == self.num_labels:
            kwargs["id2label"] = dict(enumerate(names))
            kwargs["label2id"] = {name: index for index, name in enumerate(names)}
        return kwargs

    def check_split(self, split: str) -> None:
        """Raise :class:`ConfigError` when ``split`` is not one of :meth:`splits`."""
        known = self.splits()
        if split not in known:
            raise ConfigError(
                f"task {self.name!r} has no split {split!r}.{did_you_mean(split, known)} "
                f"Available splits: {', '.join(known)}."
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for tracking (name and options)."""
        options = getattr(self.options, "__dict__", {})
        return {"name": self.name, **{k: v for k, v in options.items() if not k.startswith("_")}}


def resolve_device(model: Any, device: Any = None) -> torch.device:
    """``device`` when given, else the device of the model's first parameter (CPU for none)."""
    import torch

    if device is not None:
        return torch.device(device)
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def collect_outputs(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    device: Any = None,
    input_keys: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
    extract: Callable[[Any], Any] | None = None,
) -> list[Any]:
    """Run ``model`` in eval mode without gradients over ``batches``; return one output per batch.

    Only ``input_keys`` are passed to the model (labels stay out so no loss is computed);
    ``extract(outputs)`` picks what to keep (default: ``outputs.logits`` moved to the CPU). The
    model's train/eval mode is restored afterwards.
    """
    import torch

    target = resolve_device(model, device)
    pick = extract or (lambda out: out.logits.detach().float().cpu())
    was_training = model.training
    model.eval()
    results: list[Any] = []
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(target) for k, v in batch.items() if k in input_keys}
                results.append(pick(model(**inputs)))
    finally:
        model.train(was_training)
    return results


def check_limit(limit: int | None, where: str) -> int | None:
    """Validate an example limit (``None`` or a positive integer)."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"{where}: limit must be a positive integer or None, got {limit!r}.")
    return limit


def require_fast_tokenizer(tokenizer: Any, feature: str) -> None:
    """Raise :class:`DataError` unless ``tokenizer`` is a fast (Rust) tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"{feature} needs a fast tokenizer (offset mappings); got {type(tokenizer).__name__}. "
            "Load it with AutoTokenizer.from_pretrained(path, use_fast=True)."
        )


class PaddingCollator:
    """Collate a list of tokenised examples into a dict of tensors, padding to the longest (dynamic).

    List-valued keys are padded on the tokenizer's ``padding_side``: ``input_ids`` with the pad token,
    ``labels`` with −100 (ignored by cross-entropy), everything else with 0. Scalar keys become 1-D
    tensors; ``labels`` gets ``label_dtype`` (``torch.float`` for regression). ``padding_side``
    overrides the tokenizer's (tasks that index logits by position pad on the right).
    """

    def __init__(self, tokenizer: Any, *, label_dtype: Any = None, padding_side: str | None = None) -> None:
        import torch

        pad_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_values = {"input_ids": 0 if pad_id is None else int(pad_id), "labels": -100}
        self.left = (padding_side or getattr(tokenizer, "padding_side", "right")) == "left"
        self.label_dtype = label_dtype or torch.long

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [example[key] for example in examples]
            dtype = self.label_dtype if key == "labels" else torch.long
            if isinstance(values[0], list | tuple):
                batch[key] = torch.tensor(self._pad(values, self.pad_values.get(key, 0)), dtype=torch.long)
            else:
                batch[key] = torch.tensor(values, dtype=dtype)
        return batch

    def _pad(self, rows: list[Any], value: int) -> list[list[int]]:
        width = max(len(row) for row in rows)
        if self.left:
            return [[value] * (width - len(row)) + list(row) for row in rows]
        return [list(row) + [value] * (width - len(row)) for row in rows]


def list_dataloader(
    items: Sequence[Any], collate_fn: Callable[[Any], Any], *, batch_size: int, shuffle: bool = False,
    seed: int = 42, group_by_length: bool = False,
) -> DataLoader[Any]:  # fmt: skip
    """A DataLoader over an in-memory list of feature dicts.

    ``shuffle`` draws a new order every epoch from ``seed`` + epoch (the Trainer calls ``set_epoch``).
    ``group_by_length`` puts examples of similar ``input_ids`` length in the same batch so dynamic
    padding pads little: shuffled, it is transformers' length-grouped order (random mega-batches of 50
    batches, sorted by length inside); not shuffled, the examples are read longest first. On the full
    SST-2 training set at batch 32 this cuts the padded positions per epoch about threefold.
    Per-example results keep their meaning (each batch carries its own labels / ids), so metrics that do
    not depend on the order are unchanged.
    """
    import torch
    from torch.utils.data import DataLoader

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    sampler: Any = None
    if group_by_length:
        lengths = [len(item["input_ids"]) for item in items]
        sampler = LengthGroupedEpochSampler(lengths, batch_size, seed) if shuffle else _longest_first(lengths)
    elif shuffle:
        sampler = torch.utils.data.RandomSampler(items, generator=torch.Generator().manual_seed(seed))
    return DataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)  # type: ignore[arg-type]


def _longest_first(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class LengthGroupedEpochSampler:
    """transformers' :class:`~transformers.trainer_pt_utils.LengthGroupedSampler` with an epoch seed.

    transformers' sampler draws from one generator whose state moves on with every epoch, so a run
    resumed from a checkpoint would see other batches; here epoch ``e`` is drawn from ``seed + e``
    only (``set_epoch``, called by the Trainer through accelerate), which keeps resume exact.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
