"""Exit heads: the seven head architectures of Multi-Exit ViT plus a linear baseline.

Every head maps the token sequence at an exit, ``x`` of shape ``(B, 1 + N, C)`` (class token
first), to class logits ``(B, num_classes)``. Heads that look at the spatial layout read the patch
tokens as a ``grid x grid`` map through ``cell_index`` ``(B, grid * grid)``, which names the
token that currently covers each grid cell: after token keeping (EViT) pruned cells point to
the fused token, and after coarse-to-fine refinement (CF-ViT) a coarse token covers several
cells. Each head reports its own analytic FLOPs per image (:meth:`ExitHead.flops`), counted as
FlopCounterMode counts them: 2 x multiply-accumulates of matmuls and convolutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.mlp_mixer import MixerBlock, ResBlock
from timm.models.vision_transformer import Block
from torch import nn

from exitnas.spaces.config import HEAD_TYPES
from exitnas.spaces.space import SearchSpace
from exitnas.supernet.tokens import block_flops, patch_grid

__all__ = ["ExitHead", "create_exit_head", "create_space_head"]


class ExitHead(nn.Module):
    """Base class of exit heads.

    Lifecycle: the supernet builds one head per (branch, exit layer, head type) at construction
    and trains it whenever a sampled sub-network exits there; :meth:`forward` is called with the
    tokens after the exit's block; :meth:`flops` gives the analytic cost used by ``count_flops``.
    """

    def __init__(self, embed_dim: int, num_classes: int, norm_layer: Callable[..., nn.Module]):
        super().__init__()
        self.norm = norm_layer(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor, cell_index: torch.Tensor, grid: int) -> torch.Tensor:
        raise NotImplementedError

    def flops(self, num_tokens: int, grid: int) -> int:
        """FLOPs for one image with ``num_tokens`` patch tokens on a ``grid x grid`` map."""
        raise NotImplementedError

    def _fc_flops(self) -> int:
        return 2 * self.fc.in_features * self.fc.out_features


class LinearHead(ExitHead):
    """Linear classifier on the normalised class token (the usual ViT head)."""

    def forward(self, x, cell_index, grid):
        return self.fc(self.norm(x[:, 0]))

    def flops(self, num_tokens, grid):
        return self._fc_flops()


class MlpHead(ExitHead):
    """Two-layer MLP on the class token (Multi-Exit ViT's MLP-EE)."""

    def __init__(self, embed_dim, num_classes, norm_layer, act_layer):
        super().__init__(embed_dim, num_classes, norm_layer)
        self.mlp = Mlp(embed_dim, embed_dim, act_layer=act_layer)

    def forward(self, x, cell_index, grid):
        return self.fc(self.mlp(self.norm(x[:, 0])))

    def flops(self, num_tokens, grid):
        return 2 * 2 * self.mlp.fc1.in_features * self.mlp.fc1.out_features + self._fc_flops()


class CnnHead(ExitHead):
    """Depthwise-separable convolution over the patch grid, then global pooling.

    ``mode`` selects how the class token takes part (Multi-Exit ViT): ``ignore`` drops it,
    ``add`` adds it to the pooled features, ``project`` projects it and adds it to every cell.
    """

    def __init__(self, embed_dim, num_classes, norm_layer, act_layer, mode: str):
        super().__init__(embed_dim, num_classes, norm_layer)
        self.mode = mode
        self.cls_proj = nn.Linear(embed_dim, embed_dim) if mode == "project" else None
        self.dw = nn.Conv2d(embed_dim, embed_dim, 3, padding=1, groups=embed_dim)
        self.pw = nn.Conv2d(embed_dim, embed_dim, 1)
        self.act = act_layer()

    def forward(self, x, cell_index, grid):
        x = self.norm(x)
        cls = x[:, 0]  # (B, C)
        fmap = patch_grid(x, cell_index, grid)  # (B, C, g, g)
        if self.cls_proj is not None:
            fmap = fmap + self.cls_proj(cls)[:, :, None, None]
        pooled = self.act(self.pw(self.dw(fmap))).mean(dim=(2, 3))  # (B, C)
        if self.mode == "add":
            pooled = pooled + cls
        return self.fc(pooled)

    def flops(self, num_tokens, grid):
        c = self.fc.in_features
        conv = 2 * grid * grid * c * 9 + 2 * grid * grid * c * c
        proj = 2 * c * c if self.cls_proj is not None else 0
        return conv + proj + self._fc_flops()


class VitHead(ExitHead):
    """One extra transformer encoder layer over all tokens, then the class token (ViT-EE)."""

    def __init__(self, embed_dim, num_classes, norm_layer, act_layer, num_heads, mlp_ratio):
        super().__init__(embed_dim, num_classes, norm_layer)
        self.block = Block(
            embed_dim,
            num_heads,
            mlp_ratio,
            qkv_bias=True,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )

    def forward(self, x, cell_index, grid):
        return self.fc(self.norm(self.block(x)[:, 0]))

    def flops(self, num_tokens, grid):
        c = self.fc.in_features
        return block_flops(c, self.block.mlp.fc1.out_features, num_tokens + 1) + self._fc_flops()


class TokenMixHead(ExitHead):
    """An MLP-Mixer or ResMLP block over a pooled ``pool x pool`` patch map (Mixer-EE, ResMLP-EE).

    Token-mixing layers need a fixed token count, so the patch map is average-pooled to
    ``pool x pool`` first: one head then serves every branch grid and keep rate.
    """

    def __init__(self, embed_dim, num_classes, norm_layer, act_layer, kind: str, pool: int):
        super().__init__(embed_dim, num_classes, norm_layer)
        self.pool = pool
        seq_len = pool * pool
        self.block: nn.Module
        if kind == "mixer":
            self.block = MixerBlock(
                embed_dim, seq_len, mlp_ratio=(0.5, 2.0), norm_layer=norm_layer, act_layer=act_layer
            )
        else:
            self.block = ResBlock(embed_dim, seq_len, mlp_ratio=2, act_layer=act_layer)

    def forward(self, x, cell_index, grid):
        fmap = patch_grid(self.norm(x), cell_index, grid)  # (B, C, g, g)
        tokens = F.adaptive_avg_pool2d(fmap, self.pool).flatten(2).transpose(1, 2)  # (B, P*P, C)
        return self.fc(self.block(tokens).mean(dim=1))

    def flops(self, num_tokens, grid):
        c, seq_len = self.fc.in_features, self.pool * self.pool
        mixing = getattr(self.block, "mlp_tokens", None) or self.block.linear_tokens
        # token-mixing layers run on C rows of length P*P; channel layers on P*P rows of length C
        tokens = sum(2 * c * m.in_features * m.out_features for m in _linears(mixing))
        channels = sum(
            2 * seq_len * m.in_features * m.out_features for m in _linears(self.block.mlp_channels)
        )
        return tokens + channels + self._fc_flops()


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def create_exit_head(
    name: str,
    embed_dim: int,
    num_classes: int,
    *,
    num_heads: int,
    mlp_ratio: float,
    pool: int,
    norm_layer: Callable[..., nn.Module],
    act_layer: Callable[..., nn.Module],
) -> ExitHead:
    """Build an exit head by name.

    Args:
        name: one of ``linear, mlp, cnn_ignore, cnn_add, cnn_project, vit, resmlp, mixer``.
        embed_dim: token width of the backbone.
        num_classes: number of logits.
        num_heads: attention heads of the ``vit`` head's encoder layer.
        mlp_ratio: MLP ratio of the ``vit`` head's encoder layer.
        pool: side of the pooled patch map of the ``resmlp`` and ``mixer`` heads.
        norm_layer: normalisation layer (as timm's ``Block`` takes it).
        act_layer: activation layer (as timm's ``Block`` takes it).

    Example:
        >>> head = create_exit_head("mixer", 32, 10, num_heads=2, mlp_ratio=2.0, pool=2,
        ...                         norm_layer=torch.nn.LayerNorm, act_layer=torch.nn.GELU)
    """
    if name == "linear":
        return LinearHead(embed_dim, num_classes, norm_layer)
    if name == "mlp":
        return MlpHead(embed_dim, num_classes, norm_layer, act_layer)
    if name in ("cnn_ignore", "cnn_add", "cnn_project"):
        return CnnHead(embed_dim, num_classes, norm_layer, act_layer, mode=name.split("_")[1])
    if name == "vit":
        return VitHead(embed_dim, num_classes, norm_layer, act_layer, num_heads, mlp_ratio)
    if name in ("resmlp", "mixer"):
        return TokenMixHead(embed_dim, num_classes, norm_layer, act_layer, kind=name, pool=pool)
    raise ValueError(f"unknown exit head {name!r}; allowed: {HEAD_TYPES}")


def create_space_head(
    name: str,
    space: SearchSpace,
    norm_layer: Callable[..., nn.Module],
    act_layer: Callable[..., nn.Module],
) -> ExitHead:
    """Build exit head ``name`` sized for ``space``: its width, classes and smallest grid."""
    bb = space.backbone
    return create_exit_head(
        name,
        bb.embed_dim,
        space.num_classes,
        num_heads=bb.num_heads,
        mlp_ratio=bb.mlp_ratio,
        pool=min(4, min(space.grids)),
        norm_layer=norm_layer,
        act_layer=act_layer,
    )
