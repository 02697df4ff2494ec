"""Reading a pretrained timm ``VisionTransformer`` checkpoint, and its dims.

:func:`load_vit_state` reads a ViT state dict from a safetensors or torch file (no code runs),
:func:`vit_dims` reads its dims from the tensor shapes and :func:`check_vit` checks them
against a study's backbone; the number of heads is in no shape, so
:func:`recorded_num_heads` reads it from the file's metadata when recorded there.
:mod:`~exitnas.supernet.pretrained` maps a checked state dict into the supernet.

Example:
    >>> state = load_vit_state("runs/cifar10-baseline/vit.safetensors")
    >>> dims = check_vit(state, study.space, num_heads=recorded_num_heads(path))
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from exitnas.errors import CheckpointError
from exitnas.spaces import SearchSpace

__all__ = ["VitDims", "check_vit", "load_vit_state", "recorded_num_heads", "vit_dims"]

_REQUIRED = (
    "patch_embed.proj.weight",
    "pos_embed",
    "cls_token",
    "blocks.0.attn.qkv.weight",
    "blocks.0.mlp.fc1.weight",
)


@dataclass(frozen=True)
class VitDims:
    """A timm ViT's dims, read from its state dict's tensor shapes."""

    embed_dim: int  # token width
    depth: int  # number of blocks
    num_heads: int | None  # from the file's metadata; None: not recorded
    mlp_hidden: int  # hidden width of each block's MLP
    in_chans: int  # image channels
    qkv_bias: bool  # bias on the query/key/value projection
    patch_size: int  # square patches
    grid: int  # tokens per side of its position embedding
    num_classes: int  # classifier outputs; 0 without a classifier
    class_pos: bool  # the position embedding has a class-token position first (timm's default)

    @property
    def img_size(self) -> int:
        return self.grid * self.patch_size


def load_vit_state(path: str | Path) -> dict[str, Tensor]:
    """A timm ``VisionTransformer`` state dict from a safetensors or torch file.

    A torch file is read with ``weights_only=True`` (no code runs); a dict wrapping the state
    dict under ``"state_dict"`` or ``"model"`` (timm's training checkpoints) is unwrapped.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no ViT state dict.
    """
    path = Path(path)
    where = f"--init {path}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file")
    try:
        if path.suffix == ".safetensors":
            loaded: object = load_file(path)
        else:
            with warnings.catch_warnings():  # e.g. on the pickle protocol: the error says more
                warnings.simplefilter("ignore", UserWarning)
                loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{where}: holds objects other than tensors, refused (loading them could run code); "
            "save the ViT's state_dict() with torch.save or safetensors"
        ) from None
    except (
        SafetensorError,
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
    ) as err:
        kind = "safetensors" if path.suffix == ".safetensors" else "torch (weights only)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{where}: unreadable or corrupt {kind} file ({first})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{where}: holds a {type(loaded).__name__}, not a state dict")
    state = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, Tensor)}
    vit_dims(state, where=where)  # a ViT at all?
    return state


def vit_dims(
    state: dict[str, Tensor], num_heads: int | None = None, where: str = "init"
) -> VitDims:
    """The dims of the ViT whose state dict is ``state`` (timm's names).

    Raises:
        CheckpointError: ``state`` is not a timm ``VisionTransformer`` state dict.
    """
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(
            f"{where}: not a timm VisionTransformer state dict (no {', '.join(missing)})"
        )
    if "reg_token" in state:
        raise CheckpointError(f"{where}: no place in the supernet for register tokens (reg_token)")
    kernel, pos = state["patch_embed.proj.weight"], state["pos_embed"]
    if kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2] or pos.ndim != 3:
        raise CheckpointError(
            f"{where}: patch_embed.proj.weight {tuple(kernel.shape)} / pos_embed "
            f"{tuple(pos.shape)}: expected a square conv kernel and a (1, N, C) embedding"
        )
    tokens = pos.shape[1]
    grid, class_pos = math.isqrt(tokens - 1), True
    if grid * grid != tokens - 1:
        grid, class_pos = math.isqrt(tokens), False
        if grid * grid != tokens:
            raise CheckpointError(
                f"{where}: pos_embed has {tokens} positions, not a square grid (+ a class position)"
            )
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    head = state.get("head.weight")
    return VitDims(
        embed_dim=kernel.shape[0],
        depth=max(blocks) + 1,
        num_heads=num_heads,
        mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
        in_chans=kernel.shape[1],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        patch_size=kernel.shape[-1],
        grid=grid,
        num_classes=head.shape[0] if head is not None and head.ndim == 2 else 0,
        class_pos=class_pos,
    )


def check_vit(
    state: dict[str, Tensor], space: SearchSpace, *, num_heads: int | None = None, where="init"
) -> VitDims:
    """The ViT's dims, checked against the space's backbone (patch and image size may differ).

    ``num_heads`` is in no tensor shape: it is checked when given (from the file's metadata),
    and assumed to be the study's otherwise.

    Raises:
        CheckpointError: one message naming every dim that differs, checkpoint vs study.
    """
    dims = vit_dims(state, num_heads, where)
    bb = space.backbone
    pairs = [
        ("embed_dim", dims.embed_dim, bb.embed_dim),
        ("depth", dims.depth, bb.depth),
        ("num_heads", dims.num_heads if dims.num_heads is not None else bb.num_heads, bb.num_heads),
        ("mlp hidden width", dims.mlp_hidden, int(bb.embed_dim * bb.mlp_ratio)),
        ("in_chans", dims.in_chans, space.in_chans),
        ("qkv_bias", dims.qkv_bias, bb.qkv_bias),
    ]
    diffs = [
        f"{name} {ckpt} in the checkpoint, {study} in the study"
        for name, ckpt, study in pairs
        if ckpt != study
    ]
    if diffs:
        raise CheckpointError(
            f"{where}: {'; '.join(diffs)} (the ViT needs the study backbone's dims; "
            "only patch and image size may differ)"
        )
    return dims


def recorded_num_heads(path: Path) -> int | None:
    """``num_heads`` recorded in a safetensors file's metadata, if any (None otherwise).

    Either a ``num_heads`` entry or ``{"vit": {"num_heads": ...}}`` in the ``exitnas`` entry,
    as ``benchmarks/baseline_vit.py`` writes.
    """
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    value = meta.get("num_heads")
    if value is None and "exitnas" in meta:
        try:
            value = json.loads(meta["exitnas"]).get("vit", {}).get("num_heads")
        except (ValueError, AttributeError):
            value = None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
