"""The Task base class: a benchmark or data source with loaders and official metrics.

Registered through ``compresskit_register_tasks``. A task knows its data files, how to tokenise an
example for a model, which head the model needs (``problem_type``, ``num_labels``) and how to compute
its official metrics from predictions.
"""

from __future__ import annotations

from typing import Any, ClassVar

from compresskit.component import Component


class Task(Component):
    """Base class of tasks. Concrete tasks (GLUE, SQuAD, a text corpus) live in plugins.

    ``problem_type`` is one of ``"single_label_classification"``, ``"regression"``,
    ``"question_answering"`` or ``"language_modeling"``; ``primary_metric`` names the metric used to
    select the best checkpoint.
    """

    problem_type: ClassVar[str] = "single_label_classification"
    primary_metric: ClassVar[str] = "accuracy"

    @property
    def num_labels(self) -> int:
        """Size of the classification head (1 for regression)."""
        return 1

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for tracking (name and options)."""
        options = getattr(self.options, "__dict__", {})
        return {"name": self.name, **{k: v for k, v in options.items() if not k.startswith("_")}}
