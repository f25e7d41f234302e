"""The decomposition contract suite over EVERY registered decomposition, and proof that it catches breakage.

Decompositions are enumerated from the registry at collection time, so a new built-in or installed plugin
is covered without editing this file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compresskit import (
    Cost,
    Decomposition,
    DecompositionError,
    Registry,
    dense_bias,
    dense_weight,
    linear_shape,
)
from compresskit.testing import check_decomposition

REGISTRY = Registry.from_plugins()
EXAMPLE_PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "examples" / "compresskit-blockdiag"


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return factory()

    return make


MODULES: dict[str, Callable[[], nn.Module]] = {
    "Linear": _seeded(lambda: nn.Linear(36, 24)),
    "Conv1D": _seeded(lambda: Conv1D(24, 36)),
    "Embedding": _seeded(lambda: nn.Embedding(99, 32)),
}


def _cases() -> list[Any]:
    cases = []
    for name in REGISTRY.names("decomposition"):
        cls = REGISTRY.get("decomposition", name)
        for kind in MODULES:
            if kind in cls.module_types:
                cases.append(pytest.param(name, kind, id=f"{name}-{kind}"))
    return cases


@pytest.mark.parametrize(("name", "kind"), _cases())
def test_lossless_configuration_meets_the_contract(name: str, kind: str) -> None:
    cls = REGISTRY.get("decomposition", name)
    module = MODULES[kind]()
    options = cls.lossless_options(module)
    if options is None:
        options = {}
    check_decomposition(cls, module=module, name=f"model.{kind.lower()}", options=options)


@pytest.mark.parametrize(("name", "kind"), _cases())
def test_default_options_meet_the_contract_or_refuse_cleanly(name: str, kind: str) -> None:
    decomposition = REGISTRY.create("decomposition", name, {})
    module = MODULES[kind]()
    reason = decomposition.check(module, "model.layer")
    if reason is None:
        check_decomposition(decomposition, module=module, name="model.layer", lossless=False)
    else:
        assert reason.strip()
        with pytest.raises(DecompositionError):
            decomposition.make_spec(module, "model.layer")


def test_every_registered_decomposition_is_covered() -> None:
    covered = {case.values[0] for case in _cases()}
    assert covered == set(REGISTRY.names("decomposition"))
    assert "low_rank" in covered


def test_example_third_party_plugin_meets_the_contract() -> None:
    sys.path.insert(0, str(EXAMPLE_PLUGIN))
    try:
        from compresskit_blockdiag.plugin import BlockDiagonal
    finally:
        sys.path.remove(str(EXAMPLE_PLUGIN))
    check_decomposition(BlockDiagonal, module=nn.Linear(36, 24), options={"blocks": 3})
    check_decomposition(BlockDiagonal, module_factory=lambda: nn.Linear(36, 24), lossless=True)


# --- deliberately broken decompositions: the suite must catch each one ---------------------------


class _CopyLinear(nn.Module):
    """A dense copy: the simplest module that meets the contract."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def to_dense(self) -> nn.Linear:
        dense = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


class _Copy(Decomposition):
    name = "test_copy"
    module_types = ("Linear",)

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        out_features, in_features = linear_shape(module)
        return {"out": out_features, "in": in_features}

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        bias = dense_bias(module)
        return _CopyLinear(
            dense_weight(module).detach().clone(), None if bias is None else bias.detach().clone()
        )

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        return Cost(spec["out"] * spec["in"] + spec["out"], 0)

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        return {}


class _Aliases(_Copy):
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        new = super().build(module, spec)
        new.weight = nn.Parameter(module.weight.data)  # shares storage with the original
        return new


class _Mutates(_Copy):
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        with torch.no_grad():
            module.weight.mul_(0.5)
        return super().build(module, spec)


class _NoGradLinear(_CopyLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.detach(), self.bias)


class _LosesGradients(_Copy):
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        return _NoGradLinear(module.weight.detach().clone(), module.bias.detach().clone())


class _MiscountsParams(_Copy):
    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        return Cost(spec["out"] * spec["in"], 0)  # forgets the bias


class _ClaimsLossless(_Copy):
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        new = super().build(module, spec)
        with torch.no_grad():
            new.weight.add_(0.1)
        return new


class _ChangesDtype(_Copy):
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        return super().build(module, spec).double()


class _TensorInSpec(_Copy):
    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        return {**super().make_spec(module, name), "weight": module.weight}


class _StateMismatch(_Copy):
    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        new = super().build(module, spec)
        if not initialize:
            new.extra = nn.Parameter(torch.zeros(1))
        return new


def test_a_correct_decomposition_passes() -> None:
    check_decomposition(_Copy)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_Aliases, "aliases the old one"),
        (_Mutates, "old module was mutated"),
        (_LosesGradients, "got no gradient"),
        (_MiscountsParams, "parameter count"),
        (_ClaimsLossless, "not lossless"),
        (_ChangesDtype, "dtype not kept"),
        (_TensorInSpec, "not JSON-able"),
        (_StateMismatch, "does not reload"),
    ],
)
def test_the_suite_catches_a_broken_decomposition(broken: type[Decomposition], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_decomposition(broken)


@pytest.mark.parametrize(
    "name",
    [n for n in REGISTRY.names("decomposition") if "Linear" in REGISTRY.get("decomposition", n).module_types],
)
def test_half_precision_module_keeps_its_dtype(name: str) -> None:
    cls = REGISTRY.get("decomposition", name)
    module = MODULES["Linear"]().to(torch.bfloat16)
    check_decomposition(cls, module=module, name="model.linear", atol=5e-2, rtol=5e-2)
