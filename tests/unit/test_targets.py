"""Group / selector parsing and matching (compresskit.targets)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from compresskit.errors import ConfigError, UnknownNameError
from compresskit.targets import (
    head_names,
    matches_types,
    parse_group,
    parse_selector,
    parse_step,
    read_step_file,
)

LAYER = "encoder.layer.0.attention.self.query"


def test_list_selector_matches_exact_names_and_dotted_suffixes_only() -> None:
    selector = parse_selector(["query", "encoder.layer.1.output.dense"], "names")
    assert selector.matches([LAYER])
    assert selector.matches(["encoder.layer.1.output.dense"])
    assert not selector.matches(["encoder.layer.0.attention.self.query_proj"])  # not a dotted suffix
    assert not selector.matches(["encoder.layer.11.output.dense"])
    assert not selector.matches(["xquery"])


def test_string_selector_is_a_full_regex() -> None:
    selector = parse_selector(r"encoder\.layer\.\d+\.attention\..*", "names")
    assert selector.matches([LAYER])
    assert not selector.matches(["bert." + LAYER])  # fullmatch, not search


def test_selector_matches_if_any_alias_matches() -> None:
    selector = parse_selector(["embed_tokens"], "names")
    assert selector.matches(["shared", "encoder.embed_tokens"])


def test_unmatched_reports_each_list_entry_that_matches_nothing() -> None:
    selector = parse_selector(["query", "qeury"], "names")
    assert selector.unmatched([LAYER, "encoder.layer.0.attention.self.key"]) == ["qeury"]


def test_invalid_regex_and_wrong_type_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"groups\[0\]\.names: invalid regular expression"):
        parse_selector("encoder.(", "groups[0].names")
    with pytest.raises(ConfigError, match="expected a regular expression"):
        parse_selector(3, "groups[0].names")


def test_unknown_group_key_has_path_and_did_you_mean() -> None:
    with pytest.raises(
        ConfigError, match=r"steps\[0\]\.groups\[1\]\.exclued: unknown key\. Did you mean 'exclude'"
    ):
        parse_group({"decomposition": "low_rank", "exclued": ["x"]}, "steps[0].groups[1]")


def test_group_needs_a_decomposition_unless_the_step_gives_a_default() -> None:
    with pytest.raises(ConfigError, match="decomposition: missing"):
        parse_group({"types": ["Linear"]}, "g")
    assert (
        parse_group({"types": ["Linear"]}, "g", default_decomposition="low_rank").decomposition == "low_rank"
    )


def test_overrides_apply_in_order_and_later_ones_win() -> None:
    group = parse_group(
        {
            "decomposition": "low_rank",
            "options": {"rank": 8, "svd": "torch"},
            "overrides": [
                {"names": r".*attention.*", "options": {"rank": 4}},
                {"names": ["query"], "options": {"rank": 2}},
            ],
        },
        "g",
    )
    assert group.options_for([LAYER]) == {"rank": 2, "svd": "torch"}
    assert group.options_for(["encoder.layer.0.attention.output.dense"]) == {"rank": 4, "svd": "torch"}
    assert group.options_for(["encoder.layer.0.output.dense"]) == {"rank": 8, "svd": "torch"}


def test_override_without_names_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"overrides\[0\]\.names"):
        parse_group({"decomposition": "low_rank", "overrides": [{"options": {"rank": 1}}]}, "g")


def test_linear_except_head_expands_to_linear_and_conv1d() -> None:
    group = parse_group({"decomposition": "low_rank", "types": ["linear_except_head"]}, "g")
    assert group.except_head
    assert set(group.type_names(("Embedding",))) == {"Linear", "Conv1D"}
    assert parse_group({"decomposition": "x"}, "g").type_names(("Embedding",)) == ("Embedding",)


def test_types_match_along_the_mro() -> None:
    class MyLinear(nn.Linear):
        pass

    assert matches_types(MyLinear(2, 2), ["Linear"])
    assert not matches_types(nn.Embedding(3, 2), ["Linear"])


def test_heads_are_the_output_embeddings_and_everything_outside_the_base_model() -> None:
    class Model(nn.Module):
        base_model_prefix = "body"

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
            self.decoder = nn.Linear(4, 9)
            self.scorer = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))  # no conventional head name

        def get_output_embeddings(self) -> nn.Module:
            return self.body[1]

    assert head_names(Model()) == {"body.1", "decoder", "scorer", "scorer.0", "scorer.1"}
    Model.base_model_prefix = "missing"  # its own base: only the output embeddings are a head
    assert head_names(Model()) == {"body.1"}


def test_step_expands_preset_groups_before_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from compresskit.registry import Registry

    groups = parse_step(
        {
            "kind": "decompose",
            "preset": "kroneckerbert21",
            "groups": [{"decomposition": "low_rank", "name": "mine"}],
        },
        registry=Registry.from_plugins(),
    )
    assert groups[-1].name == "mine"
    assert len(groups) > 1 and all(g.decomposition == "kronecker" for g in groups[:-1])


def test_step_with_unknown_preset_lists_presets() -> None:
    from compresskit.registry import Registry

    with pytest.raises(UnknownNameError, match="kroneckerbert21"):
        parse_step({"preset": "kroneckerbert2"}, registry=Registry.from_plugins())


def test_step_without_groups_or_preset_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs `preset` or at least one"):
        parse_step({"kind": "decompose"})


def test_read_step_file_accepts_steps_or_top_level_groups(tmp_path: Path) -> None:
    steps = tmp_path / "steps.toml"
    steps.write_text(
        '[model]\nteacher = "default"\n[[steps]]\nkind = "decompose"\ndecomposition = "low_rank"\n'
        '[[steps.groups]]\nnames = ["query"]\n[[steps]]\nkind = "distill"\n'
    )
    assert read_step_file(steps)["groups"] == [{"names": ["query"]}]
    top = tmp_path / "top.toml"
    top.write_text('decomposition = "low_rank"\n[[groups]]\ntypes = ["Linear"]\n')
    assert read_step_file(top) == {"decomposition": "low_rank", "groups": [{"types": ["Linear"]}]}
    empty = tmp_path / "empty.toml"
    empty.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match=r"empty\.toml: found neither"):
        read_step_file(empty)
