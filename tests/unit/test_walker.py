"""The walker: selection, planning (pure), build (atomic), swap, and its error messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

import compresskit
from compresskit import Cost, DecompositionError, hookimpl
from compresskit.errors import ConfigError, NoMatchingModulesError
from compresskit.registry import Registry
from compresskit.tiny_models import main_output, tiny_inputs, tiny_model
from compresskit.walker import TiedOutputProjection, decompose, plan_compression

LINEARS = [
    {"name": "lin", "types": ["linear_except_head"], "decomposition": "low_rank", "options": {"rank": 4}}
]


class _Copy(compresskit.Decomposition):
    """Test-only: a dense copy; ``fail_on`` makes build raise, ``alias`` returns the old weight."""

    name = "copy_for_tests"
    module_types = ("Linear",)

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        return {"name": name}

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        if spec["name"].endswith("value"):
            raise RuntimeError("simulated failure")
        new = nn.Linear(module.in_features, module.out_features)
        if spec["name"].endswith("key"):
            new.weight = module.weight  # aliases the old module: must be refused
        return new

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        return Cost(0, 0)


class _TestPlugin:
    @hookimpl
    def compresskit_register_decompositions(self) -> list[type[compresskit.Decomposition]]:
        return [_Copy]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins(compresskit.get_plugin_manager([_TestPlugin()]))


def _snapshot(model: nn.Module) -> tuple[list[tuple[str, int]], dict[str, torch.Tensor]]:
    modules = [(n, id(m)) for n, m in model.named_modules()]
    return modules, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(
    model: nn.Module, snapshot: tuple[list[tuple[str, int]], dict[str, torch.Tensor]]
) -> None:
    modules, state = snapshot
    assert [(n, id(m)) for n, m in model.named_modules()] == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_plan_is_pure_and_predicts_the_parameter_drop(registry: Registry) -> None:
    model = tiny_model("bert")
    before = _snapshot(model)
    plan = plan_compression(model, LINEARS, registry=registry)
    _assert_unchanged(model, before)
    # 2 layers x (q, k, v, attn-out, ffn-in, ffn-out) + pooler; the classifier is the head
    assert len(plan.modules) == 13
    assert [e.name for e in plan.excluded] == ["classifier"]
    assert plan.excluded[0].reason == "output head"
    decompose(model, LINEARS, registry=registry)
    assert sum(p.numel() for p in model.parameters()) == plan.model_params_after < plan.model_params


def test_plan_works_on_a_meta_device_model_but_build_refuses(registry: Registry) -> None:
    import transformers

    from compresskit.tiny_models import tiny_config

    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(tiny_config("bert"))
    plan = plan_compression(model, LINEARS, registry=registry)
    assert len(plan.modules) == 13
    with pytest.raises(
        DecompositionError, match=r"encoder\.layer\.0\.attention\.self\.query\.weight is on the meta"
    ):
        decompose(model, LINEARS, registry=registry)


def test_plan_round_trips_through_json(registry: Registry) -> None:
    plan = plan_compression(tiny_model("bert"), LINEARS, registry=registry)
    again = compresskit.CompressionPlan.from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict()
    assert plan.modules[0].plugin["plugin"] == "compresskit_plugins.low_rank"


def test_first_matching_group_claims_a_module(registry: Registry) -> None:
    groups = [
        {"name": "q", "names": ["query"], "decomposition": "low_rank", "options": {"rank": 2}},
        {"name": "rest", "types": ["Linear"], "names": r".*attention.*", "decomposition": "low_rank"},
    ]
    plan = plan_compression(tiny_model("bert"), groups, registry=registry)
    by_name = {m.name: m for m in plan.modules}
    assert by_name["bert.encoder.layer.0.attention.self.query"].group == "q"
    assert by_name["bert.encoder.layer.0.attention.self.query"].spec["rank"] == 2
    assert by_name["bert.encoder.layer.0.attention.self.key"].group == "rest"
    assert len(plan.modules) == 8


def test_exclude_and_overrides(registry: Registry) -> None:
    group = dict(
        LINEARS[0],
        exclude=r".*layer\.1\..*",
        overrides=[{"names": ["intermediate.dense"], "options": {"rank": 3}}],
    )
    plan = plan_compression(tiny_model("bert"), [group], registry=registry)
    names = {m.name: m for m in plan.modules}
    assert not any(".layer.1." in n for n in names)
    assert {e.reason for e in plan.excluded} == {"matched `exclude`", "output head"}
    assert names["bert.encoder.layer.0.intermediate.dense"].spec["rank"] == 3
    assert names["bert.encoder.layer.0.output.dense"].spec["rank"] == 4


def test_a_module_that_cannot_be_decomposed_is_skipped_with_the_reason(registry: Registry) -> None:
    group = dict(LINEARS[0], options={"rank": 33})
    plan = plan_compression(tiny_model("bert"), [group], registry=registry)
    assert plan.modules == ()
    assert len(plan.skipped) == 13
    assert all("rank 33" in s.reason and "1..32" in s.reason for s in plan.skipped)


def test_names_matching_nothing_show_the_closest_names(registry: Registry) -> None:
    groups = [{"name": "g", "names": ["qeury"], "decomposition": "low_rank"}]
    with pytest.raises(NoMatchingModulesError, match=r"'qeury' matched no module.*query"):
        plan_compression(tiny_model("bert"), groups, registry=registry)


def test_types_matching_nothing_list_the_types_present(registry: Registry) -> None:
    groups = [{"name": "g", "types": ["Conv1D"], "decomposition": "low_rank"}]
    with pytest.raises(NoMatchingModulesError, match=r"'Conv1D' matched no module.*types present.*Linear"):
        plan_compression(tiny_model("bert"), groups, registry=registry)


def test_override_matching_nothing_is_an_error(registry: Registry) -> None:
    group = dict(LINEARS[0], overrides=[{"names": ["word_embeddings"], "options": {"rank": 1}}])
    with pytest.raises(NoMatchingModulesError, match=r"overrides\[0\]\.names"):
        plan_compression(tiny_model("bert"), [group], registry=registry)


def test_unknown_option_key_is_a_config_error_with_the_group_path(registry: Registry) -> None:
    group = dict(LINEARS[0], options={"rnak": 2})
    with pytest.raises(
        ConfigError, match=r"groups\[0\]\.options\.rnak: unknown option\. Did you mean 'rank'"
    ):
        plan_compression(tiny_model("bert"), [group], registry=registry)


def test_type_the_decomposition_cannot_handle_names_the_module(registry: Registry) -> None:
    groups = [{"types": ["LayerNorm"], "decomposition": "low_rank"}]
    with pytest.raises(DecompositionError, match=r"bert\.embeddings\.LayerNorm' \(LayerNorm\).*handles only"):
        plan_compression(tiny_model("bert"), groups, registry=registry)


def test_failed_build_leaves_the_model_untouched(registry: Registry) -> None:
    model = tiny_model("bert")
    before = _snapshot(model)
    groups = [{"names": ["query", "value"], "decomposition": "copy_for_tests"}]
    with pytest.raises(
        DecompositionError, match=r"layer\.0\.attention\.self\.value.*simulated failure.*unchanged"
    ):
        decompose(model, groups, registry=registry)
    _assert_unchanged(model, before)


def test_replacement_aliasing_the_old_weight_is_refused(registry: Registry) -> None:
    model = tiny_model("bert")
    before = _snapshot(model)
    with pytest.raises(DecompositionError, match=r"self\.key.*shares memory"):
        decompose(model, [{"names": ["key"], "decomposition": "copy_for_tests"}], registry=registry)
    _assert_unchanged(model, before)


def test_deepspeed_sharded_parameter_is_a_clear_error(registry: Registry) -> None:
    model = tiny_model("bert")
    model.bert.encoder.layer[0].attention.self.query.weight.ds_shape = torch.Size([32, 32])  # type: ignore[attr-defined]
    with pytest.raises(DecompositionError, match=r"self\.query\.weight is sharded by DeepSpeed"):
        plan_compression(model, LINEARS, registry=registry)


def test_one_module_under_two_names_is_replaced_once_and_set_at_both(registry: Registry) -> None:
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    x = torch.randn(3, 6)
    expected = model(x)
    report = decompose(
        model, [{"types": ["Linear"], "decomposition": "low_rank", "options": {"rank": 6}}], registry=registry
    )
    assert [(m.name, m.aliases) for m in report.plan.modules] == [("0", ("2",))]
    assert model[0] is model[2] and type(model[0]).__name__ == "LowRankLinear"
    torch.testing.assert_close(model(x), expected)


def test_subclass_with_its_own_forward_is_skipped(registry: Registry) -> None:
    class Scaled(nn.Embedding):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) * 2.0

    model = nn.Sequential(Scaled(10, 4))
    plan = plan_compression(model, [{"types": ["Embedding"], "decomposition": "low_rank"}], registry=registry)
    assert plan.modules == ()
    assert "Scaled overrides Embedding.forward" in plan.skipped[0].reason


def test_tied_embedding_is_refused_unless_allowed(registry: Registry) -> None:
    model = tiny_model("gpt2")
    groups: list[dict[str, Any]] = [
        {"name": "emb", "names": ["wte"], "decomposition": "low_rank", "options": {"rank": 32}}
    ]
    plan = plan_compression(model, groups, registry=registry)
    assert plan.modules == ()
    assert "tied with lm_head" in plan.skipped[0].reason and "allow_tied = true" in plan.skipped[0].reason


def test_tied_head_selected_directly_points_to_the_embedding(registry: Registry) -> None:
    groups = [{"names": ["lm_head"], "types": ["Linear"], "decomposition": "low_rank", "allow_tied": True}]
    plan = plan_compression(tiny_model("gpt2"), groups, registry=registry)
    assert plan.modules == ()
    assert "tied to the input embedding 'transformer.wte'" in plan.skipped[0].reason


def test_allowed_tied_embedding_stays_tied_with_the_head(registry: Registry) -> None:
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    expected = main_output(model, inputs)
    groups = [{"names": ["wte"], "decomposition": "low_rank", "options": {"rank": 32}, "allow_tied": True}]
    report = decompose(model, groups, registry=registry)
    assert report.plan.modules[0].tied_outputs == ("lm_head",)
    head = model.lm_head
    assert isinstance(head, TiedOutputProjection) and head.source is model.transformer.wte
    torch.testing.assert_close(main_output(model, inputs), expected, atol=1e-5, rtol=1e-4)
    # one set of factors: a gradient step through the logits moves the embedding too
    loss = model(**inputs).logits.sum()
    loss.backward()
    assert model.transformer.wte.left.grad is not None
    assert sum(p.numel() for p in model.parameters()) == report.plan.model_params_after
