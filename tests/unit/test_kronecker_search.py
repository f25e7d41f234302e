"""Shape search: whole-model ratio / budgets on BERT-base, MiniLM-L6 and GPT-2 shapes (meta models)."""

from __future__ import annotations

import pytest
import torch
from compresskit_plugins.kronecker import Matrix, factor_pairs, model_matrices, search_shapes
from compresskit_plugins.kronecker.search import linear_candidates
from compresskit_plugins.kronecker.shapes import kronecker_flops, kronecker_params
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from compresskit import DecompositionError


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        if name == "bert-base":
            return BertModel(BertConfig())
        if name == "minilm-l6":
            return BertModel(BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6))
        return GPT2LMHeadModel(GPT2Config())


@pytest.fixture(scope="module", params=["bert-base", "minilm-l6", "gpt2"])
def shapes(request: pytest.FixtureRequest) -> tuple[str, list[Matrix], int, int]:
    model = _meta(request.param)
    return (request.param, *model_matrices(model, exclude=("pooler.dense",)))


@pytest.mark.parametrize("ratio", [3.0, 8.0, 21.0])
def test_the_requested_ratio_is_reached_within_5_percent(shapes, ratio: float) -> None:
    name, matrices, untouched, untouched_flops = shapes
    result = search_shapes(
        matrices, target_ratio=ratio, untouched_params=untouched, untouched_flops=untouched_flops
    )
    assert abs(result.ratio - ratio) / ratio <= 0.05, (name, result.ratio)
    # the totals are the sum of what was chosen, priced independently here
    priced = untouched
    for choice, matrix in zip(result.choices, matrices, strict=True):
        if choice.options is None:
            priced += matrix.m * matrix.n
        elif matrix.kind == "embedding":
            k = choice.options["embedding_n"]
            priced += choice.options["num_terms"] * (matrix.m * matrix.n // k + k)
        else:
            a = tuple(choice.options["a_shape"])
            b = (matrix.m // a[0], matrix.n // a[1])
            priced += kronecker_params(a, b, choice.options["num_terms"])
    assert result.params == priced
    assert result.dense_params == untouched + sum(m.m * m.n for m in matrices)


def test_gpt2_conv1d_shapes_and_the_tied_head() -> None:
    matrices, _, untouched_flops = model_matrices(_meta("gpt2"))
    by_name = {m.name: m for m in matrices}
    assert (by_name["transformer.h.0.attn.c_attn"].m, by_name["transformer.h.0.attn.c_attn"].n) == (2304, 768)
    assert "lm_head" not in by_name  # tied to wte: selected once, its FLOPs stay as untouched
    assert untouched_flops == (2 * 768 - 1) * 50257 * 128


def test_a_flop_budget_is_met() -> None:
    matrices, untouched, _ = model_matrices(_meta("bert-base"), exclude=("pooler.dense",))
    dense = sum((2 * m.n - 1) * m.m * 128 for m in matrices if m.kind == "linear")
    result = search_shapes(matrices, flop_budget=dense // 4, untouched_params=untouched)
    assert abs(result.flops - dense / 4) / (dense / 4) <= 0.05
    assert all(c.options is None for c in result.choices if c.name.endswith("embeddings"))


def test_a_parameter_budget_is_met() -> None:
    matrices, untouched, _ = model_matrices(_meta("minilm-l6"))
    result = search_shapes(matrices, param_budget=3_000_000, untouched_params=untouched)
    assert abs(result.params - 3_000_000) / 3_000_000 <= 0.05


def test_a_prime_dimension_is_reported_and_kept_dense() -> None:
    matrices = [Matrix("ffn.in", 37, 32), Matrix("attn.q", 32, 32)]
    result = search_shapes(matrices, target_ratio=1.5)
    skipped = result.choices[0]
    assert skipped.options is None and "output dimension 37 is prime" in (skipped.reason or "")
    assert result.choices[1].options is not None


def test_an_unreachable_target_is_an_error() -> None:
    with pytest.raises(DecompositionError, match="cannot be met"):
        search_shapes([Matrix("q", 4, 4)], target_ratio=50.0, untouched_params=1000)
    with pytest.raises(
        DecompositionError, match="give exactly one of target_ratio, param_budget, flop_budget"
    ):
        search_shapes([Matrix("q", 4, 4)], target_ratio=2.0, param_budget=10)


def test_candidates_come_from_divisor_pairs() -> None:
    candidates = linear_candidates(12, 8, terms=1)
    shapes = {c.a_shape for c in candidates}
    expected = {(r, c) for r, _ in factor_pairs(12) for c, _ in factor_pairs(8)} - {(1, 1), (12, 8)}
    assert {s for s in expected if kronecker_params(s, (12 // s[0], 8 // s[1])) < 96} == shapes
    for c in candidates:
        assert c.flops == kronecker_flops(c.a_shape, c.b_shape, 1)


def test_groups_feed_the_kronecker_decomposition() -> None:
    from compresskit.registry import Registry

    registry = Registry.from_plugins()
    matrices = [Matrix("attn.q", 32, 32), Matrix("wte", 99, 32, "embedding")]
    result = search_shapes(matrices, target_ratio=4.0)
    for group in result.groups():
        kron = registry.create("decomposition", group["decomposition"], group["options"])
        matrix = next(m for m in matrices if m.name in group["names"])
        module = (
            torch.nn.Embedding(matrix.m, matrix.n)
            if matrix.kind == "embedding"
            else torch.nn.Linear(matrix.n, matrix.m)
        )
        kron.make_spec(module, matrix.name)


def test_error_objective_picks_the_structure_hidden_in_the_weights() -> None:
    torch.manual_seed(0)
    exact = torch.kron(torch.randn(4, 2), torch.randn(4, 8))  # 16×16 = (4×2)⊗(4×8): 40 weights
    noise = torch.randn(16, 16)
    matrices = [Matrix("structured", 16, 16, weight=exact), Matrix("noise", 16, 16, weight=noise)]
    result = search_shapes(matrices, target_ratio=6.4, objective="error", max_terms=1)
    assert result.choices[0].options == {"a_shape": [4, 2], "num_terms": 1}
    with pytest.raises(DecompositionError, match="objective 'error' needs the real weights"):
        search_shapes([Matrix("q", 16, 16)], target_ratio=6.4, objective="error")
