"""The student as an MLflow model: ``mlflow.pyfunc.load_model`` predicts with it, ``mlflow models serve``
serves it.

:class:`CompressedTextClassifier` is a ``mlflow.pyfunc.PythonModel`` whose ``load_context`` calls
compresskit's loader on the saved folder (logged as the model's ``"model"`` artifact: weights, config
with the compression plan, tokenizer), so the compressed modules are rebuilt exactly, never re-decomposed.

Input: a table (pandas DataFrame; ``dataframe_split`` / ``dataframe_records`` when served) with a
``text`` column and, for sentence-pair tasks, ``text_pair``. Output: ``label`` (the class name from
the model's ``id2label``) and ``score`` (its softmax probability); a regression head (one output)
gives ``score`` only. Parameter ``max_length`` (tokens, default 128). Imported only when a model is
logged or loaded (MLflow imports slowly).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

#: Rows per forward pass at prediction time.
BATCH_SIZE = 64
DEFAULT_MAX_LENGTH = 128


class CompressedTextClassifier(PythonModel):
    """A saved (compressed) sequence classifier and its tokenizer, as an MLflow pyfunc model."""

    def load_context(self, context: Any) -> None:
        import compresskit
        from compresskit.plugin import is_compressed_folder, load_tokenizer

        folder = context.artifacts["model"]
        self.tokenizer = load_tokenizer(folder, where="MLflow model artifact 'model'")
        if is_compressed_folder(folder):
            self.model = compresskit.load(folder)
        else:
            from transformers import AutoModelForSequenceClassification

            self.model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False)
        self.model.eval()

    # `model_input` has no annotation on purpose: MLflow would otherwise derive a schema from the type
    # hint instead of using the logged signature.
    def predict(self, context, model_input, params=None):
        import torch

        frame = (
            model_input
            if isinstance(model_input, pd.DataFrame)
            else pd.DataFrame({"text": list(model_input)})
        )
        texts = [str(text) for text in frame["text"]]
        pairs = (
            [str(p) for p in frame["text_pair"]]
            if "text_pair" in frame and frame["text_pair"].notna().all()
            else None
        )
        max_length = int((params or {}).get("max_length", DEFAULT_MAX_LENGTH))
        outputs = []
        for start in range(0, len(texts), BATCH_SIZE):
            chunk = slice(start, start + BATCH_SIZE)
            encoded = self.tokenizer(
                texts[chunk], pairs[chunk] if pairs else None,
                padding=True, truncation=True, max_length=max_length, return_tensors="pt",
            )  # fmt: skip
            with torch.no_grad():
                outputs.append(self.model(**encoded).logits.float())
        logits = torch.cat(outputs) if outputs else torch.empty(0, 1)
        if logits.shape[-1] == 1:
            return pd.DataFrame({"score": logits[:, 0].tolist()})
        probabilities = logits.softmax(dim=-1)
        scores, ids = probabilities.max(dim=-1)
        names: Any = self.model.config.id2label
        return pd.DataFrame({"label": [str(names[int(i)]) for i in ids], "score": scores.tolist()})


def save(
    path: Path,
    folder: Path,
    input_example: Sequence[dict[str, str]] | None,
    *,
    run_id: str | None,
    logged_model: Any,
) -> None:
    """Write the MLflow model of the saved ``folder`` into ``path`` (models from code: the class is named
    by ``pyfunc_entry.py``, nothing is pickled), recorded as ``logged_model`` of run ``run_id``."""
    import mlflow.pyfunc
    from mlflow.models import Model

    mlflow_model = Model(
        artifact_path=logged_model.artifact_location,
        model_uuid=logged_model.model_id,
        run_id=run_id,
        model_id=logged_model.model_id,
    )
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"model": str(folder)},
        signature=signature(),
        input_example=input_frame(input_example),
        pip_requirements=pip_requirements(),
        mlflow_model=mlflow_model,
    )


def signature() -> ModelSignature:
    """Inputs ``text`` (+ optional ``text_pair``), outputs ``label`` and ``score``, param ``max_length``."""
    inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)])
    outputs = Schema([ColSpec("string", "label", required=False), ColSpec("double", "score")])
    params = ParamSchema([ParamSpec("max_length", "long", DEFAULT_MAX_LENGTH)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_frame(example: Sequence[dict[str, str]] | None) -> pd.DataFrame | None:
    """The input example as the table the model takes (``None`` stays ``None``)."""
    return pd.DataFrame(list(example)) if example else None


def pip_requirements() -> list[str]:
    """The installed versions of what loading the model needs (given, so MLflow need not infer them)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("compresskit", "torch", "transformers", "safetensors", "tokenizers", "mlflow"):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return found
