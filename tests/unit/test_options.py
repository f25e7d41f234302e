"""Component options are validated with the dotted path, a did-you-mean and the expected type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from compresskit import Component, ConfigError


@dataclass(frozen=True)
class _Options:
    a_shape: tuple[int, int] = (2, 2)
    num_terms: int = 1
    method: str = "auto"
    scale: float | None = None


class _Thing(Component):
    name = "thing"
    Options = _Options


def test_unknown_option_names_path_and_suggests() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy\.groups\.ffn\.num_term: unknown option\. Did you mean 'num_terms'"
    ):
        _Thing({"num_term": 2}, where="strategy.groups.ffn")


def test_wrong_type_says_expected_and_found() -> None:
    with pytest.raises(ConfigError, match=r"thing\.num_terms: expected int, found str '2'"):
        _Thing({"num_terms": "2"})


def test_bool_is_not_accepted_as_int() -> None:
    with pytest.raises(ConfigError, match="expected int"):
        _Thing({"num_terms": True})


def test_lists_from_config_files_become_tuples() -> None:
    thing = _Thing({"a_shape": [384, 48], "scale": 2})
    assert thing.options.a_shape == (384, 48)
    assert thing.options.scale == 2


def test_tuple_length_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"a_shape: expected tuple"):
        _Thing({"a_shape": [1, 2, 3]})
