"""Helpers shipped to plugin authors: the contract suites :func:`check_decomposition`,
:func:`check_distiller` and :func:`check_loss` (the last two in :mod:`compresskit.testing_kd`).

Use it from a third-party plugin's own tests::

    from torch import nn
    from compresskit.testing import check_decomposition
    from my_plugin import MyDecomposition

    def test_my_decomposition_meets_the_contract():
        check_decomposition(MyDecomposition, module=nn.Linear(36, 24), options={"rank": 4})

Every failed property raises ``AssertionError`` whose message names the decomposition, the module
and the property, so a pytest failure reads as a diagnosis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from compresskit.decomposition import CompressedModule, Decomposition, class_names, dense_weight
from compresskit.testing_kd import check_distiller, check_loss, tiny_bert

__all__ = ["check_decomposition", "check_distiller", "check_loss", "sample_inputs", "tiny_bert"]


def check_decomposition(
    decomposition: Decomposition | type[Decomposition],
    *,
    module: nn.Module | None = None,
    module_factory: Callable[[], nn.Module] | None = None,
    name: str = "layer",
    options: Mapping[str, Any] | None = None,
    lossless: bool | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Check every property of the decomposition contract on one module; raise AssertionError if not.

    ``decomposition`` is a class (instantiated with ``options``; by default its ``lossless_options``
    or, when it has none, ``{}``) or an instance (used as is). ``module`` (or ``module_factory()``)
    defaults to a seeded ``nn.Linear(36, 24)``.

    Checked: the spec is JSON-able; ``build`` returns a new module and leaves the old one untouched
    (values and storage); no tensor of the new module shares storage with the old one; dtype and
    device are kept; the output and ``dense_weight()`` shapes match the old module; ``to_dense()``
    computes the same function; every trainable parameter receives a finite gradient;
    ``compressed_cost(...).params`` equals the numel of the new parameters; a state dict reloads into
    ``build(..., initialize=False)`` (also from the JSON-reloaded spec) with identical outputs; and,
    when ``lossless`` is true (or ``None`` and the class declares ``lossless_options``), the lossless
    configuration reproduces the module within ``atol``/``rtol``.
    """
    target = _resolve_module(module, module_factory)
    instance = _instance(decomposition, target, options)
    ctx = _Context(instance, target, name, atol, rtol)
    spec = ctx.make_spec()
    snapshot = _snapshot(target)
    new = ctx.build(spec)
    ctx.check_new_object(new, snapshot)
    ctx.check_dtype_device(new)
    ctx.check_forward(new)
    ctx.check_counts(new, spec)
    ctx.check_state_dict_round_trip(new, spec)
    ctx.check_gradients(new)
    ctx.check_no_shared_mutation(new, snapshot)
    _check_lossless(ctx, lossless)


def sample_inputs(module: nn.Module, batch: int = 2, tokens: int = 5, seed: int = 0) -> torch.Tensor:
    """Seeded inputs for ``module``: token ids for an embedding, else (batch, tokens, in_features)."""
    generator = torch.Generator().manual_seed(seed)
    weight = dense_weight(module)
    if "Embedding" in class_names(module):
        ids = torch.randint(0, int(weight.shape[0]), (batch, tokens), generator=generator)
        return ids.to(weight.device)
    x = torch.randn(batch, tokens, int(weight.shape[1]), generator=generator)
    return x.to(device=weight.device, dtype=weight.dtype)


def _resolve_module(module: nn.Module | None, factory: Callable[[], nn.Module] | None) -> nn.Module:
    if module is not None and factory is not None:
        raise TypeError("check_decomposition: give module or module_factory, not both")
    if module is not None:
        return module
    if factory is not None:
        return factory()
    torch.manual_seed(0)
    return nn.Linear(36, 24)


def _instance(
    decomposition: Decomposition | type[Decomposition], module: nn.Module, options: Mapping[str, Any] | None
) -> Decomposition:
    if isinstance(decomposition, Decomposition):
        if options is not None:
            raise TypeError("check_decomposition: options apply only when a class is given")
        return decomposition
    chosen = options if options is not None else decomposition.lossless_options(module) or {}
    return decomposition(chosen, where=f"check_decomposition.{decomposition.name}")


@dataclass(frozen=True)
class _Snapshot:
    """The old module's tensors (cloned) and their storage addresses before ``build``."""

    state: dict[str, torch.Tensor]
    storages: dict[str, int]
    parameters: tuple[int, ...]


def _snapshot(module: nn.Module) -> _Snapshot:
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    storages = {k: v.untyped_storage().data_ptr() for k, v in module.state_dict().items() if v.numel()}
    return _Snapshot(state, storages, tuple(id(p) for p in module.parameters()))


class _Context:
    """One decomposition on one module; each ``check_*`` method asserts one property."""

    def __init__(self, decomposition: Decomposition, module: nn.Module, name: str, atol: float, rtol: float):
        self.decomposition, self.module, self.name = decomposition, module, name
        self.atol, self.rtol = atol, rtol
        self.inputs = sample_inputs(module)
        with torch.no_grad():
            self.expected = module(self.inputs)
        shape = "x".join(str(d) for d in dense_weight(module).shape)
        kind = type(decomposition).__name__
        self.label = f"{kind} ({decomposition.name!r}) on {name!r} ({type(module).__name__} {shape})"

    def fail(self, prop: str, detail: str) -> AssertionError:
        return AssertionError(f"check_decomposition: {self.label}: {prop}: {detail}")

    def make_spec(self) -> dict[str, Any]:
        reason = self.decomposition.check(self.module, self.name)
        if reason is not None:
            raise self.fail("check() refused the module", reason)
        spec = self.decomposition.make_spec(self.module, self.name)
        try:
            text = json.dumps(spec)
        except (TypeError, ValueError) as exc:
            raise self.fail("spec is not JSON-able", f"{exc}; spec = {spec!r}") from None
        if not isinstance(json.loads(text), dict):
            raise self.fail("spec is not a mapping", repr(spec))
        return spec

    def build(self, spec: Mapping[str, Any], initialize: bool = True) -> nn.Module:
        new = self.decomposition.build(self.module, spec, initialize=initialize)
        if not isinstance(new, nn.Module):
            raise self.fail("build() must return an nn.Module", f"got {type(new).__name__}")
        for method in ("dense_weight", "to_dense"):
            if not callable(getattr(new, method, None)):
                raise self.fail(f"built module has no {method}()", type(new).__name__)
        return new

    def check_new_object(self, new: nn.Module, snapshot: _Snapshot) -> None:
        if new is self.module:
            raise self.fail("build() returned the old module", "it must create a new one")
        self._check_old_untouched(snapshot, "after build()")
        old = set(snapshot.storages.values())
        for key, tensor in new.state_dict().items():
            if tensor.numel() and tensor.untyped_storage().data_ptr() in old:
                raise self.fail("new module aliases the old one", f"{key!r} shares storage with it")

    def _check_old_untouched(self, snapshot: _Snapshot, when: str) -> None:
        if tuple(id(p) for p in self.module.parameters()) != snapshot.parameters:
            raise self.fail("old module was mutated", f"its parameters were replaced {when}")
        for key, tensor in self.module.state_dict().items():
            if not torch.equal(tensor, snapshot.state[key]):
                raise self.fail("old module was mutated", f"{key!r} changed {when}")

    def check_dtype_device(self, new: nn.Module) -> None:
        weight = dense_weight(self.module)
        for key, tensor in new.state_dict().items():
            if tensor.device != weight.device:
                raise self.fail("device not kept", f"{key!r} is on {tensor.device}, not {weight.device}")
            if tensor.is_floating_point() and tensor.dtype != weight.dtype:
                raise self.fail("dtype not kept", f"{key!r} is {tensor.dtype}, not {weight.dtype}")

    def check_forward(self, new: nn.Module) -> None:
        with torch.no_grad():
            out = new(self.inputs)
            compressed = cast(CompressedModule, new)
            dense_out = compressed.to_dense()(self.inputs)
            weight = compressed.dense_weight()
        if out.shape != self.expected.shape or out.dtype != self.expected.dtype:
            raise self.fail(
                "output shape/dtype differs",
                f"{tuple(out.shape)} {out.dtype}, "
                f"expected {tuple(self.expected.shape)} {self.expected.dtype}",
            )
        if weight.shape != dense_weight(self.module).shape:
            raise self.fail("dense_weight() has the wrong shape", f"{tuple(weight.shape)}")
        if not torch.allclose(dense_out, out, atol=self.atol, rtol=self.rtol):
            raise self.fail("to_dense() computes another function", _max_diff(dense_out, out))

    def check_counts(self, new: nn.Module, spec: Mapping[str, Any]) -> None:
        counted = sum(p.numel() for p in new.parameters())
        cost = self.decomposition.compressed_cost(self.module, spec)
        if cost.params != counted:
            raise self.fail("parameter count", f"compressed_cost says {cost.params}, numel is {counted}")
        if cost.flops < 0:
            raise self.fail("FLOPs", f"compressed_cost gives negative FLOPs {cost.flops}")

    def check_state_dict_round_trip(self, new: nn.Module, spec: Mapping[str, Any]) -> None:
        reloaded_spec = json.loads(json.dumps(spec))
        for label, source in (("spec", spec), ("JSON-reloaded spec", reloaded_spec)):
            empty = self.build(source, initialize=False)
            try:
                empty.load_state_dict(new.state_dict(), strict=True)
            except RuntimeError as exc:
                raise self.fail(
                    f"state dict does not reload into build(initialize=False) from {label}", str(exc)
                ) from None
            with torch.no_grad():
                a, b = new(self.inputs), empty(self.inputs)
            if not torch.equal(a, b):
                raise self.fail("reloaded module gives other outputs", _max_diff(a, b))

    def check_gradients(self, new: nn.Module) -> None:
        trainable = [(k, p) for k, p in new.named_parameters() if p.requires_grad]
        if not trainable:
            raise self.fail("no trainable parameters", "the new module cannot be fine-tuned")
        new.zero_grad(set_to_none=True)
        new(self.inputs).float().square().sum().backward()
        for key, param in trainable:
            if param.grad is None:
                raise self.fail("gradients do not reach the parameters", f"{key!r} got no gradient")
            if not bool(torch.isfinite(param.grad).all()):
                raise self.fail("gradients are not finite", key)
        if all(not bool(p.grad.abs().sum()) for _, p in trainable if p.grad is not None):
            raise self.fail("gradients do not reach the parameters", "every gradient is zero")
        new.zero_grad(set_to_none=True)

    def check_no_shared_mutation(self, new: nn.Module, snapshot: _Snapshot) -> None:
        with torch.no_grad():
            for tensor in new.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(1.0)
        self._check_old_untouched(snapshot, "when the new module's tensors were changed in place")


def _check_lossless(ctx: _Context, lossless: bool | None) -> None:
    cls = type(ctx.decomposition)
    options = cls.lossless_options(ctx.module)
    if lossless is False or (lossless is None and options is None):
        return
    if options is None:
        raise ctx.fail("lossless", "lossless=True but lossless_options() returned None")
    exact = cls(options, where=f"check_decomposition.{cls.name}")
    new = exact.decompose(ctx.module, ctx.name)
    with torch.no_grad():
        out = new(ctx.inputs)
    if not torch.allclose(out, ctx.expected, atol=ctx.atol, rtol=ctx.rtol):
        raise ctx.fail(f"not lossless under lossless_options() = {options}", _max_diff(out, ctx.expected))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"max abs difference {float((a.float() - b.float()).abs().max()):.3g}"
