"""Warm start: a pretrained timm ``VisionTransformer`` mapped into the supernet.

The ViT may have any patch size and image size, but it must have the supernet backbone's
width, depth, heads, MLP width, input channels and qkv bias. Its dims are read from tensor
shapes (:mod:`~exitnas.supernet.vit_checkpoint`); the number of heads is not in any shape, so
it is read from the file's metadata when recorded there (a ``num_heads`` entry, or
``{"vit": {"num_heads": ...}}`` in exitnas's metadata, as ``benchmarks/baseline_vit.py``
writes) and otherwise assumed to be the study's.

timm does the resampling: :func:`~timm.models.vision_transformer.checkpoint_filter_fn` filters
the state dict into a timm ViT of the supernet's layout (``base_patch`` kernel,
``base_grid`` position grid), resampling the patch kernel (``resample_patch_embed``) and the
position embedding (``resample_abs_pos_embed``). That alone is not exact where the supernet
runs the ViT's own patch size or grid: the supernet PI-resizes its kernel from ``base_patch``
(FlexiViT's resampler) and resamples its position embedding from ``base_grid``, and resizing
up then down is not the identity. So, where the ViT's patch size (grid) is one the supernet
runs, the stored kernel (embedding) is the one closest to timm's resampled one that the
supernet's own resampler maps back *exactly* to the ViT's: ``x = u + A⁺ (t - A u)`` for timm's
resampled ``u``, the ViT's ``t`` and the supernet's linear resampling map ``A`` (read off by
resampling basis tensors with the supernet's resampler). So the supernet's sub-network at the
ViT's resolution and patch size computes the ViT's function; other patch sizes and grids get
timm's resampling. A ViT whose patch size exceeds the supernet's largest, or whose grid is none
of the supernet's, is resampled only (not exact anywhere).

Example:
    >>> state = load_vit_state("runs/cifar10-baseline/vit.safetensors")
    >>> report = init_from_vit(supernet, state)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from exitnas.errors import CheckpointError
from exitnas.spaces import SearchSpace
from exitnas.supernet.cascade import DEFAULT_NORM_LAYER
from exitnas.supernet.checkpoint import file_sha256
from exitnas.supernet.heads import ExitHead
from exitnas.supernet.supervit import SuperViT, head_key
from exitnas.supernet.vit_checkpoint import VitDims, check_vit, load_vit_state, recorded_num_heads

__all__ = ["VitInit", "init_from_vit", "load_vit_init", "space_vit"]

_HEAD_KEYS = (
    "norm.weight",
    "norm.bias",
    "head.weight",
    "head.bias",
    "fc_norm.weight",
    "fc_norm.bias",
)


@dataclass(frozen=True, eq=False)
class VitInit:
    """A pretrained ViT read and checked against a study: what ``train_supernet(init=)`` applies."""

    path: Path
    state: dict[str, Tensor]  # the ViT's state dict, timm's names
    num_heads: int | None  # from the file's metadata; None: assumed to be the study's
    sha256: str  # of the file

    def apply(self, model: SuperViT) -> dict:
        """:func:`init_from_vit` with this checkpoint; returns its report."""
        return init_from_vit(model, self.state, num_heads=self.num_heads, where=self.where)

    def record(self) -> dict:
        """What ``supernet.json`` records of the warm start."""
        return {"path": str(self.path), "sha256": self.sha256}

    @property
    def where(self) -> str:
        return f"--init {self.path}"


def load_vit_init(path: str | Path, space: SearchSpace) -> VitInit:
    """Read a ViT checkpoint (:func:`load_vit_state`) and check its dims against ``space``.

    Raises:
        CheckpointError: the file is missing, unreadable, not a ViT, or of other dims.
    """
    path = Path(path)
    state = load_vit_state(path)
    init = VitInit(path, state, recorded_num_heads(path), file_sha256(path))
    check_vit(state, space, num_heads=init.num_heads, where=init.where)
    return init


@torch.no_grad()
def init_from_vit(
    model: SuperViT, state: dict[str, Tensor], *, num_heads: int | None = None, where="init"
) -> dict:
    """Set the supernet's backbone (and final linear heads) from a timm ViT's state dict.

    Sets the patch kernel, position embedding, class token (the ViT's class position folded
    in: ``cls_token + pos_embed[:, :1]``, so the sum timm's forward makes is the same) and every
    block; layer-scale factors are folded into the projections before them. The ViT's final
    ``norm`` and ``head`` go into the linear exit head at the last layer of every branch
    position, when the space has one and the ViT's classes are the study's. Every other head
    and the reuse modules keep their fresh initialisation.

    Args:
        model: a freshly built supernet.
        state: the ViT's state dict (:func:`load_vit_state`).
        num_heads: the ViT's heads, if known (checked); the study's are assumed otherwise.
        where: how messages name the checkpoint.

    Returns:
        A JSON-able report: the ViT's patch size, image size and grid, the parts set and kept
        fresh, where the patch kernel and position embedding are exact and the largest error
        of reproducing the ViT's there.

    Raises:
        CheckpointError: other dims, or parts the supernet has no place for.
    """
    space = model.space
    dims = check_vit(state, space, num_heads=num_heads, where=where)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    ref = _reference_vit(model, dims.class_pos)
    timm_state = checkpoint_filter_fn(dict(state), ref, adapt_layer_scale=True)
    _fold_layer_scale(timm_state, space.backbone.depth)
    backbone_keys = {k for k in ref.state_dict() if not k.startswith(("head.", "norm."))}
    unknown = sorted(set(timm_state) - backbone_keys - set(_HEAD_KEYS))
    missing = sorted(backbone_keys - set(timm_state))
    if unknown or missing:
        parts = [f"no place in the supernet for {', '.join(unknown[:6])}"] if unknown else []
        parts += [f"missing {', '.join(missing[:6])}"] if missing else []
        raise CheckpointError(f"{where}: {'; '.join(parts)}")

    report: dict = {"patch_size": dims.patch_size, "img_size": dims.img_size, "grid": dims.grid}
    device = model.pos_embed.device
    kernel, patch_exact = _base_kernel(
        model, timm_state["patch_embed.proj.weight"], state["patch_embed.proj.weight"]
    )
    pos, pos_exact = _base_pos_embed(model, timm_state["pos_embed"], state["pos_embed"], dims)
    cls = state["cls_token"] + (state["pos_embed"][:, :1] if dims.class_pos else 0)
    cast(Tensor, model.patch_embed.weight).copy_(kernel)
    cast(Tensor, model.patch_embed.bias).copy_(timm_state["patch_embed.proj.bias"])
    model.pos_embed.copy_(pos)
    model.cls_token.copy_(cls)
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}."
        block.load_state_dict(
            {k[len(prefix) :]: v for k, v in timm_state.items() if k.startswith(prefix)}
        )
    report["set"] = ["patch_embed", "pos_embed", "cls_token", "blocks"]
    if patch_exact:
        error = model.patch_weight(dims.patch_size) - state["patch_embed.proj.weight"].to(device)
        report["patch_embed_exact_at"] = dims.patch_size
        report["patch_embed_error"] = float(error.abs().max())
    if pos_exact:
        start = 1 if dims.class_pos else 0
        error = model.grid_pos_embed(dims.grid) - state["pos_embed"][:, start:].to(device)
        report["pos_embed_exact_at"] = dims.grid
        report["pos_embed_error"] = float(error.abs().max())

    heads = [head_key(b, space.backbone.depth, "linear") for b in range(space.max_branches)]
    reason = _heads_kept_fresh(space, dims, timm_state)
    if reason is None:
        for key in heads:
            head = cast(ExitHead, model.heads[key])
            head.norm.load_state_dict({k: timm_state[f"norm.{k}"] for k in ("weight", "bias")})
            head.fc.load_state_dict({k: timm_state[f"head.{k}"] for k in ("weight", "bias")})
        report["set"].append("heads " + ", ".join(heads))
        report["fresh"] = ["other heads", "reuses"]
    else:
        report["fresh"] = ["heads", "reuses"]
        report["heads_fresh_because"] = reason
    return report


def space_vit(
    space: SearchSpace, img_size: int, patch_size: int, **kwargs: Any
) -> VisionTransformer:
    """A timm ``VisionTransformer`` with the space's backbone dims, channels and classes.

    Args:
        space: the search space.
        img_size: the ViT's image size.
        patch_size: the ViT's patch size.
        **kwargs: further ``VisionTransformer`` options (``drop_path_rate``, ...).
    """
    bb = space.backbone
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=space.in_chans,
        num_classes=space.num_classes,
        embed_dim=bb.embed_dim,
        depth=bb.depth,
        num_heads=bb.num_heads,
        mlp_ratio=bb.mlp_ratio,
        qkv_bias=bb.qkv_bias,
        norm_layer=DEFAULT_NORM_LAYER,
        **kwargs,
    )


def _reference_vit(model: SuperViT, class_pos: bool) -> VisionTransformer:
    """A timm ViT of the supernet's layout (on the meta device: only its shapes are read)."""
    with torch.device("meta"):
        return space_vit(
            model.space,
            model.base_grid * model.base_patch,
            model.base_patch,
            no_embed_class=not class_pos,
        )


def _fold_layer_scale(state: dict[str, Tensor], depth: int) -> None:
    """Fold layer-scale factors (``ls1.gamma``, ``ls2.gamma``) into the projections before them."""
    for i in range(depth):
        for ls, proj in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = state.pop(f"blocks.{i}.{ls}.gamma", None)
            if gamma is None:
                continue
            for name in ("weight", "bias"):
                key = f"blocks.{i}.{proj}.{name}"
                if key in state:
                    scale = gamma[:, None] if name == "weight" else gamma
                    state[key] = state[key] * scale


def _constrained(near: Tensor, target: Tensor, resample: Tensor) -> Tensor:
    """Rows ``x`` closest to ``near`` with ``x @ resample.T == target`` (least squares)."""
    near64, resample64 = near.double(), resample.double()
    fix = (target.double() - near64 @ resample64.T) @ torch.linalg.pinv(resample64).T
    return (near64 + fix).to(near.dtype)


def _base_kernel(model: SuperViT, resampled: Tensor, kernel: Tensor) -> tuple[Tensor, bool]:
    """The base-size kernel to store, and whether the supernet reproduces ``kernel`` exactly."""
    base, p = model.base_patch, kernel.shape[-1]
    if p == base or p > base or p not in model.space.patch_sizes:
        return resampled, p == base
    # the supernet's resampler as a matrix (p*p, base*base): resample each basis kernel
    basis = torch.eye(base * base).reshape(base * base, 1, base, base)
    matrix = model.resampler(basis, [p, p]).reshape(base * base, p * p).T
    out_in = kernel.shape[0] * kernel.shape[1]
    rows = _constrained(resampled.reshape(out_in, -1), kernel.reshape(out_in, -1), matrix)
    return rows.reshape(resampled.shape), True


def _base_pos_embed(
    model: SuperViT, resampled: Tensor, pos: Tensor, dims: VitDims
) -> tuple[Tensor, bool]:
    """The base-grid position embedding to store (no class position), and whether the
    supernet reproduces the ViT's exactly at the ViT's grid."""
    start = 1 if dims.class_pos else 0
    near, target = resampled[0, start:], pos[0, start:]  # (G*G, C), (g*g, C)
    g, grid = dims.grid, model.base_grid
    if g == grid or g > grid or g not in model.space.grids:
        return near[None], g == grid
    # the supernet's grid resampling as a matrix (g*g, G*G): resample the identity's columns
    matrix = resample_abs_pos_embed(torch.eye(grid * grid)[None], [g, g], num_prefix_tokens=0)[0]
    return _constrained(near.T, target.T, matrix).T[None], True


def _heads_kept_fresh(space: SearchSpace, dims: VitDims, state: dict[str, Tensor]) -> str | None:
    """Why the ViT's norm and head cannot go into the final linear heads (None: they can)."""
    depth = space.backbone.depth
    if depth not in space.exit_layers or "linear" not in space.head_types:
        return f"the space has no linear exit at layer {depth}"
    if "fc_norm.weight" in state:
        return "the ViT pools patch tokens (fc_norm); the exit heads read the class token"
    if not {"norm.weight", "norm.bias", "head.weight", "head.bias"} <= set(state):
        return "the checkpoint has no classifier (norm and head)"
    if dims.num_classes != space.num_classes:
        return f"the checkpoint has {dims.num_classes} classes, the study {space.num_classes}"
    return None
