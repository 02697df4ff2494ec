"""Atomic safetensors files for supernet weights and resumable training checkpoints.

A checkpoint is one safetensors file: the model weights under ``model.*``, the optimiser state
under ``optim.*``, and a JSON document (step, study, study key) in the file's metadata. Files are
written to a temporary name in the same folder, flushed to disk, then renamed over the old one,
so a crash mid-write (even ``kill -9``) leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from exitnas.errors import CheckpointError
from exitnas.faults import kill_point

__all__ = [
    "atomic_write",
    "load_checkpoint",
    "load_weights",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "remove_stale_temporaries",
    "restore_checkpoint",
    "save_checkpoint",
    "save_weights",
]

_META_KEY = "exitnas"


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it, rename it over ``path``.

    Readers see the old file or the new one, never a torn one, even after ``kill -9``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp (and safetensors, which recreates the file) make 0600
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` in one rename (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete temporary files a killed :func:`atomic_write` left in ``folder``."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _tensors_writer(
    tensors: dict[str, torch.Tensor], meta: dict, point: str | None = None
) -> Callable[[str], None]:
    """``write(tmp)`` for :func:`atomic_write`: a safetensors file, then kill ``point``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)})
        if point is not None:
            kill_point(point)  # written, not renamed: the old file is still the one in place

    return write


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically."""
    atomic_write(path, _tensors_writer(tensors, meta))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_weights`.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not written by exitnas.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({err})") from None
    return tensors, read_weights_meta(path)


def read_weights_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`save_weights` wrote, read from the file's header only.

    Raises:
        CheckpointError: the file is missing, its header is corrupt, or it was not written by
            exitnas.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            meta_text = (handle.metadata() or {}).get(_META_KEY)
        meta = json.loads(meta_text) if meta_text else None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} was not written by exitnas (no exitnas metadata)")
    return meta


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Flatten an optimiser's state into tensors (``optim.<param>.<name>``) and JSON groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{index}.{name}"] = tensor
    return tensors, state["param_groups"]


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], groups: list) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> None:
    """Atomically write model weights, optimiser state and ``meta`` (step, study) to ``path``."""
    optim_tensors, groups = optimizer_to_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    meta = {**meta, "param_groups": groups}
    atomic_write(path, _tensors_writer(tensors, meta, "checkpoint-temp-written"))


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` from ``path`` and return its metadata."""
    tensors, meta = load_weights(path)
    restore_checkpoint(path, tensors, meta, model, optimizer)
    return meta


def restore_checkpoint(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load what :func:`load_weights` read from checkpoint ``path`` into the model/optimiser."""
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_from_tensors(optim_state, meta["param_groups"]))
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not match this supernet: {first}") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
