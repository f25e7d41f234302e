"""Measured dispatch: a compressed layer runs the fastest of its exact formulations, chosen by a timed probe.

A factorised layer (Kronecker, low-rank, tensor network) can compute the same map in several ways (the
association order of its products, one GEMM over all tokens or a batched product per token, a dense weight
rebuilt once in inference mode, ...). Which one is fastest depends on the shape, the number of tokens, the
dtype, the thread count, the device and whether gradients are needed, so it is measured, like cuDNN's
benchmark mode: the first call in a *regime* (see :class:`Regime`) times every candidate on random inputs of
the same shape (an untimed warm-up, then ``PROBE_ROUNDS`` interleaved rounds, median; a candidate more than
``DROP_FACTOR`` times slower than the best in the first round is not timed further) and caches the winner
for the process. Every formulation is exact up to floating-point rounding, so the choice changes results
only at rounding level (relative ~1e-6 in float32). So that one config and seed give bit-identical results
on one machine, the choices persist in a per-user cache file by default (``$XDG_CACHE_HOME`` or
``~/.cache``, ``compresskit/dispatch.json``): the second run of anything takes the first run's paths
without probing. Several processes may share the file (each write merges what is on disk).

Control (environment variables are read at each new choice; the Python calls override them):

* ``COMPRESSKIT_DISPATCH`` = ``measure`` (default) | ``heuristic`` (no timing: the layer's static choice);
* ``COMPRESSKIT_DISPATCH_FORCE`` = ``family=formulation[,family=formulation...]``, e.g.
  ``kronecker_linear=dense`` (families and formulations: :func:`formulations`);
* ``COMPRESSKIT_DISPATCH_CACHE`` = a JSON file: choices are read from it and new ones written to it, so a
  second run takes exactly the same paths without probing (default: the per-user file above; ``off``:
  keep choices in memory only, each process probing afresh);
* :func:`set_mode`, :func:`force` (a context manager), :func:`table` (every choice with its timings),
  :func:`clear`.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from compresskit.errors import CompressKitError

ENV_MODE = "COMPRESSKIT_DISPATCH"
ENV_FORCE = "COMPRESSKIT_DISPATCH_FORCE"
ENV_CACHE = "COMPRESSKIT_DISPATCH_CACHE"
MODES = ("measure", "heuristic")

#: Timed rounds per candidate after the warm-up (the median is kept).
PROBE_ROUNDS = 3
#: A candidate this many times slower than the best in the first timed round is not timed further.
DROP_FACTOR = 3.0
#: Probes run on at most this many tokens (rows): the ranking is stable beyond it and the probe stays short.
PROBE_MAX_TOKENS = 2048


class DispatchError(CompressKitError):
    """A forced formulation or a dispatch setting that does not exist."""


@dataclass(frozen=True)
class Regime:
    """What a choice depends on besides the layer's shape: ``tokens`` is the power-of-two bucket of the
    number of rows (tokens) of the call, ``training`` whether gradients are computed."""

    tokens: int
    dtype: str
    threads: int
    device: str
    training: bool


@dataclass
class Choice:
    """One cached decision: the chosen formulation and the probe's median milliseconds per candidate."""

    family: str
    signature: str
    regime: Regime
    chosen: str
    how: str
    ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "regime": asdict(self.regime)}


_FAMILIES: dict[str, tuple[str, ...]] = {}
_CACHE: dict[tuple[str, str, Regime], Choice] = {}
_STATE: dict[str, Any] = {"mode": None, "force": {}, "loaded": None}


def register_family(family: str, names: Sequence[str]) -> None:
    """Declare the formulations of a layer family (used to validate forced names)."""
    _FAMILIES[family] = tuple(names)


def formulations() -> dict[str, tuple[str, ...]]:
    """Family -> its formulation names, for every family registered so far."""
    return dict(_FAMILIES)


def bucket(tokens: int) -> int:
    """The power of two at or above ``tokens`` (1, 2, 4, ...)."""
    return 1 << max(0, int(tokens) - 1).bit_length()


def regime(tokens: int, dtype: torch.dtype, device: torch.device, training: bool) -> Regime:
    """The :class:`Regime` of a call on ``tokens`` rows."""
    return Regime(
        bucket(tokens), str(dtype).removeprefix("torch."), torch.get_num_threads(), device.type, training
    )


def set_mode(mode: str | None) -> None:
    """``"measure"`` or ``"heuristic"`` for this process (``None``: back to ``COMPRESSKIT_DISPATCH``)."""
    if mode is not None and mode not in MODES:
        raise DispatchError(f"dispatch mode {mode!r} is not one of {', '.join(MODES)}.")
    _STATE["mode"] = mode


@contextlib.contextmanager
def force(choices: Mapping[str, str]) -> Iterator[None]:
    """Within the block, every layer of family ``f`` runs formulation ``choices[f]`` (no probe, no cache)."""
    for family, name in choices.items():
        _check_forced(family, name, "force()")
    saved = dict(_STATE["force"])
    _STATE["force"] = {**saved, **choices}
    try:
        yield
    finally:
        _STATE["force"] = saved


def clear() -> None:
    """Forget every cached choice of this process (a cache file is not touched)."""
    _CACHE.clear()
    _STATE["loaded"] = None


def table() -> list[dict[str, Any]]:
    """Every choice made so far in this process, as JSON-able dicts (for benchmark reports)."""
    return [choice.to_dict() for choice in _CACHE.values()]


def choose(
    family: str,
    signature: str,
    current: Regime,
    heuristic: str,
    candidates: Sequence[str],
    probe: Callable[[str], Callable[[], object]],
) -> str:
    """The formulation to run for one call.

    ``probe(name)`` returns a zero-argument callable running that formulation once on probe inputs of the
    call's shape (forward, and backward when ``current.training``); it is only used on a cache miss in
    ``measure`` mode. ``heuristic`` is the layer's static choice (used in ``heuristic`` mode and while
    ``torch.compile`` / ONNX export trace the model, where nothing is timed).
    """
    forced = _forced(family)
    if forced is not None:
        return forced
    if _mode() == "heuristic" or tracing():
        return heuristic
    key = (family, signature, current)
    _load_cache_file()
    cached = _CACHE.get(key)
    if cached is not None and cached.chosen in candidates:
        return cached.chosen
    if len(candidates) == 1:
        choice = Choice(family, signature, current, candidates[0], "only")
    else:
        chosen, ms = _measure(candidates, probe)
        choice = Choice(family, signature, current, chosen, "measured", ms)
    _CACHE[key] = choice
    _save_cache_file()
    return choice.chosen


def _measure(
    candidates: Sequence[str], probe: Callable[[str], Callable[[], object]]
) -> tuple[str, dict[str, float]]:
    runs = {name: probe(name) for name in candidates}
    for run in runs.values():  # warm-up: first-call costs (lazy imports, allocator growth) are not timed
        run()
    first = {name: _timed(run) for name, run in runs.items()}
    alive = [name for name in candidates if first[name] <= DROP_FACTOR * min(first.values())]
    samples: dict[str, list[float]] = {name: [first[name]] for name in alive}
    for _ in range(PROBE_ROUNDS - 1):
        for name in alive:
            samples[name].append(_timed(runs[name]))
    ms = {name: round(statistics.median(v) * 1e3, 4) for name, v in samples.items()}
    ms.update({name: round(first[name] * 1e3, 4) for name in candidates if name not in samples})
    return min(alive, key=lambda name: ms[name]), ms


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _mode() -> str:
    mode = _STATE["mode"] or os.environ.get(ENV_MODE, "measure") or "measure"
    if mode not in MODES:
        raise DispatchError(
            f"{ENV_MODE}={mode!r} is not a dispatch mode; use one of {', '.join(MODES)} (or unset it)."
        )
    return str(mode)


def _forced(family: str) -> str | None:
    if family in _STATE["force"]:
        return str(_STATE["force"][family])
    text = os.environ.get(ENV_FORCE, "").strip()
    if not text:
        return None
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise DispatchError(
                f"{ENV_FORCE}={text!r}: {item!r} is not family=formulation; e.g. kronecker_linear=dense."
            )
        if name.strip() == family:
            _check_forced(family, value.strip(), ENV_FORCE)
            return value.strip()
    return None


def _check_forced(family: str, name: str, where: str) -> None:
    known = _FAMILIES.get(family)
    if known is None:
        listed = ", ".join(sorted(_FAMILIES)) or "none registered yet"
        raise DispatchError(f"{where}: unknown layer family {family!r}; known families: {listed}.")
    if name not in known:
        raise DispatchError(
            f"{where}: {family} has no formulation {name!r}; choose one of {', '.join(known)}."
        )


def default_cache_path() -> Path:
    """The per-user cache file used when ``COMPRESSKIT_DISPATCH_CACHE`` is not set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "compresskit" / "dispatch.json"


def _cache_path() -> Path | None:
    text = os.environ.get(ENV_CACHE)
    if text is None:
        return default_cache_path()
    text = text.strip()
    return None if text.lower() in ("", "off", "none") else Path(text)


def _load_cache_file() -> None:
    path = _cache_path()
    if path is None or _STATE["loaded"] == str(path) or not path.exists():
        return
    for choice in _read_cache_file(path):
        _CACHE.setdefault((choice.family, choice.signature, choice.regime), choice)
    _STATE["loaded"] = str(path)


def _read_cache_file(path: Path) -> list[Choice]:
    try:
        return [
            Choice(
                entry["family"],
                entry["signature"],
                Regime(**entry["regime"]),
                entry["chosen"],
                entry.get("how", "file"),
                entry.get("ms", {}),
            )
            for entry in json.loads(path.read_text())
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise DispatchError(
            f"{ENV_CACHE}={path}: not a dispatch cache written by compresskit ({exc}). "
            f"Delete the file or point the variable at another path ({ENV_CACHE}=off keeps choices "
            "in memory)."
        ) from None


def _save_cache_file() -> None:
    """Write this process's choices, merged with what other processes wrote meanwhile (theirs first:
    a choice already on disk is the one every later run replays)."""
    path = _cache_path()
    if path is None:
        return
    try:
        on_disk = _read_cache_file(path) if path.exists() else []
    except DispatchError:
        on_disk = []  # an unreadable file is replaced by this process's choices
    merged = {(c.family, c.signature, c.regime): c for c in on_disk}
    for key, choice in _CACHE.items():
        merged.setdefault(key, choice)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([c.to_dict() for c in merged.values()], indent=1))
    tmp.replace(path)
    _STATE["loaded"] = str(path)


# ---------------------------------------------------------------- helpers for layers


def tracing() -> bool:
    """True while torch.compile / export / ONNX export / TorchScript trace a model (nothing is timed)."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether a call records a backward (the ``training`` regime)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def probe_generator(device: torch.device) -> torch.Generator:
    """A private generator for probe inputs, so probing never moves the global random state."""
    return torch.Generator(device=device).manual_seed(0)


class WeightCache:
    """A dense weight rebuilt only when a tensor it is built from changed (in place, moved or reloaded).

    Used in inference only: the cached tensor is built under ``no_grad``. It costs the memory of the
    dense weight while it is held; :meth:`clear` drops it.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._weight: torch.Tensor | None = None

    def get(self, sources: Sequence[torch.Tensor], build: Callable[[], torch.Tensor]) -> torch.Tensor:
        if any(t.is_inference() for t in sources):  # no version counter: an in-place change is invisible
            with torch.no_grad():
                return build()
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in sources)
        if self._weight is None or key != self._key:
            with torch.no_grad():
                self._weight = build()
            self._key = key
        return self._weight

    def clear(self) -> None:
        self._key, self._weight = None, None


FACTORED_OR_DENSE = ("factored", "dense")


class FactoredOrDense:
    """Mixin for a factorised linear layer: runs ``factored_forward`` or ``F.linear`` with ``dense_weight()``.

    List it after the ``nn.Module`` base (its stubs must not shadow the layer's methods). The subclass
    sets ``dispatch_family`` (registered with :func:`register_family` under :data:`FACTORED_OR_DENSE`),
    implements ``factored_forward(x2)`` for rows x2 (N, in_features) with the bias added,
    ``dense_weight()`` (out, in) and ``dispatch_signature()``. In inference ``dense`` uses a weight built
    once (:class:`WeightCache`); in training the dense weight is rebuilt each call and its
    gradient flows back to the factors through autograd. ``formulation`` pins one of the two.
    """

    dispatch_family: ClassVar[str] = ""
    formulation: str | None = None

    def factored_forward(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def dispatch_signature(self) -> str:
        raise NotImplementedError

    def dispatched_forward(self, x: torch.Tensor) -> torch.Tensor:
        """y (..., out) for x (..., in), by the chosen formulation."""
        module: Any = self
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        params = list(module.parameters())
        training = needs_grad(x2, *params)
        name = self.formulation or ("factored" if tracing() else self._choose(x2, training))
        if name == "dense":
            weight = self.dense_weight() if training or tracing() else self._cached_weight(params)
            y = torch.nn.functional.linear(x2, weight.to(x2.dtype), module.bias)
        else:
            y = self.factored_forward(x2)
        return y.reshape(*lead, y.shape[-1])

    def _cached_weight(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        cache = self.__dict__.get("_weight_cache")
        if cache is None:
            cache = self.__dict__["_weight_cache"] = WeightCache()
        return cache.get(params, self.dense_weight)

    def _choose(self, x2: torch.Tensor, training: bool) -> str:
        current = regime(x2.shape[0], x2.dtype, x2.device, training)
        rows = min(int(x2.shape[0]), PROBE_MAX_TOKENS)

        def probe(name: str) -> Callable[[], object]:
            return _module_probe(self, name, rows, x2, training)

        return choose(
            self.dispatch_family, self.dispatch_signature(), current, "factored", FACTORED_OR_DENSE, probe
        )


def _module_probe(
    layer: Any, name: str, rows: int, like: torch.Tensor, training: bool
) -> Callable[[], object]:
    """One call of ``name`` on a private copy of ``layer`` (its gradients never reach the real parameters)."""
    import copy

    twin = copy.deepcopy(layer)
    twin.formulation = name
    twin.__dict__.pop("_weight_cache", None)
    x = torch.randn(
        rows, like.shape[-1], generator=probe_generator(like.device), dtype=like.dtype, device=like.device
    )
    if not training:
        twin.requires_grad_(False)
        return lambda: twin(x)
    x.requires_grad_(True)

    def step() -> None:
        with torch.enable_grad():
            twin(x).sum().backward()
        twin.zero_grad(set_to_none=True)
        x.grad = None

    return step
