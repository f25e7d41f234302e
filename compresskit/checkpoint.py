"""Atomic training checkpoints: model, optimizer, scheduler, scaler, RNG states and data position.

Layout under a run's ``output_dir``::

    checkpoints/
      checkpoint-00000042/       one complete checkpoint (step 42)
        model.safetensors        the trained model's state dict (shared tensors stored once)
        optimizer.pt             optimizer state dict
        scheduler.pt             learning-rate scheduler state dict
        scaler.pt                fp16 gradient scaler state dict (only with fp16)
        rng.pt                   python / numpy / torch (CPU and CUDA) RNG states
        trainer_state.json       step, epoch, batches consumed in the epoch, best metric, loss history,
                                 run fingerprint
        COMPLETE                 written last: a folder without it is never taken for a checkpoint
      latest                     name of the newest complete checkpoint (replaced atomically)
      best                       name of the checkpoint with the best primary metric

A checkpoint is first written to ``checkpoint-XXXXXXXX.tmp/``; every file is flushed and fsynced, the
``COMPLETE`` marker is written, and only then is the folder renamed to its final name and the ``latest``
pointer replaced with :func:`os.replace`. A crash at any moment therefore leaves either the previous
checkpoint or the new one, never a half-written folder that a resume would trust.

Everything is read back with ``torch.load(weights_only=True)``: a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit.errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
BEST_POINTER = "best"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
PREFIX = "checkpoint-"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder read back from disk (tensors on the CPU)."""

    path: Path
    state: dict[str, Any]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any] | None

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at optimizer step ``step``: ``checkpoint-00000042``."""
    return f"{PREFIX}{step:08d}"


# --------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and every CUDA device) RNG states, as ``weights_only``-safe data."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the RNG states saved by :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- writing


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pointer(root: Path, pointer: str, target: str) -> None:
    """Atomically make ``root/pointer`` contain ``target`` (write a temporary file, then ``os.replace``)."""
    tmp = root / f".{pointer}.tmp"
    try:
        tmp.write_text(target + "\n", encoding="utf-8")
        _fsync_file(tmp)
        os.replace(tmp, root / pointer)
    except OSError:
        tmp.unlink(missing_ok=True)  # the old pointer stays; find_latest() also scans the folders
        raise
    _fsync_dir(root)


def read_pointer(root: Path, pointer: str) -> Path | None:
    """The complete checkpoint a pointer file names, or ``None`` when missing or not complete."""
    file = root / pointer
    if not file.is_file():
        return None
    name = file.read_text(encoding="utf-8").strip()
    folder = root / name
    return folder if name.startswith(PREFIX) and is_complete(folder) else None


def write_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    state: Mapping[str, Any],
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    scaler: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` under ``root`` atomically and point ``latest`` at it.

    ``model`` is the unwrapped model (its state dict is saved with safetensors); ``state`` must be
    JSON-able. Returns the final folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / (checkpoint_name(step) + TMP_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_files(tmp, step, model, state, optimizer, scheduler, scaler, rng)
    except BaseException as exc:  # nothing half-written stays behind, whatever stopped the write
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and _is_storage_failure(exc):
            previous = find_latest(root)
            intact = (
                f"the previous checkpoint {previous} is intact" if previous else "no checkpoint existed yet"
            )
            raise _storage_failure(exc, f"the checkpoint of step {step} under {root}", intact) from exc
        raise
    if final.exists():  # the same step written again (e.g. a final checkpoint after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_pointer(root, LATEST_POINTER, final.name)
    return final


def _write_files(
    tmp: Path,
    step: int,
    model: torch.nn.Module,
    state: Mapping[str, Any],
    optimizer: Mapping[str, Any] | None,
    scheduler: Mapping[str, Any] | None,
    scaler: Mapping[str, Any] | None,
    rng: Mapping[str, Any] | None,
) -> None:
    """Every file of one checkpoint, flushed and fsynced, then the ``COMPLETE`` marker."""
    from safetensors.torch import save_model

    tmp.mkdir()
    save_model(model, str(tmp / MODEL_FILE))
    for name, payload in (
        ("optimizer", optimizer),
        ("scheduler", scheduler),
        ("scaler", scaler),
        ("rng", rng),
    ):
        if payload is not None:
            torch.save(dict(payload), tmp / f"{name}.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    for file in tmp.iterdir():
        _fsync_file(file)
    (tmp / COMPLETE_MARKER).write_text(str(step), encoding="utf-8")
    _fsync_file(tmp / COMPLETE_MARKER)
    _fsync_dir(tmp)


def _is_storage_failure(exc: BaseException) -> bool:
    from compresskit.run_recovery import is_storage_failure

    return is_storage_failure(exc)


def _storage_failure(exc: BaseException, what: str, intact: str) -> Exception:
    from compresskit.run_recovery import storage_failure

    return storage_failure(exc, what, intact)


# --------------------------------------------------------------------------- reading


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished checkpoint (renamed from ``.tmp`` and carrying the marker)."""
    return (
        folder.is_dir()
        and folder.name.startswith(PREFIX)
        and not folder.name.endswith(TMP_SUFFIX)
        and (folder / COMPLETE_MARKER).is_file()
        and (folder / STATE_FILE).is_file()
    )


def complete_checkpoints(root: Path) -> list[Path]:
    """Every complete checkpoint folder under ``root``, oldest step first; half-written ones are ignored."""
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if is_complete(p)]
    return sorted(folders, key=_step_of)


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name[len(PREFIX) :])
    except ValueError:
        return -1


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint: the ``latest`` pointer, else the highest complete step."""
    candidates = complete_checkpoints(root)
    pointed = read_pointer(root, LATEST_POINTER)
    if pointed is not None and (not candidates or _step_of(pointed) >= _step_of(candidates[-1])):
        return pointed
    return candidates[-1] if candidates else None


def _load_torch(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        loaded: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return loaded
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"cannot read {path} ({reason}). The checkpoint is damaged; delete its folder {path.parent} "
            "to resume from the previous one, or start fresh in another output_dir."
        ) from exc


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read a complete checkpoint (everything but the model weights, which :func:`load_model` reads)."""
    if not is_complete(folder):
        raise CheckpointError(
            f"{folder} is not a complete checkpoint (no {COMPLETE_MARKER} marker or no {STATE_FILE})."
        )
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {folder / STATE_FILE}: {exc}.") from exc
    return Checkpoint(
        path=folder,
        state=state,
        optimizer=_load_torch(folder / "optimizer.pt"),
        scheduler=_load_torch(folder / "scheduler.pt"),
        scaler=_load_torch(folder / "scaler.pt"),
        rng=_load_torch(folder / "rng.pt"),
    )


def load_model(model: torch.nn.Module, folder: Path) -> None:
    """Load the weights saved in checkpoint ``folder`` into ``model`` (in place, strict)."""
    from safetensors.torch import load_model as st_load_model

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        missing, unexpected = st_load_model(model, str(folder / MODEL_FILE), strict=False, device=str(device))
    except Exception as exc:
        raise CheckpointError(f"cannot load the model weights of {folder}: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"the model weights in {folder} do not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}. The checkpoint belongs to another model; use another "
            "output_dir or restart."
        )


# --------------------------------------------------------------------------- fingerprints and pruning


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for every key whose value differs between two fingerprints."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"  {key}: checkpoint has {_short(old)}, this run has {_short(new)}")
    return lines


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fingerprint(folder: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` when a checkpoint was written by a different run."""
    diffs = fingerprint_differences(saved, current)
    if diffs:
        raise CheckpointError(
            f"cannot resume from {folder}: it was written by a different run.\n"
            + "\n".join(diffs)
            + "\nTo start fresh, use another output directory or restart (CLI `--restart`, "
            "Python `Trainer(..., resume=False)`, which moves the old checkpoints aside)."
        )


def prune(root: Path, keep: int, protect: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (never those in ``protect``); return them."""
    folders = complete_checkpoints(root)
    doomed = [f for f in folders[: max(len(folders) - keep, 0)] if f not in protect]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    for leftover in root.glob(f"{PREFIX}*{TMP_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    return doomed
