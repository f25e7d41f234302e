"""The real run, short: MiniLM-L6 fine-tuned on SST-2, decomposed with KroneckerBERT8, two-stage KD.

Asserts that the stage-1 intermediate losses fall and that dev accuracy on all 872 SST-2 dev sentences
is clearly higher after distillation than right after decomposition. Sizes are chosen for a 2-core CPU.

The attention-score MSE of MiniLM is about 45 at the start (pre-softmax scores are large), so at weight 1
it swamps the embedding and hidden-state terms, which then rise; weight 0.02 brings it to the same
scale as the others (the reference digest's q10 anticipates this).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compresskit.registry import Registry

pytestmark = pytest.mark.slow

TRAIN_SENTENCES = 2000
MAX_LENGTH = 64
STAGE1_BLOCKS = 256
INTERMEDIATE = {"embedding_mse": 1.0, "attention_score_mse": 0.02, "hidden_mse": 1.0}


@pytest.fixture(scope="module")
def setup(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    registry = Registry.from_plugins()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    sst2 = registry.create("task", "glue", {"task": "sst2"})
    train = sst2.dataloader(
        "train", tokenizer, batch_size=32, shuffle=True, max_length=MAX_LENGTH, limit=TRAIN_SENTENCES
    )
    return {"registry": registry, "tokenizer": tokenizer, "sst2": sst2, "train": train,
            "work": tmp_path_factory.mktemp("distill-real")}  # fmt: skip


def dev_accuracy(setup: dict[str, Any], model: torch.nn.Module) -> float:
    metrics = setup["sst2"].evaluate(model, setup["tokenizer"], "dev", batch_size=128, max_length=MAX_LENGTH)
    return float(metrics["accuracy"])


def finetune_teacher(setup: dict[str, Any], minilm_path: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    from compresskit.training import Trainer, TrainingConfig

    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path, **setup["sst2"].model_kwargs())
    config = TrainingConfig(learning_rate=1e-4, num_epochs=1, progress=False)
    Trainer(teacher, config, setup["train"], lambda m, b: {"loss": m(**b).loss},
            output_dir=setup["work"] / "teacher").train()  # fmt: skip
    return teacher.eval()


def test_two_stage_kd_recovers_accuracy_after_kronecker_decomposition(
    setup: dict[str, Any], minilm_path: Path
) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    from compresskit.walker import decompose

    registry = setup["registry"]
    teacher = finetune_teacher(setup, minilm_path)
    student = AutoModelForSequenceClassification.from_pretrained(minilm_path, **setup["sst2"].model_kwargs())
    decompose(student, "kroneckerbert8", registry=registry)
    before = dev_accuracy(setup, student)

    text = registry.create("task", "text", {"block_size": MAX_LENGTH})
    stage1 = text.dataloader("train", setup["tokenizer"], batch_size=32, shuffle=True,
                             max_length=MAX_LENGTH, limit=STAGE1_BLOCKS)  # fmt: skip
    options = {
        "stage1": {
            "losses": INTERMEDIATE,
            "training": {"learning_rate": 5e-4, "num_epochs": 2, "progress": False, "log_every": 2},
        },
        "stage2": {
            "losses": {**INTERMEDIATE, "logit_soft_ce": 1.0, "task": 1.0},
            "training": {"learning_rate": 5e-4, "num_epochs": 2, "progress": False, "log_every": 5},
        },
    }
    result = registry.create("distiller", "two_stage_kd", options).distill(
        student,
        {"pretrained": AutoModel.from_pretrained(minilm_path), "finetuned": teacher},
        {"stage1": stage1, "stage2": setup["train"]},
        output_dir=setup["work"] / "kd",
        registry=registry,
    )
    after = dev_accuracy(setup, student)

    for term in ("hidden_mse", "attention_score_mse", "embedding_mse"):
        values = result["stage1"]["losses"][term]
        assert values[-1] < values[0], (term, values)
    print(f"SST-2 dev accuracy: after decomposition {before:.4f}, after two-stage KD {after:.4f}")
    assert after >= max(before + 0.10, 0.70), (before, after)
