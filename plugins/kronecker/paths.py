"""Which exact formulation a Kronecker layer runs, per call: measured dispatch (``compresskit.dispatch``).

Families and their formulations (all exact; see ``kernels.py`` for the maths):

* ``kronecker_linear`` (``KroneckerLinear``, also built from HF ``Conv1D``): ``dense``, ``b_first_bmm``,
  ``a_first_bmm``, ``b_first_gemm``, ``a_first_gemm``. In inference ``dense`` multiplies by a weight
  rebuilt once and cached on the layer until a factor changes (costs m·n values of memory while cached).
* ``kronecker_embedding``: ``factored`` (row of A, then the outer product with b) or ``dense`` (inference
  only: a lookup in the cached table).
* ``kronecker_tied_head``: ``factored`` (h·(I⊗b)ᵀ, then ·Aᵀ) or ``dense`` (h·Eᵀ with E built; cached in
  inference).

The static (``heuristic``) choice, used while tracing and in ``COMPRESSKIT_DISPATCH=heuristic`` mode: the
Eq. 7 cheaper association order, with the per-token batched product when A is small (≤ ``SMALL_A``
values: a per-token product with a large A is slow on CPU) and the single-GEMM form otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from compresskit.plugin import PROBE_MAX_TOKENS, choose, probe_generator, regime, register_family

from .kernels import FORMULATIONS, kronecker_linear
from .shapes import Shape, term_flops

LINEAR = "kronecker_linear"
EMBEDDING = "kronecker_embedding"
TIED_HEAD = "kronecker_tied_head"
register_family(LINEAR, tuple(FORMULATIONS))
register_family(EMBEDDING, ("factored", "dense"))
register_family(TIED_HEAD, ("factored", "dense"))

#: Largest A (m1·n1·R values) for which the per-token batched product is a candidate.
SMALL_A = 1024


def static_formulation(a_shape: Shape, b_shape: Shape, terms: int) -> str:
    """The formulation used without measuring (see the module docstring)."""
    b_first, a_first = term_flops(a_shape, b_shape)
    order = "a_first" if a_first < b_first else "b_first"
    form = "bmm" if a_shape[0] * a_shape[1] * terms <= SMALL_A else "gemm"
    return f"{order}_{form}"


def linear_candidates(a_shape: Shape, terms: int) -> list[str]:
    """Formulations worth probing: the batched forms only for a small A."""
    small = a_shape[0] * a_shape[1] * terms <= SMALL_A
    return [name for name in FORMULATIONS if small or not name.endswith("_bmm")]


def choose_linear(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, x2: torch.Tensor, training: bool
) -> str:
    """The formulation a ``KroneckerLinear`` with factors ``a``, ``b`` runs for the rows ``x2`` (N, n)."""
    terms = int(a.shape[0])
    a_shape, b_shape = (int(a.shape[1]), int(a.shape[2])), (int(b.shape[1]), int(b.shape[2]))
    signature = f"A{a_shape[0]}x{a_shape[1]} B{b_shape[0]}x{b_shape[1]} R{terms} bias{int(bias is not None)}"
    current = regime(x2.shape[0], x2.dtype, x2.device, training)

    def probe(name: str) -> Callable[[], object]:
        return _linear_probe(a, b, bias, int(x2.shape[0]), name, training)

    heuristic = static_formulation(a_shape, b_shape, terms)
    return choose(LINEAR, signature, current, heuristic, linear_candidates(a_shape, terms), probe)


def _linear_probe(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, tokens: int, name: str, training: bool
) -> Callable[[], object]:
    gen = probe_generator(a.device)
    rows = min(tokens, PROBE_MAX_TOKENS)
    n = a.shape[2] * b.shape[2]
    x = torch.randn(rows, n, generator=gen, dtype=a.dtype, device=a.device).requires_grad_(training)
    pa, pb = a.detach().clone().requires_grad_(training), b.detach().clone().requires_grad_(training)
    pbias = None if bias is None else bias.detach().clone().requires_grad_(training)
    if not training:
        if name == "dense":
            from .nearest import kron_sum

            weight = kron_sum(pa, pb)
            return lambda: torch.nn.functional.linear(x, weight, pbias)
        return lambda: kronecker_linear(x, pa, pb, pbias, name)
    grad = torch.randn(rows, a.shape[1] * b.shape[1], generator=gen, dtype=a.dtype, device=a.device)

    def step() -> None:
        with torch.enable_grad():
            kronecker_linear(x, pa, pb, pbias, name).backward(grad)
        x.grad = pa.grad = pb.grad = None
        if pbias is not None:
            pbias.grad = None

    return step


def choose_simple(
    family: str,
    signature: str,
    x: torch.Tensor,
    tokens: int,
    training: bool,
    probe: Callable[[str], Callable[[], object]],
) -> str:
    """``factored`` or ``dense`` for an embedding / tied head (``dense`` is only probed in inference)."""
    current = regime(tokens, x.dtype, x.device, training)
    candidates = ["factored"] if training else ["factored", "dense"]
    return choose(family, signature, current, "factored", candidates, probe)
