"""Register compresskit with transformers as soon as transformers' quantizer registry is imported.

``import compresskit`` must make ``AutoModel*.from_pretrained(compressed_folder)`` work, but importing
``transformers.quantizers.auto`` (which pulls in the modeling stack) on every ``import compresskit``
would slow every command, including those that never load a model. So :func:`install` registers right
away when that module is already imported, and otherwise adds a one-shot import hook that registers
the moment transformers imports it (``from_pretrained`` always does). Only the standard ``importlib``
protocol is used (a meta path finder that wraps the real loader); the hook removes itself once run.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

#: The transformers module holding the quantization registries (``register_quantizer`` & co).
TARGET = "transformers.quantizers.auto"


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else when it gets imported."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def _register() -> None:
    if "compresskit.hf_integration" in sys.modules:
        return  # being imported (its import of transformers got us here): it registers at its end
    try:
        from compresskit.hf_integration import register

        register()
    except Exception as exc:  # never break the user's transformers import
        warnings.warn(
            f"compresskit could not register its model format with transformers ({type(exc).__name__}: "
            f"{exc}); compressed folders load only through compresskit.load().",
            stacklevel=2,
        )


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of :data:`TARGET` so registration runs after it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, finder: _RegisterAfterImport) -> None:
        self.inner, self.finder = inner, finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        _register()
