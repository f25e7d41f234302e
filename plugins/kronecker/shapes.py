"""Factor shapes of a Kronecker product and their costs (KroneckerBERT §3.2-3.3, Eq. 7).

W (m×n) ≈ Σ_{r=1..R} A_r⊗B_r with A_r m1×n1 and B_r m2×n2 needs m1 | m and n1 | n (then m2 = m/m1,
n2 = n/n1) and R ≤ min(m1·n1, m2·n2) (the rank of the rearranged matrix, see ``nearest.py``).

Costs follow the paper's convention (Table 1): parameters are numel; FLOPs count linear maps at
``tokens`` tokens. Per token one term costs (Eq. 7)

    min( (2·n2 − 1)·m2·n1 + (2·n1 − 1)·m2·m1 ,  (2·n1 − 1)·n2·m1 + (2·n2 − 1)·m2·m1 )

(the first is X·Bᵀ then A·(…), the second A·X then (…)·Bᵀ), and R terms add (R − 1)·m additions.
An embedding lookup costs 0 FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from compresskit import DecompositionError

Shape = tuple[int, int]


def divisors(value: int) -> list[int]:
    """All positive divisors of ``value``, ascending."""
    small = [d for d in range(1, math.isqrt(value) + 1) if value % d == 0]
    return sorted(set(small + [value // d for d in small]))


def factor_pairs(value: int) -> list[Shape]:
    """``(d, value // d)`` for every divisor d of ``value``."""
    return [(d, value // d) for d in divisors(value)]


def is_prime(value: int) -> bool:
    """True when ``value`` > 1 has no divisor besides 1 and itself."""
    return value > 1 and len(divisors(value)) == 2


def nearest_divisors(value: int, wanted: int, count: int = 2) -> list[int]:
    """The ``count`` divisors of ``value`` closest (in ratio) to ``wanted``."""
    return sorted(divisors(value), key=lambda d: abs(math.log(d / max(wanted, 1))))[:count]


def resolve_shapes(
    m: int, n: int, a_shape: Sequence[int] | None, b_shape: Sequence[int] | None, where: str
) -> tuple[Shape, Shape]:
    """``(a_shape, b_shape)`` for an m×n matrix from one (or both, consistent) of the two shapes.

    Raises :class:`DecompositionError` naming the nearest valid shapes when a shape does not divide.
    """
    if a_shape is None and b_shape is None:
        raise DecompositionError(
            f"{where}: no factor shape given for the {m}x{n} matrix; set a_shape or b_shape "
            f"(m1 must divide {m}: {_short(divisors(m))}; n1 must divide {n}: {_short(divisors(n))}) "
            "or target_ratio."
        )
    label = "a_shape" if a_shape is not None else "b_shape"
    given = a_shape if a_shape is not None else b_shape or (0, 0)
    rows, cols = int(given[0]), int(given[1])
    if rows < 1 or cols < 1 or m % rows or n % cols:
        raise DecompositionError(
            f"{where}: {label} ({rows}, {cols}) does not divide the {m}x{n} matrix "
            f"(rows must divide {m}, columns must divide {n}). Nearest valid {label}s: "
            f"{_nearest_shapes(m, n, rows, cols)}."
        )
    other = (m // rows, n // cols)
    a, b = ((rows, cols), other) if label == "a_shape" else (other, (rows, cols))
    if a_shape is not None and b_shape is not None and tuple(b_shape) != b:
        raise DecompositionError(
            f"{where}: a_shape {tuple(a_shape)} and b_shape {tuple(b_shape)} disagree for the {m}x{n} "
            f"matrix: with that a_shape, b_shape must be {b}. Give only one of them."
        )
    return a, b


def max_terms(a_shape: Shape, b_shape: Shape) -> int:
    """Largest useful number of Kronecker terms: min(m1·n1, m2·n2) (exact reconstruction there)."""
    return min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])


def check_terms(num_terms: int, a_shape: Shape, b_shape: Shape, where: str) -> None:
    """Raise :class:`DecompositionError` unless 1 ≤ num_terms ≤ :func:`max_terms`."""
    limit = max_terms(a_shape, b_shape)
    if not 1 <= num_terms <= limit:
        raise DecompositionError(
            f"{where}: num_terms={num_terms} is not possible with A {a_shape} and B {b_shape}: "
            f"choose 1..{limit} (min(m1·n1, m2·n2); {limit} terms already reconstruct W exactly)."
        )


def term_flops(a_shape: Shape, b_shape: Shape) -> tuple[int, int]:
    """Per-token FLOPs of one term in the two association orders: ``(b_first, a_first)`` (Eq. 7)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    b_first = (2 * n2 - 1) * m2 * n1 + (2 * n1 - 1) * m2 * m1
    a_first = (2 * n1 - 1) * n2 * m1 + (2 * n2 - 1) * m2 * m1
    return b_first, a_first


def kronecker_params(a_shape: Shape, b_shape: Shape, num_terms: int = 1) -> int:
    """R·(m1·n1 + m2·n2) factor parameters (KroneckerBERT §3.2.3), bias excluded."""
    return num_terms * (a_shape[0] * a_shape[1] + b_shape[0] * b_shape[1])


def kronecker_flops(a_shape: Shape, b_shape: Shape, num_terms: int = 1, tokens: int = 128) -> int:
    """FLOPs of Σ_r A_r⊗B_r applied to ``tokens`` tokens: R·min(Eq. 7) + (R − 1)·m additions."""
    m = a_shape[0] * b_shape[0]
    return tokens * (num_terms * min(term_flops(a_shape, b_shape)) + (num_terms - 1) * m)


def _nearest_shapes(m: int, n: int, rows: int, cols: int) -> str:
    pairs = [(r, c) for r in nearest_divisors(m, rows) for c in nearest_divisors(n, cols)]
    return ", ".join(str(p) for p in pairs)


def _short(values: list[int], limit: int = 12) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "")
