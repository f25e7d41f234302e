"""Golden values of every built-in loss on fixed tensors, computed by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from compresskit.distillation import DistillationOutputs, LayerMapping, LossInputs
from compresskit.errors import ConfigError
from compresskit.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def make(registry: Registry, name: str, **options: Any) -> Any:
    return registry.create("loss", name, options)


def run(loss: Any, student: DistillationOutputs, teacher: DistillationOutputs, **batch: Any) -> float:
    layers = student.num_layers or 1
    mapping = LayerMapping(tuple((i, i) for i in range(1, layers + 1)))
    return float(loss(LossInputs(student, teacher, batch, mapping)))


def hidden(*values: float) -> tuple[torch.Tensor, ...]:
    return tuple(torch.full((1, 2, 3), float(v)) for v in values)


def test_embedding_mse(registry: Registry) -> None:
    s, t = DistillationOutputs(hidden_states=hidden(0, 0)), DistillationOutputs(hidden_states=hidden(2, 9))
    assert run(make(registry, "embedding_mse"), s, t) == pytest.approx(4.0)


def test_hidden_mse_sums_layers_and_applies_weight(registry: Registry) -> None:
    s = DistillationOutputs(hidden_states=hidden(0, 0, 0))
    t = DistillationOutputs(hidden_states=hidden(7, 1, 3))  # layer 0 is the embedding: not counted
    assert run(make(registry, "hidden_mse"), s, t) == pytest.approx(1 + 9)
    assert run(make(registry, "hidden_mse", weight=0.5), s, t) == pytest.approx(5.0)
    assert run(make(registry, "hidden_mse", layers=[2]), s, t) == pytest.approx(9.0)


def test_hidden_cosine(registry: Registry) -> None:
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # token 0 orthogonal (distance 1), token 1 equal (0)
    s = DistillationOutputs(hidden_states=(a, a))
    t = DistillationOutputs(hidden_states=(a, b))
    assert run(make(registry, "hidden_cosine"), s, t) == pytest.approx(0.5)
    masked = DistillationOutputs(hidden_states=(a, a), attention_mask=torch.tensor([[1, 0]]))
    assert run(make(registry, "hidden_cosine"), masked, t) == pytest.approx(1.0)


def scores_outputs(value: torch.Tensor, mask: torch.Tensor) -> DistillationOutputs:
    return DistillationOutputs(hidden_states=(value, value), attention_scores=(value,), attention_mask=mask)


def test_attention_score_mse_ignores_padding(registry: Registry) -> None:
    mask = torch.tensor([[1, 1, 0]])
    student = torch.zeros(1, 2, 3, 3)  # batch 1, 2 heads, 3 tokens (the last is padding)
    teacher = torch.zeros(1, 2, 3, 3)
    teacher[0, 0, :2, :2] = 2.0  # head 0: every real pair differs by 2
    loss = make(registry, "attention_score_mse")
    expected = (4 * 4) / (2 * 3 * 3)  # 4 real pairs of head 0 with error 4, mean over all 18 entries
    assert run(loss, scores_outputs(student, mask), scores_outputs(teacher, mask)) == pytest.approx(expected)
    teacher[0, :, 2, :] = 100.0  # padding query row
    teacher[0, :, :, 2] = -100.0  # padding key column
    assert run(loss, scores_outputs(student, mask), scores_outputs(teacher, mask)) == pytest.approx(expected)


def test_attention_kl(registry: Registry) -> None:
    mask = torch.tensor([[1, 1, 0]])
    student = torch.zeros(1, 1, 3, 3)  # uniform over the two real keys
    teacher = torch.zeros(1, 1, 3, 3)
    teacher[0, 0, 0, 0] = math.log(3.0)  # row 0: p = (3/4, 1/4); row 1 uniform
    teacher[0, 0, :, 2] = 50.0  # the padding key must be ignored
    p = (0.75, 0.25)
    kl_row0 = sum(pi * math.log(pi / 0.5) for pi in p)
    expected = kl_row0 / 2  # mean over the 2 real query rows
    loss = make(registry, "attention_kl")
    assert run(loss, scores_outputs(student, mask), scores_outputs(teacher, mask)) == pytest.approx(expected)


def logits(*rows: list[float]) -> DistillationOutputs:
    return DistillationOutputs(logits=torch.tensor(rows))


def test_logit_soft_ce(registry: Registry) -> None:
    s, t = logits([0.0, math.log(3.0)]), logits([0.0, 0.0])
    expected = -0.5 * (math.log(0.25) + math.log(0.75))
    assert run(make(registry, "logit_soft_ce"), s, t) == pytest.approx(expected)
    # temperature 2 on logits doubled gives the same distributions
    s2, t2 = logits([0.0, 2 * math.log(3.0)]), logits([0.0, 0.0])
    assert run(make(registry, "logit_soft_ce", temperature=2.0), s2, t2) == pytest.approx(expected)


def test_logit_kl_has_t_squared_factor(registry: Registry) -> None:
    s, t = logits([0.0, 0.0]), logits([0.0, 2 * math.log(3.0)])
    p = (0.25, 0.75)  # teacher at T = 2
    kl = sum(pi * math.log(pi / 0.5) for pi in p)
    assert run(make(registry, "logit_kl", temperature=2.0), s, t) == pytest.approx(4 * kl)


def test_logit_mse(registry: Registry) -> None:
    assert run(make(registry, "logit_mse"), logits([1.0], [3.0]), logits([2.0], [0.0])) == pytest.approx(5.0)


def test_task_loss_cross_entropy_and_regression(registry: Registry) -> None:
    s = logits([0.0, math.log(3.0)])
    value = run(make(registry, "task"), s, DistillationOutputs(), labels=torch.tensor([1]))
    assert value == pytest.approx(-math.log(0.75))
    r = logits([1.0], [4.0])
    value = run(make(registry, "task"), r, DistillationOutputs(), labels=torch.tensor([2.0, 2.0]))
    assert value == pytest.approx((1 + 4) / 2)


def test_mlm_ignores_unmasked_positions(registry: Registry) -> None:
    token_logits = torch.zeros(1, 2, 4)  # uniform over a vocabulary of 4
    s = DistillationOutputs(logits=token_logits)
    value = run(make(registry, "mlm"), s, DistillationOutputs(), labels=torch.tensor([[2, -100]]))
    assert value == pytest.approx(math.log(4.0))


def test_requirements_are_checked_up_front(registry: Registry) -> None:
    loss = make(registry, "attention_score_mse")
    with pytest.raises(ConfigError, match=r"attention_score_mse.*attention_scores of the teacher"):
        loss.check(frozenset({"logits", "hidden_states"}), model="teacher")
    loss.check(frozenset({"attention_scores"}), model="teacher")


def test_bad_options(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="temperature must be positive"):
        make(registry, "logit_kl", temperature=0.0)
    with pytest.raises(ConfigError, match="Did you mean 'weight'"):
        make(registry, "hidden_mse", wieght=2.0)


def test_losses_reduce_in_float32_under_half_precision(registry: Registry) -> None:
    torch.manual_seed(0)
    scores = torch.randn(2, 4, 16, 16) * 170  # a squared-difference sum beyond float16's range
    mask = torch.ones(2, 16, dtype=torch.long)
    zero = torch.zeros_like(scores)
    exact = run(
        make(registry, "attention_score_mse"), scores_outputs(scores, mask), scores_outputs(zero, mask)
    )
    half = run(
        make(registry, "attention_score_mse"),
        scores_outputs(scores.half(), mask),
        scores_outputs(zero.half(), mask),
    )
    assert exact > 1e4 and math.isfinite(half)
    assert half == pytest.approx(exact, rel=1e-3)
    hs = DistillationOutputs(hidden_states=(scores.half(), scores.half()))
    ht = DistillationOutputs(hidden_states=(zero.half(), zero.half()))
    value = make(registry, "hidden_mse")(LossInputs(hs, ht, {}, LayerMapping(((1, 1),))))
    assert value.dtype == torch.float32 and math.isfinite(float(value))


@pytest.mark.parametrize("name", ["logit_soft_ce", "logit_kl"])
def test_softmax_logit_losses_refuse_a_regression_head(registry: Registry, name: str) -> None:
    loss = make(registry, name)
    with pytest.raises(ConfigError, match=r"does not fit a regression model.*logit_mse"):
        loss.check_problem_type("regression", where="steps[1].options.stage2.losses")
    loss.check_problem_type("single_label_classification")
    one_column = DistillationOutputs(logits=torch.tensor([[0.3], [1.2]]))
    with pytest.raises(ConfigError, match="1 column"):
        run(loss, one_column, DistillationOutputs(logits=torch.tensor([[2.0], [-1.0]])))


def test_logit_mse_and_task_loss_fit_regression(registry: Registry) -> None:
    for name in ("logit_mse", "task", "hidden_mse", "attention_score_mse"):
        make(registry, name).check_problem_type("regression")
    with pytest.raises(ConfigError, match="'mlm' does not fit a regression model"):
        make(registry, "mlm").check_problem_type("regression")
    s = DistillationOutputs(logits=torch.tensor([[1.0], [3.0]]))
    t = DistillationOutputs(logits=torch.tensor([[2.0], [1.0]]))
    assert run(make(registry, "logit_mse"), s, t) == pytest.approx((1 + 4) / 2)


def test_a_loss_declaring_an_unknown_problem_type_is_refused_at_class_creation() -> None:
    import compresskit

    with pytest.raises(TypeError, match="'ranking'"):

        class Ranking(compresskit.Loss):
            name = "ranking"
            problem_types = frozenset({"ranking"})
