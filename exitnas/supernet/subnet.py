"""A standalone sub-network extracted from the supernet.

:class:`ExitViT` holds fixed copies of just the parts one config uses: the patch kernel already
resized to each branch's patch size, the position embedding already resampled to each grid, the
blocks up to the deepest exit, one head per exit, and the reuse between branches. It is an
ordinary ``nn.Module`` (timm tooling, ``torch.save``, safetensors all work on it) and it can be
rebuilt from ``(space, config)`` plus its state dict alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from timm.models.vision_transformer import Block
from torch import nn

from exitnas.spaces import SearchSpace, SubnetConfig
from exitnas.supernet.cascade import (
    DEFAULT_NORM_LAYER,
    BranchReuse,
    CascadeRunner,
    backbone_block,
    resize_images,
)
from exitnas.supernet.heads import ExitHead, create_space_head

__all__ = ["BranchEmbed", "ExitViT"]


class BranchEmbed(nn.Module):
    """Resize, patchify and position-embed the images of one branch."""

    def __init__(self, in_chans: int, embed_dim: int, resolution: int, patch_size: int):
        super().__init__()
        self.resolution = resolution
        grid = resolution // patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(resize_images(images, self.resolution))  # (B, C, G, G)
        return x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, G*G, C)


class ExitViT(CascadeRunner):
    """A multi-exit ViT for one fixed :class:`~exitnas.spaces.SubnetConfig`.

    Built for inference: its blocks carry no stochastic depth, so it equals the supernet under
    the same config in eval mode.

    ``forward(images)`` returns the logits of every exit in cascade order; ``iter_stages`` and
    ``run_stage`` run it stage by stage (the early-exit runtime drops exited samples between
    stages).
    """

    def __init__(
        self,
        space: SearchSpace,
        config: SubnetConfig,
        *,
        norm_layer: Callable[..., nn.Module] = DEFAULT_NORM_LAYER,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.space, self.config = space, config
        self.keep_layers = frozenset(space.keep_layers)
        bb = space.backbone
        dim = bb.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.embeds = nn.ModuleList(
            BranchEmbed(space.in_chans, dim, br.resolution, br.patch_size) for br in config.branches
        )
        depth = max(branch.depth for branch in config.branches)
        self.blocks = nn.ModuleList(backbone_block(bb, norm_layer, act_layer) for _ in range(depth))
        self.heads = nn.ModuleList(
            create_space_head(exit_.head, space, norm_layer, act_layer) for _, exit_ in config.exits
        )
        positions = [(b, e) for b, br in enumerate(config.branches) for e in range(len(br.exits))]
        self._head_index = {position: i for i, position in enumerate(positions)}
        reuses = [
            BranchReuse(dim, space.num_classes, norm_layer, features=br.refine_fraction is not None)
            for br in config.branches[1:]
        ]
        self.reuses = nn.ModuleList(reuses if config.reuse else [])

    def run_config(self) -> SubnetConfig:
        return self.config

    def embed(self, branch: int, images: torch.Tensor) -> torch.Tensor:
        return self.embeds[branch](images)

    def block(self, index: int) -> Block:
        return cast(Block, self.blocks[index])

    def head(self, branch: int, exit_: int) -> ExitHead:
        return cast(ExitHead, self.heads[self._head_index[(branch, exit_)]])

    def reuse(self, branch: int) -> BranchReuse:
        return cast(BranchReuse, self.reuses[branch - 1])

    def count_flops(self) -> tuple[int, ...]:
        """Analytic FLOPs per image of each stage (see :func:`exitnas.supernet.count_flops`)."""
        from exitnas.supernet.flops import count_flops

        return count_flops(self.space, self.config)
