"""Tensor-network factorised linear layers backed by tensorly: ``tucker``, ``cp`` and ``tensor_train``.

Each decomposition tensorises the dense weight (factoring m and n), initialises its factors from
the nearest approximation that tensorly computes on its PyTorch backend (scoped, never left set
globally), and contracts the input with the factors in the forward pass without building W.
"""

from __future__ import annotations

import compresskit
from compresskit import hookimpl

from .cp import CP, CPLinear
from .tensor_train import TensorTrain, TTMatrixLinear
from .tucker import Tucker, TuckerLinear

__all__ = ["CP", "CPLinear", "TTMatrixLinear", "TensorTrain", "Tucker", "TuckerLinear"]


@hookimpl
def compresskit_register_decompositions() -> list[type[compresskit.Decomposition]]:
    return [Tucker, CP, TensorTrain]
