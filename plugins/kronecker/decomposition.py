"""The ``kronecker`` decomposition: Linear / HF Conv1D / Embedding → Kronecker layers (KroneckerBERT).

Options (one of the shape options, or ``target_ratio``):

* ``a_shape`` = (m1, n1) or ``b_shape`` = (m2, n2): the other factor follows from the matrix
  (m1·m2 = out, n1·n2 = in). For an ``Embedding`` (v×d), B must be a row vector (1, n), or give
  ``embedding_n`` = n; A is then (v, d/n).
* ``num_terms`` R: W ≈ Σ_{r=1..R} A_r⊗B_r, 1 ≤ R ≤ min(m1·n1, m2·n2).
* ``target_ratio``: choose the shape per matrix so that dense weight / factor parameters ≈ ratio
  (biases excluded), minimising ``objective`` ("flops": Eq. 7 FLOPs; "error": the nearest-Kronecker
  reconstruction error, which needs real weights).
* ``svd``: "auto" | "torch" | "scipy" | "tensorly" backend of the nearest-Kronecker initialisation.

Specs are JSON-able, e.g. ``{"kind": "linear", "m": 768, "n": 768, "a_shape": [384, 48],
"b_shape": [2, 16], "num_terms": 1, "bias": true, "module": "encoder.layer.0.attention.self.query"}``
(``module`` is only used in messages); ``build(..., initialize=False)`` recreates the structure from the
spec alone, without any SVD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from compresskit import (
    Cost,
    Decomposition,
    DecompositionError,
    class_names,
    dense_bias,
    dense_weight,
    linear_shape,
)

from .embedding import KroneckerEmbedding
from .layers import KroneckerLinear
from .nearest import SvdBackend, check_finite
from .search import choose_embedding_n, choose_linear_shape
from .shapes import check_terms, divisors, kronecker_flops, kronecker_params, resolve_shapes


@dataclass(frozen=True)
class KroneckerOptions:
    """Options of the ``kronecker`` decomposition (see the module docstring)."""

    a_shape: tuple[int, int] | None = None
    b_shape: tuple[int, int] | None = None
    embedding_n: int | None = None
    num_terms: int = 1
    target_ratio: float | None = None
    objective: Literal["flops", "error"] = "flops"
    svd: SvdBackend = "auto"

    def __post_init__(self) -> None:
        for label in ("a_shape", "b_shape"):
            shape = getattr(self, label)
            if shape is not None and min(shape) < 1:
                raise ValueError(f"{label} must hold two positive integers, got {shape}")
        if self.num_terms < 1:
            raise ValueError(f"num_terms must be at least 1, got {self.num_terms}")
        if self.embedding_n is not None and self.embedding_n < 1:
            raise ValueError(f"embedding_n must be positive, got {self.embedding_n}")
        if self.target_ratio is not None and self.target_ratio <= 1:
            raise ValueError(f"target_ratio must be > 1, got {self.target_ratio}")
        explicit = self.a_shape is not None or self.b_shape is not None or self.embedding_n is not None
        if self.target_ratio is not None and explicit:
            raise ValueError(
                "give either a shape (a_shape / b_shape / embedding_n) or target_ratio, not both"
            )


class Kronecker(Decomposition):
    """Kronecker-product layers initialised by the nearest-Kronecker SVD (Tahaei et al., NAACL 2022)."""

    name = "kronecker"
    Options = KroneckerOptions
    module_types = ("Linear", "Conv1D", "Embedding")
    options: KroneckerOptions

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        where = name or type(module).__name__
        if not self.handles(module):
            raise DecompositionError(
                f"{where}: {type(module).__name__} is not a Linear, Conv1D or Embedding; "
                "the kronecker decomposition cannot replace it."
            )
        check_finite(dense_weight(module), where)
        if _is_embedding(module):
            return self._embedding_spec(module, where)
        return self._linear_spec(module, where)

    def _linear_spec(self, module: nn.Module, where: str) -> dict[str, Any]:
        m, n = linear_shape(module)
        opts = self.options
        if opts.embedding_n is not None:
            raise DecompositionError(f"{where}: embedding_n applies to Embedding modules only; use a_shape.")
        if opts.target_ratio is not None:
            weight = dense_weight(module) if opts.objective == "error" else None
            a, num_terms = choose_linear_shape(m, n, opts.target_ratio, opts.objective, weight, where)
            a, b = resolve_shapes(m, n, a, None, where)
        else:
            a, b = resolve_shapes(m, n, opts.a_shape, opts.b_shape, where)
            num_terms = opts.num_terms
        check_terms(num_terms, a, b, where)
        return {
            "kind": "linear",
            "m": m,
            "n": n,
            "a_shape": list(a),
            "b_shape": list(b),
            "num_terms": num_terms,
            "bias": dense_bias(module) is not None,
            "module": where,
        }

    def _embedding_spec(self, module: nn.Module, where: str) -> dict[str, Any]:
        vocab, dim = (int(s) for s in dense_weight(module).shape)
        n = self._embedding_n(vocab, dim, where)
        if n < 1 or dim % n:
            raise DecompositionError(
                f"{where}: B = (1, {n}) does not divide the embedding dimension {dim}; "
                f"valid n (divisors of {dim}): {', '.join(map(str, divisors(dim)))}."
            )
        check_terms(self.options.num_terms, (vocab, dim // n), (1, n), where)
        return {
            "kind": "embedding",
            "num_embeddings": vocab,
            "embedding_dim": dim,
            "a_shape": [vocab, dim // n],
            "b_shape": [1, n],
            "num_terms": self.options.num_terms,
            "padding_idx": getattr(module, "padding_idx", None),
            "module": where,
        }

    def _embedding_n(self, vocab: int, dim: int, where: str) -> int:
        opts = self.options
        if opts.target_ratio is not None:
            return choose_embedding_n(dim, opts.target_ratio)
        if opts.embedding_n is not None:
            return opts.embedding_n
        if opts.b_shape is not None:
            if opts.b_shape[0] != 1:
                raise DecompositionError(
                    f"{where}: an embedding's B must be a row vector (1, n) so that a lookup is one row "
                    f"of A times B; got b_shape {opts.b_shape}. Use b_shape = [1, n] or embedding_n = n "
                    f"with n dividing {dim}."
                )
            return opts.b_shape[1]
        if opts.a_shape is not None:
            if opts.a_shape[0] != vocab or dim % opts.a_shape[1]:
                raise DecompositionError(
                    f"{where}: an embedding's A must be ({vocab}, d/n) with d/n dividing {dim}; got "
                    f"a_shape {opts.a_shape}. Prefer embedding_n = n."
                )
            return dim // opts.a_shape[1]
        raise DecompositionError(
            f"{where}: no factor shape for the {vocab}x{dim} embedding; set embedding_n (or b_shape = "
            f"[1, n]) with n dividing {dim} ({', '.join(map(str, divisors(dim)))}), or target_ratio."
        )

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        where = str(spec.get("module") or type(module).__name__)
        _check_spec_fits(module, spec, where)
        if spec["kind"] == "embedding":
            return KroneckerEmbedding.from_embedding(
                module,  # type: ignore[arg-type]
                int(spec["b_shape"][1]),
                int(spec["num_terms"]),
                svd=self.options.svd,
                initialize=initialize,
                name=where,
            )
        return KroneckerLinear.from_linear(
            module,
            a_shape=(int(spec["a_shape"][0]), int(spec["a_shape"][1])),
            num_terms=int(spec["num_terms"]),
            svd=self.options.svd,
            initialize=initialize,
            name=where,
        )

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        return spec_cost(spec, tokens)

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        """B = (1, 1): A is the whole matrix (times a scalar), so one term reproduces W exactly."""
        return {"b_shape": [1, 1]}


def spec_cost(spec: Mapping[str, Any], tokens: int = 128) -> Cost:
    """Parameters and FLOPs of the layer a spec describes (bias kept; embedding lookups cost 0 FLOPs)."""
    a = (int(spec["a_shape"][0]), int(spec["a_shape"][1]))
    b = (int(spec["b_shape"][0]), int(spec["b_shape"][1]))
    terms = int(spec["num_terms"])
    params = kronecker_params(a, b, terms)
    if spec["kind"] == "embedding":
        return Cost(params, 0)
    bias = a[0] * b[0] if spec.get("bias") else 0
    return Cost(params + bias, kronecker_flops(a, b, terms, tokens))


def _is_embedding(module: nn.Module) -> bool:
    return "Embedding" in class_names(module)


def _check_spec_fits(module: nn.Module, spec: Mapping[str, Any], where: str) -> None:
    kind = spec.get("kind")
    if kind not in ("linear", "embedding") or (kind == "embedding") != _is_embedding(module):
        raise DecompositionError(
            f"{where}: spec kind {kind!r} does not fit a {type(module).__name__}; expected "
            f"{'embedding' if _is_embedding(module) else 'linear'}. Was the plan made for another model?"
        )
    shape = tuple(int(s) for s in dense_weight(module).shape) if kind == "embedding" else linear_shape(module)
    a, b = spec["a_shape"], spec["b_shape"]
    if (a[0] * b[0], a[1] * b[1]) != shape:
        raise DecompositionError(
            f"{where}: spec shapes A {tuple(a)} ⊗ B {tuple(b)} give a {a[0] * b[0]}x{a[1] * b[1]} "
            f"matrix but the module's is {shape[0]}x{shape[1]}. Was the plan made for another model?"
        )
