"""Shape search: choose Kronecker factor shapes and numbers of terms per matrix to meet a whole-model budget.

KroneckerBERT chose its shapes by hand from the divisors of m and n "to obtain the desired compression
factor and FLOPS reduction according to Eq. 7" (§3.6). :func:`search_shapes` automates that:

1. Candidates per matrix: every A = (m1, n1) with m1 | m and n1 | n except where A or B is 1×1, and
   R = 1..``max_terms`` terms, keeping those smaller than the dense matrix. A matrix with a prime (or 1)
   dimension cannot be factored (that dimension cannot be split between A and B): it has no candidate
   and stays dense, with the reason in its :class:`Choice`. An embedding (v×d) gets B = (1, n) for every
   divisor n > 1 of d (only d is split, so the vocabulary size may be prime).
2. The budget left after the untouched parameters (or FLOPs) is spread over the matrices at one common
   ratio; each matrix takes, among the candidates within ``band`` below its share, the one with the
   lowest ``objective``: Eq. 7 FLOPs (``"flops"``) or the nearest-Kronecker reconstruction error
   sqrt(Σ_{k>R} σ_k²)/‖W‖ (``"error"``, needs real weights).
3. A greedy pass then moves single matrices to other candidates until the total is within ``tolerance``
   of the target.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import nn

from compresskit import DecompositionError, class_names, dense_cost, dense_weight, linear_shape

from .nearest import rearrange
from .shapes import Shape, divisors, kronecker_flops, kronecker_params, max_terms

Objective = Literal["flops", "error"]


@dataclass(frozen=True)
class Matrix:
    """One matrix to factor: ``m``×``n`` (out×in, or vocab×dim for ``kind="embedding"``)."""

    name: str
    m: int
    n: int
    kind: Literal["linear", "embedding"] = "linear"
    weight: torch.Tensor | None = field(default=None, repr=False, compare=False)
    #: singular values of R(W) per (a_shape, b_shape), filled by the "error" objective
    svals: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Candidate:
    """A factorisation of one matrix and its cost (weights only, FLOPs at the search's tokens)."""

    a_shape: Shape
    b_shape: Shape
    num_terms: int
    params: int
    flops: int


@dataclass(frozen=True)
class Choice:
    """What the search chose for one matrix: ``options`` for the ``kronecker`` decomposition or a reason."""

    name: str
    options: dict[str, Any] | None
    params: int
    flops: int
    dense_params: int
    dense_flops: int
    reason: str | None = None


@dataclass(frozen=True)
class SearchResult:
    """Per-matrix choices and whole-model totals (untouched parameters/FLOPs included)."""

    choices: tuple[Choice, ...]
    params: int
    flops: int
    dense_params: int
    dense_flops: int

    @property
    def ratio(self) -> float:
        return self.dense_params / self.params

    @property
    def flop_ratio(self) -> float:
        return self.dense_flops / self.flops if self.flops else math.inf

    def groups(self, name: str = "kronecker-search") -> list[dict[str, Any]]:
        """Decompose-step groups (shared group schema): one per chosen matrix, exact names."""
        return [
            {
                "name": f"{name}:{c.name}",
                "names": [c.name],
                "decomposition": "kronecker",
                "options": c.options,
            }
            for c in self.choices
            if c.options is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, flop_ratio=self.flop_ratio)
        return data


def factoring_reason(m: int, n: int) -> str | None:
    """Why an m×n matrix has no non-trivial Kronecker factorisation, or ``None`` if it has one."""
    for dim, label in ((m, "output"), (n, "input")):
        if len(divisors(dim)) <= 2:
            what = "is 1" if dim == 1 else "is prime"
            return (
                f"cannot be factored: the {label} dimension {dim} {what}, so its only factor pairs are "
                f"(1, {dim}) and ({dim}, 1); exclude it or pad the layer to a composite size"
            )
    return None


@lru_cache(maxsize=256)
def linear_candidates(m: int, n: int, terms: int = 4, tokens: int = 128) -> tuple[Candidate, ...]:
    """Every factorisation of an m×n matrix (no 1×1 factor), 1..``terms`` terms, sorted by params."""
    found = []
    for m1 in divisors(m):
        for n1 in divisors(n):
            a, b = (m1, n1), (m // m1, n // n1)
            if a == (1, 1) or b == (1, 1):
                continue
            for r in range(1, min(terms, max_terms(a, b)) + 1):
                params = kronecker_params(a, b, r)
                if params < m * n:
                    found.append(Candidate(a, b, r, params, kronecker_flops(a, b, r, tokens)))
    return tuple(sorted(found, key=lambda c: (c.params, c.flops, c.a_shape, c.num_terms)))


@lru_cache(maxsize=64)
def embedding_candidates(vocab: int, dim: int, terms: int = 1) -> tuple[Candidate, ...]:
    """B = (1, n) for each divisor n > 1 of ``dim``, 1..``terms`` terms, sorted by params."""
    found = [
        Candidate((vocab, dim // k), (1, k), r, kronecker_params((vocab, dim // k), (1, k), r), 0)
        for k in divisors(dim)[1:]
        for r in range(1, min(terms, k) + 1)
    ]
    return tuple(sorted(found, key=lambda c: (c.params, c.a_shape)))


def choose_embedding_n(dim: int, ratio: float) -> int:
    """The divisor n > 1 of ``dim`` closest (in log scale) to ``ratio`` (A v×d/n ⊗ B 1×n keeps ~1/n)."""
    options = divisors(dim)[1:] or [dim]
    return min(options, key=lambda k: (abs(math.log(k / ratio)), k))


def choose_linear_shape(
    m: int, n: int, ratio: float, objective: Objective, weight: torch.Tensor | None, where: str
) -> tuple[Shape, int]:
    """``(a_shape, num_terms)`` with m·n / params ≈ ``ratio`` (within 5% when possible), best objective."""
    reason = factoring_reason(m, n)
    if reason is not None:
        raise DecompositionError(f"{where}: {m}x{n} {reason}.")
    matrix = Matrix(where, m, n, weight=weight)
    pick = _pick(matrix, linear_candidates(m, n), m * n / ratio, "params", objective, band=0.05)
    return pick.a_shape, pick.num_terms


def search_shapes(
    matrices: Sequence[Matrix],
    *,
    target_ratio: float | None = None,
    param_budget: int | None = None,
    flop_budget: int | None = None,
    objective: Objective = "flops",
    untouched_params: int = 0,
    untouched_flops: int = 0,
    max_terms: int = 4,
    tokens: int = 128,
    tolerance: float = 0.02,
) -> SearchResult:
    """Choose a factorisation per matrix so the whole model meets exactly one of the three targets.

    ``target_ratio`` = (dense params) / (compressed params) over everything, untouched parameters
    (``untouched_params``: biases, LayerNorms, other embeddings, ...) included; ``param_budget`` = the
    compressed total; ``flop_budget`` = the compressed FLOPs at ``tokens`` tokens (embeddings then stay
    dense: lookups cost no FLOPs). Raises :class:`DecompositionError` when the target cannot be met.
    """
    metric, target = _target(matrices, target_ratio, param_budget, flop_budget, untouched_params, tokens)
    pools = {m.name: _candidates(m, metric, max_terms, tokens) for m in matrices}
    fixed = untouched_flops if metric == "flops" else untouched_params
    fixed += sum(_dense(m, metric, tokens) for m in matrices if not pools[m.name][0])
    active = [m for m in matrices if pools[m.name][0]]
    budget = target - fixed
    floor = sum(_value(pools[m.name][0][0], metric) for m in active)
    if budget < floor:
        raise DecompositionError(
            f"the {metric} target {target:,} cannot be met: untouched and unfactorable matrices "
            f"already take {fixed:,} and the smallest factorisations {floor:,} more. Lower the ratio, "
            "raise max_terms or compress more module types."
        )
    dense_active = sum(_dense(m, metric, tokens) for m in active) or 1
    picks = {
        m.name: _pick(
            m, pools[m.name][0], _dense(m, metric, tokens) * budget / dense_active, metric, objective
        )
        for m in active
    }
    _rebalance(picks, {m.name: pools[m.name][0] for m in active}, metric, budget, tolerance)
    choices = tuple(_choice(m, picks.get(m.name), pools[m.name][1], tokens) for m in matrices)
    return _result(choices, untouched_params, untouched_flops)


def model_matrices(
    model: nn.Module,
    types: Iterable[str] = ("Linear", "Conv1D", "Embedding"),
    exclude: Iterable[str] = (),
    *,
    with_weights: bool = False,
    tokens: int = 128,
) -> tuple[list[Matrix], int, int]:
    """``(matrices, untouched_params, untouched_flops)`` of a model (``meta`` models work).

    Selects modules whose class (along the MRO) is in ``types``, except names ending with an ``exclude``
    entry. A module whose weight is shared with one seen before (a tied LM head) is not selected again;
    the FLOPs of every linear map left dense count as untouched.
    """
    wanted, excluded = set(types), tuple(exclude)
    matrices: list[Matrix] = []
    seen: set[int] = set()
    selected = untouched_flops = 0
    for name, module in model.named_modules():
        names = set(class_names(module))
        if not names & {"Linear", "Conv1D", "Embedding"} or not isinstance(
            getattr(module, "weight", None), torch.Tensor
        ):
            continue
        weight = module.weight
        shared = id(weight) in seen
        seen.add(id(weight))
        if shared or not names & wanted or (excluded and name.endswith(excluded)):
            untouched_flops += dense_cost(module, tokens).flops
            continue
        kind: Literal["linear", "embedding"] = "embedding" if "Embedding" in names else "linear"
        m, n = (int(weight.shape[0]), int(weight.shape[1])) if kind == "embedding" else linear_shape(module)
        matrices.append(Matrix(name, m, n, kind, dense_weight(module) if with_weights else None))
        selected += weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return matrices, total - selected, untouched_flops


def _target(
    matrices: Sequence[Matrix],
    ratio: float | None,
    params: int | None,
    flops: int | None,
    untouched: int,
    tokens: int,
) -> tuple[str, float]:
    given = [x for x in (ratio, params, flops) if x is not None]
    if len(given) != 1:
        raise DecompositionError(
            "search_shapes: give exactly one of target_ratio, param_budget, flop_budget."
        )
    if ratio is not None:
        if ratio <= 1:
            raise DecompositionError(f"search_shapes: target_ratio must be > 1, got {ratio}.")
        return "params", (untouched + sum(m.m * m.n for m in matrices)) / ratio
    return ("params", float(params)) if params is not None else ("flops", float(flops or 0))


def _candidates(matrix: Matrix, metric: str, terms: int, tokens: int) -> tuple[tuple[Candidate, ...], str]:
    if matrix.kind == "embedding":
        if metric == "flops":
            return (), "kept dense: embedding lookups cost no FLOPs, so a FLOP budget does not compress it"
        return embedding_candidates(matrix.m, matrix.n, terms), ""
    reason = factoring_reason(matrix.m, matrix.n)
    if reason is not None:
        return (), f"{matrix.m}x{matrix.n} {reason}"
    pool = linear_candidates(matrix.m, matrix.n, terms, tokens)
    return tuple(sorted(pool, key=lambda c: (_value(c, metric), c.params))), ""


def _value(candidate: Candidate, metric: str) -> int:
    return candidate.flops if metric == "flops" else candidate.params


def _dense(matrix: Matrix, metric: str, tokens: int) -> int:
    if metric == "params":
        return matrix.m * matrix.n
    return 0 if matrix.kind == "embedding" else (2 * matrix.n - 1) * matrix.m * tokens


def _pick(
    matrix: Matrix,
    pool: Sequence[Candidate],
    share: float,
    metric: str,
    objective: Objective,
    band: float = 0.1,
) -> Candidate:
    """Lowest-objective candidate with metric in [share·(1 − band), share·(1 + band/2)], else the closest."""
    inside = [c for c in pool if share * (1 - band) <= _value(c, metric) <= share * (1 + band / 2)]
    if not inside:
        return min(pool, key=lambda c: abs(math.log(max(_value(c, metric), 1) / max(share, 1))))
    if objective == "error":
        return min(inside, key=lambda c: (_error(matrix, c), c.flops))
    return min(inside, key=lambda c: (c.flops, c.params, c.a_shape))


def _error(matrix: Matrix, candidate: Candidate) -> float:
    """Relative nearest-Kronecker error sqrt(Σ_{k>R} σ_k²) / ‖W‖ (Eckart-Young on R(W))."""
    weight = matrix.weight
    if weight is None or weight.device.type == "meta":
        raise DecompositionError(
            f"{matrix.name}: objective 'error' needs the real weights (got none or a meta tensor); "
            "use objective = 'flops' for shape-only models."
        )
    key = (candidate.a_shape, candidate.b_shape)
    if key not in matrix.svals:
        matrix.svals[key] = torch.linalg.svdvals(rearrange(weight.detach().to("cpu", torch.float64), *key))
    values = matrix.svals[key]
    tail = values[candidate.num_terms :].pow(2).sum()
    return float((tail / values.pow(2).sum().clamp_min(1e-30)).sqrt())


def _rebalance(
    picks: dict[str, Candidate],
    pools: Mapping[str, Sequence[Candidate]],
    metric: str,
    budget: float,
    tolerance: float,
    rounds: int = 500,
) -> None:
    """Greedy: move the one matrix whose best alternative brings the total closest to ``budget``."""
    for _ in range(rounds):
        total = sum(_value(c, metric) for c in picks.values())
        gap = budget - total
        if abs(gap) <= tolerance * budget:
            return
        best: tuple[float, str, Candidate] | None = None
        for name, pool in pools.items():
            alt = _closest(pool, _value(picks[name], metric) + gap, metric)
            new_gap = abs(gap - (_value(alt, metric) - _value(picks[name], metric)))
            if new_gap < abs(gap) and (best is None or new_gap < best[0]):
                best = (new_gap, name, alt)
        if best is None:
            return
        picks[best[1]] = best[2]


def _closest(pool: Sequence[Candidate], wanted: float, metric: str) -> Candidate:
    values = [_value(c, metric) for c in pool]
    i = bisect.bisect_left(values, wanted)
    near = [pool[j] for j in (i - 1, i) if 0 <= j < len(pool)]
    return min(near, key=lambda c: abs(_value(c, metric) - wanted))


def _choice(matrix: Matrix, pick: Candidate | None, reason: str, tokens: int) -> Choice:
    dense_flops = _dense(matrix, "flops", tokens)
    if pick is None:
        return Choice(
            matrix.name, None, matrix.m * matrix.n, dense_flops, matrix.m * matrix.n, dense_flops, reason
        )
    if matrix.kind == "embedding":
        options: dict[str, Any] = {"embedding_n": pick.b_shape[1], "num_terms": pick.num_terms}
    else:
        options = {"a_shape": list(pick.a_shape), "num_terms": pick.num_terms}
    return Choice(matrix.name, options, pick.params, pick.flops, matrix.m * matrix.n, dense_flops)


def _result(choices: tuple[Choice, ...], untouched_params: int, untouched_flops: int) -> SearchResult:
    return SearchResult(
        choices,
        params=untouched_params + sum(c.params for c in choices),
        flops=untouched_flops + sum(c.flops for c in choices),
        dense_params=untouched_params + sum(c.dense_params for c in choices),
        dense_flops=untouched_flops + sum(c.dense_flops for c in choices),
    )
