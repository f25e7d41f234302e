"""What each of the nine GLUE tasks looks like on disk and on the Hub, and how it is scored.

Column and label conventions follow the GLUE distribution written by ``download_glue_data.py`` (files)
and the Hub's ``nyu-mll/glue`` dataset (column names and label ids), so both sources give the same
examples: text columns named as on the Hub, ``label`` as an integer id (a float for STS-B) and ``idx``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compresskit.plugin import accuracy, f1_binary, matthews_correlation, pearson, spearman


@dataclass(frozen=True)
class GlueSpec:
    """One GLUE task.

    ``text_columns`` are the Hub's names of the one or two text fields; ``file_columns`` the TSV
    header names they are read from. ``label_names[i]`` is the raw TSV label of class id ``i``
    (``None`` for the STS-B regression). CoLA has no header line: ``columns`` names its fields.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    file_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    primary_metric: str
    files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv"})
    columns: tuple[str, ...] | None = None
    hub_config: str = ""
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation"})

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")
_MNLI_TEXT = ("premise", "hypothesis")
_MNLI_FILE = ("sentence1", "sentence2")

#: Every GLUE task, keyed by the name used in options and in the GLUE score.
GLUE_TASKS: dict[str, GlueSpec] = {
    spec.name: spec
    for spec in (
        GlueSpec(
            "cola", "CoLA", ("sentence",), ("sentence",), "label", _BINARY,
            ("matthews_correlation", "accuracy"), "matthews_correlation",
            columns=("source", "label", "original_label", "sentence"),
        ),
        GlueSpec("sst2", "SST-2", ("sentence",), ("sentence",), "label", _BINARY, ("accuracy",), "accuracy"),
        GlueSpec(
            "mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", _BINARY,
            ("f1", "accuracy"), "f1",
        ),
        GlueSpec(
            "stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None,
            ("pearson", "spearman"), "spearman",
        ),
        GlueSpec(
            "qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", _BINARY,
            ("f1", "accuracy"), "f1",
        ),
        GlueSpec(
            "mnli", "MNLI", _MNLI_TEXT, _MNLI_FILE, "gold_label", _MNLI, ("accuracy",), "accuracy",
            files={"train": "train.tsv", "dev": "dev_matched.tsv"}, hub_config="mnli",
            hub_splits={"train": "train", "dev": "validation_matched"},
        ),
        GlueSpec(
            "mnli_mismatched", "MNLI", _MNLI_TEXT, _MNLI_FILE, "gold_label", _MNLI, ("accuracy",),
            "accuracy", files={"train": "train.tsv", "dev": "dev_mismatched.tsv"}, hub_config="mnli",
            hub_splits={"train": "train", "dev": "validation_mismatched"},
        ),
        GlueSpec(
            "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2,
            ("accuracy",), "accuracy",
        ),
        GlueSpec(
            "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2,
            ("accuracy",), "accuracy",
        ),
        GlueSpec(
            "wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _BINARY,
            ("accuracy",), "accuracy",
        ),
    )
}  # fmt: skip

#: Class names in class-id order, as the Hub's ``nyu-mll/glue`` dataset names them (``id2label``).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": _MNLI,
    "mnli_mismatched": _MNLI,
    "qnli": _NLI2,
    "rte": _NLI2,
    "wnli": ("not_entailment", "entailment"),
}

_METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}


def score(spec: GlueSpec, predictions: object, references: object) -> dict[str, float]:
    """The official metrics of ``spec`` (class ids, or scores for STS-B)."""
    return {name: _METRIC_FUNCTIONS[name](predictions, references) for name in spec.metrics}  # type: ignore[arg-type]
