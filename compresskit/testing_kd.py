"""The contract suites of distillers and losses: :func:`check_distiller` and :func:`check_loss`.

Use them from a plugin's own tests, as :func:`compresskit.testing.check_decomposition`::

    from compresskit.testing import check_distiller, check_loss

    def test_my_distiller_meets_the_contract(tmp_path):
        check_distiller(MyDistiller, options={"losses": {"hidden_mse": 1.0}}, output_dir=tmp_path)

    def test_my_loss_meets_the_contract():
        check_loss(MyLoss)

Both run on tiny seeded BERT models (hidden 32, 2 layers, vocabulary 99) on the CPU in about a second.
Every failed property raises ``AssertionError`` naming the component and the property.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from compresskit.capture import model_outputs
from compresskit.distillation import OUTPUT_NAMES, Distiller, Loss, LossInputs, StageOptions, StagePlan
from compresskit.errors import ConfigError
from compresskit.kd_engine import plan_losses
from compresskit.registry import Registry

__all__ = ["check_distiller", "check_loss", "tiny_bert"]

#: Problem type → number of labels of the tiny model's head (``None``: a masked-LM head).
_HEADS: dict[str, int | None] = {
    "single_label_classification": 2,
    "regression": 1,
    "language_modeling": None,
}
_TOKENS, _BATCH = 6, 4


def tiny_bert(problem_type: str = "single_label_classification", seed: int = 0) -> nn.Module:
    """A seeded tiny BERT with the head of ``problem_type`` (sequence classifier or masked LM), in eval
    mode (no dropout), so two forward passes agree."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    labels = _HEADS.get(problem_type, 2)
    config = BertConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32,
    )  # fmt: skip
    config.num_labels = labels or 2
    if problem_type == "regression":
        config.problem_type = "regression"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForMaskedLM(config) if labels is None else BertForSequenceClassification(config)
    return model.eval()


def _batch(problem_type: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (_BATCH, _TOKENS), generator=generator)
    mask = torch.ones(_BATCH, _TOKENS, dtype=torch.long)
    mask[1, -2:] = 0  # one padded row
    labels: torch.Tensor
    if problem_type == "regression":
        labels = torch.rand(_BATCH, generator=generator) * 5
    elif problem_type == "language_modeling":
        labels = torch.full((_BATCH, _TOKENS), -100)
        labels[:, 1] = input_ids[:, 1]
    else:
        labels = torch.randint(0, 2, (_BATCH,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- losses


def check_loss(
    loss: Loss | type[Loss],
    *,
    options: Mapping[str, Any] | None = None,
    problem_type: str | None = None,
) -> None:
    """Check the loss contract on a tiny student and teacher; raise AssertionError if a property fails.

    ``loss`` is a class (instantiated with ``options``) or an instance; ``problem_type`` defaults to
    the first the loss declares (``problem_types``), else single-label classification. Checked:
    ``requires`` names only :data:`~compresskit.distillation.OUTPUT_NAMES`; the value is a finite
    float32 scalar, the same on a second call; gradients reach the student and are finite; the
    ``weight`` option (when the options have one) scales the value linearly; a teacher loss is no larger
    for a student equal to the teacher than for another student; :meth:`Loss.check` refuses a model
    lacking a required output with :class:`ConfigError`.
    """
    instance = loss(dict(options or {})) if isinstance(loss, type) else loss
    name = instance.name or type(instance).__name__
    declared = sorted(instance.problem_types or ())
    kind = problem_type or (declared[0] if declared else "single_label_classification")
    unknown = sorted(instance.requires - set(OUTPUT_NAMES))
    assert not unknown, f"loss {name}: requires names outputs that do not exist: {unknown}"
    student, teacher = tiny_bert(kind, seed=1), tiny_bert(kind, seed=0)
    value = _loss_value(instance, student, teacher, kind, grad=True)
    assert value.dim() == 0, f"loss {name}: returned shape {tuple(value.shape)}, expected a scalar"
    assert value.dtype == torch.float32, f"loss {name}: returned {value.dtype}, expected float32"
    assert math.isfinite(float(value)), f"loss {name}: returned {float(value)}"
    assert value.requires_grad, f"loss {name}: the value does not depend on the student (no gradient)"
    value.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads, f"loss {name}: no student parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads), f"loss {name}: a student gradient is not finite"
    again = _loss_value(instance, student, teacher, kind, grad=False)
    assert torch.allclose(value.detach(), again), f"loss {name}: two calls on the same batch differ"
    _check_weight(instance, student, teacher, kind, float(again))
    if instance.needs_teacher:
        matched = float(_loss_value(instance, copy.deepcopy(teacher), teacher, kind, grad=False))
        assert matched <= float(again) + 1e-5, (
            f"loss {name}: a student equal to the teacher scores {matched:.6g}, more than another "
            f"student ({float(again):.6g}); a distillation loss must be smallest when the outputs match"
        )
    _check_refuses_missing_outputs(instance, name)


def _loss_value(loss: Loss, student: nn.Module, teacher: nn.Module, kind: str, *, grad: bool) -> torch.Tensor:
    plan = plan_losses(student, teacher, [loss], "auto", cache=False, where=f"check_loss({loss.name})")
    batch = _batch(kind)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        with torch.set_grad_enabled(grad):
            ours = model_outputs(student, inputs, parts=plan.student_parts, attention_scores=plan.scores)
        with torch.no_grad():
            theirs = model_outputs(teacher, inputs, parts=plan.teacher_parts, attention_scores=plan.scores)
        with torch.set_grad_enabled(grad):
            return loss(LossInputs(ours, theirs, batch, plan.mapping))
    finally:
        plan.restore()


def _check_weight(loss: Loss, student: nn.Module, teacher: nn.Module, kind: str, value: float) -> None:
    options = loss.options
    if not (dataclasses.is_dataclass(options) and hasattr(options, "weight")):
        return
    doubled = copy.copy(loss)
    doubled.options = dataclasses.replace(options, weight=2.0 * float(options.weight))  # type: ignore[type-var]
    twice = float(_loss_value(doubled, student, teacher, kind, grad=False))
    assert math.isclose(twice, 2.0 * value, rel_tol=1e-4, abs_tol=1e-6), (
        f"loss {loss.name}: doubling the weight gave {twice:.6g}, expected 2 × {value:.6g}"
    )


def _check_refuses_missing_outputs(loss: Loss, name: str) -> None:
    for output in sorted(loss.requires):
        try:
            loss.check(frozenset(OUTPUT_NAMES) - {output}, model="student")
        except ConfigError:
            continue
        raise AssertionError(f"loss {name}: check() accepted a model without its required {output!r}")


# --------------------------------------------------------------------------- distillers


def check_distiller(
    distiller: Distiller | type[Distiller],
    *,
    output_dir: str | Path,
    options: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    problem_type: str = "single_label_classification",
) -> None:
    """Check the distiller contract with tiny models; raise AssertionError if a property fails.

    ``distiller`` is a class (instantiated with ``options``) or an instance; ``output_dir`` receives
    its training folders. Checked: :meth:`Distiller.stages` declares a non-empty list of
    :class:`StagePlan` with distinct names and :class:`StageOptions`, the same on a second call;
    :meth:`Distiller.check_student` accepts shape-only (``meta``) copies of the models; :meth:`distill`,
    given exactly the teachers and data the stages name, trains the student (its weights change, the
    teachers' do not), honours the run ``defaults`` (``max_steps = 2``: each stage that reports
    ``steps`` took two) and returns a JSON-able mapping with an entry per stage.
    """
    registry = registry or Registry.from_plugins()
    instance = distiller(dict(options or {})) if isinstance(distiller, type) else distiller
    name = instance.name or type(instance).__name__
    plans = instance.stages(problem_type)
    _check_plans(name, plans)
    assert plans == instance.stages(problem_type), f"distiller {name}: stages() differs between calls"
    student = tiny_bert(problem_type, seed=1)
    teachers = {plan.teacher: tiny_bert(problem_type, seed=0) for plan in plans}
    meta_student = copy.deepcopy(student).to("meta")
    meta_teachers = {key: copy.deepcopy(model).to("meta") for key, model in teachers.items()}
    instance.check_student(meta_student, meta_teachers, registry=registry, where=name)
    data = {plan.data: _loader(problem_type) for plan in plans}
    before = {key: value.clone() for key, value in student.state_dict().items()}
    frozen = {key: copy.deepcopy(model.state_dict()) for key, model in teachers.items()}
    defaults = {"max_steps": 2, "progress": False, "cpu": True, "seed": 0}
    result = instance.distill(
        student, teachers, data, output_dir=Path(output_dir), registry=registry, defaults=defaults
    )
    assert isinstance(result, Mapping), f"distiller {name}: distill() returned {type(result).__name__}"
    json.dumps(result)  # raises TypeError when not JSON-able
    missing = [plan.name for plan in plans if plan.name not in result]
    assert not missing, f"distiller {name}: the result has no entry for stages {missing}"
    for plan in plans:
        entry = result[plan.name]
        if isinstance(entry, Mapping) and "steps" in entry:
            assert entry["steps"] == 2, f"distiller {name}: stage {plan.name} ignored defaults.max_steps"
    changed = any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert changed, f"distiller {name}: distill() left the student's weights unchanged"
    for key, model in teachers.items():
        same = all(torch.equal(frozen[key][k], v) for k, v in model.state_dict().items())
        assert same, f"distiller {name}: distill() changed teacher {key!r}"


def _check_plans(name: str, plans: Any) -> None:
    assert isinstance(plans, list) and plans, f"distiller {name}: stages() must return a non-empty list"
    for plan in plans:
        assert isinstance(plan, StagePlan), f"distiller {name}: stages() returned {type(plan).__name__}"
        assert isinstance(plan.options, StageOptions), f"distiller {name}: stage {plan.name} options"
    names = [plan.name for plan in plans]
    assert len(set(names)) == len(names), f"distiller {name}: stage names repeat: {names}"


def _loader(problem_type: str) -> DataLoader:
    rows = []
    for seed in range(2):
        batch = _batch(problem_type, seed)
        rows += [{key: value[i] for key, value in batch.items()} for i in range(_BATCH)]
    return DataLoader(rows, batch_size=_BATCH, shuffle=False)  # type: ignore[arg-type]  # a list is a map-style dataset
