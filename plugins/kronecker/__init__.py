"""Kronecker-product decomposition (KroneckerBERT, Tahaei et al., NAACL 2022).

Registers the ``kronecker`` decomposition (Linear, HF Conv1D and Embedding → :class:`KroneckerLinear` /
:class:`KroneckerEmbedding`, initialised by the nearest-Kronecker SVD) and the presets
``kroneckerbert8``, ``kroneckerbert21`` and ``kroneckerbert5`` (counting rule in ``presets.py``).
:func:`search_shapes` picks factor shapes per matrix for a whole-model compression ratio, parameter
budget or FLOP budget.
"""

from __future__ import annotations

from compresskit import Decomposition, Preset, hookimpl

from .decomposition import Kronecker, KroneckerOptions, spec_cost
from .embedding import KroneckerEmbedding, KroneckerTiedHead
from .layers import KroneckerLinear
from .nearest import kron_sum, nearest_kronecker, rearrange
from .presets import PRESETS, KroneckerBert5, KroneckerBert8, KroneckerBert21, kroneckerbert_groups
from .search import Choice, Matrix, SearchResult, model_matrices, search_shapes
from .shapes import divisors, factor_pairs, kronecker_flops, kronecker_params

__all__ = [
    "Choice",
    "Kronecker",
    "KroneckerBert5",
    "KroneckerBert8",
    "KroneckerBert21",
    "KroneckerEmbedding",
    "KroneckerLinear",
    "KroneckerOptions",
    "KroneckerTiedHead",
    "Matrix",
    "SearchResult",
    "divisors",
    "factor_pairs",
    "kron_sum",
    "kronecker_flops",
    "kronecker_params",
    "kroneckerbert_groups",
    "model_matrices",
    "nearest_kronecker",
    "rearrange",
    "search_shapes",
    "spec_cost",
]


@hookimpl
def compresskit_register_decompositions() -> list[type[Decomposition]]:
    return [Kronecker]


@hookimpl
def compresskit_register_presets() -> list[type[Preset]]:
    return list(PRESETS)
