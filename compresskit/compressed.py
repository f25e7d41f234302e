"""What a compressed module shows the modeling code that used to read the dense module it replaced.

Hugging Face modeling code reads more than ``forward``: T5's FFN casts its input to ``wo.weight.dtype``,
``resize_token_embeddings`` reads ``weight.shape``, PEFT and the Trainer read ``weight.requires_grad``,
``get_output_embeddings().weight`` is compared with the input embedding. A decomposition's module holds
factors, not a ``weight``. :class:`CompressedModuleMixin` gives it one:

- ``module.weight`` is a :class:`DenseWeightView`: a tensor with the dense weight's shape, dtype and
  device that owns no memory (a zero-stride view of one element). Reading its metadata (``shape``,
  ``dtype``, ``device``, ``ndim``, ``size()``, ``requires_grad``, ...) costs nothing; any other use (a
  matmul, ``.t()``, ``.clone()``, indexing) materialises ``dense_weight()`` first, through autograd, so
  gradients still reach the factors. The dense matrix is therefore built only when code really uses it.
- ``weight`` is read-only: assigning it (``tie_weights``, a user's ``module.weight = ...``) raises a
  :class:`~compresskit.errors.DecompositionError` naming the module and what to do instead.

Shape convention: ``(out_features, in_features)`` for a linear replacement (``nn.Linear`` layout) or
``(num_embeddings, embedding_dim)`` for an embedding; a replaced Hugging Face ``Conv1D`` shows its own
``(in, out)`` layout (``dense_layout = "conv1d"``, set by the walker).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from compresskit.errors import DecompositionError

_TENSOR_ATTRIBUTES: dict[str, Any] = dict(vars(torch._C.TensorBase))
#: Tensor attributes and methods answered from metadata alone (no dense matrix is built for them).
_METADATA_ONLY = frozenset(
    {
        *(_TENSOR_ATTRIBUTES[name].__get__ for name in ("dtype", "device", "shape", "ndim", "is_meta")),
        *(_TENSOR_ATTRIBUTES[name].__get__ for name in ("is_cuda", "layout")),
        torch.Tensor.size,
        torch.Tensor.dim,
        torch.Tensor.numel,
        torch.Tensor.nelement,
        torch.Tensor.element_size,
        torch.Tensor.is_floating_point,
        torch.Tensor.is_complex,
        torch.Tensor.get_device,
        torch.Tensor.__len__,
    }
)
_REQUIRES_GRAD = _TENSOR_ATTRIBUTES["requires_grad"].__get__


class DenseWeightView(torch.Tensor):
    """The dense weight of a compressed module, built only when an operation needs its values.

    Metadata reads are answered without computation; every other torch function receives
    ``owner.dense_weight()`` (in the owner's ``dense_layout``) in place of the view.
    """

    _owner: CompressedModuleMixin

    @staticmethod
    def __new__(cls, owner: CompressedModuleMixin) -> DenseWeightView:
        like = owner.factor_tensor()
        base = torch.empty((), dtype=like.dtype, device=like.device).expand(owner.dense_shape())
        view = torch.Tensor._make_subclass(cls, base, False)
        view._owner = owner
        return view

    def materialize(self) -> torch.Tensor:
        """The dense weight itself (differentiable with respect to the factors)."""
        return self._owner.layout_weight()

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA_ONLY:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func is _REQUIRES_GRAD:
            return any(p.requires_grad for p in args[0]._owner.parameters())
        args, kwargs = pytree.tree_map_only(DenseWeightView, lambda view: view.materialize(), (args, kwargs))
        return func(*args, **kwargs)

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        owner = type(self._owner).__name__
        shape, dtype, device = tuple(self.shape), self.dtype, self.device
        return f"DenseWeightView(shape={shape}, dtype={dtype}, device={device}, of {owner})"


class CompressedModuleMixin:
    """Mixin for the modules a decomposition builds (put it before ``nn.Module`` in the bases).

    Subclasses implement ``dense_weight()`` and have either ``in_features`` / ``out_features`` or
    ``num_embeddings`` / ``embedding_dim``. A module owning no factor of its own (a tied output layer)
    overrides :meth:`factor_tensor`.
    """

    #: ``"linear"``: ``weight`` is (out, in) / (vocab, dim); ``"conv1d"``: Hugging Face Conv1D (in, out).
    dense_layout: str = "linear"

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight as a lazy, read-only :class:`DenseWeightView` (see the module docstring)."""
        return DenseWeightView(self)

    def dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def dense_shape(self) -> tuple[int, int]:
        """Shape of ``weight`` in this module's ``dense_layout``, from its attributes alone."""
        if hasattr(self, "out_features") and hasattr(self, "in_features"):
            shape = (int(self.out_features), int(self.in_features))
        else:
            shape = (int(getattr(self, "num_embeddings")), int(getattr(self, "embedding_dim")))  # noqa: B009
        return (shape[1], shape[0]) if self.dense_layout == "conv1d" else shape

    def layout_weight(self) -> torch.Tensor:
        """``dense_weight()`` in this module's ``dense_layout``."""
        weight = self.dense_weight()
        return weight.t() if self.dense_layout == "conv1d" else weight

    def factor_tensor(self) -> torch.Tensor:
        """A tensor whose dtype and device are the module's (its first parameter)."""
        module: nn.Module = self  # type: ignore[assignment]
        for param in module.parameters():
            return param
        raise DecompositionError(f"{type(self).__name__} has no parameter to take its dtype and device from.")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight":
            raise DecompositionError(
                f"{type(self).__name__}.weight is read-only: it is computed from the module's factors "
                f"({', '.join(n for n, _ in self.named_parameters())}). To tie or replace it, work on the "  # type: ignore[attr-defined]
                "factors, or merge the model back to dense modules first (compresskit.merge(model))."
            )
        super().__setattr__(name, value)
