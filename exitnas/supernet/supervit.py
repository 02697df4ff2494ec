"""The weight-sharing supernet: one ViT backbone that runs every sub-network of a space.

Built on timm: ``Block`` for the backbone, FlexiViT's PI-resize
(``PatchEmbedResamplerFixedOrigSize``) so one patch kernel serves every patch size, and
``resample_abs_pos_embed`` so one position embedding serves every token grid.

The supernet speaks four verbs (once-for-all style, without global switches):
:meth:`SuperViT.set_active`, :meth:`SuperViT.sample_active`, :meth:`SuperViT.active_config` and
:meth:`SuperViT.extract`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.layers.patch_embed import PatchEmbedResamplerFixedOrigSize
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

if TYPE_CHECKING:
    from exitnas.supernet.subnet import ExitViT

__all__ = ["SuperViT", "head_key"]


def head_key(branch: int, layer: int, head: str) -> str:
    """Name of the supernet head for ``(branch index, exit layer, head type)``."""
    return f"b{branch}_l{layer}_{head}"


class SuperViT(CascadeRunner):
    """Weight-sharing ViT supernet over a :class:`~exitnas.spaces.SearchSpace`.

    Every exit head type at every candidate exit layer of every branch position is a module of
    the supernet, and so is the reuse between each pair of consecutive branches.

    Args:
        space: the search space (backbone dims, resolutions, patch sizes, exits, ...).
        norm_layer: normalisation layer, as timm's ``Block`` takes it.
        act_layer: activation layer, as timm's ``Block`` takes it.

    Example:
        >>> net = SuperViT(space)
        >>> net.sample_active(np.random.default_rng(0))
        >>> logits = net(images)  # one (B, num_classes) tensor per exit of the active config
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        norm_layer: Callable[..., nn.Module] = DEFAULT_NORM_LAYER,
        act_layer: Callable[..., nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.space = space
        bb = space.backbone
        dim = bb.embed_dim
        self.keep_layers = frozenset(space.keep_layers)
        self.base_patch = max(space.patch_sizes)
        self.base_grid = max(space.grids)
        self.patch_embed = nn.Conv2d(space.in_chans, dim, self.base_patch, stride=self.base_patch)
        self.resampler = PatchEmbedResamplerFixedOrigSize((self.base_patch, self.base_patch))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.base_grid**2, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        rates = np.linspace(0.0, bb.drop_path_rate, bb.depth).tolist()
        self.blocks = nn.ModuleList(
            backbone_block(bb, norm_layer, act_layer, drop_path=rate) for rate in rates
        )
        self.heads = nn.ModuleDict(
            {
                head_key(b, layer, name): create_space_head(name, space, norm_layer, act_layer)
                for b in range(space.max_branches)
                for layer in space.exit_layers
                for name in space.head_types
            }
        )
        features = bool(space.refine_fractions)
        self.reuses = nn.ModuleList(
            BranchReuse(dim, space.num_classes, norm_layer, features=features)
            for _ in range(space.max_branches - 1)
        )
        self._norm_layer, self._act_layer = norm_layer, act_layer
        self._active = space.largest()
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- the four verbs ---------------------------------------------------------------------

    def set_active(self, config: SubnetConfig, *, check: bool = True) -> None:
        """Make ``config`` the sub-network that :meth:`forward` runs.

        Args:
            config: the sub-network; checked against the space unless ``check`` is false.
            check: training sets configs outside the space on purpose (keep rates warming up
                from 1.0, exits at every candidate layer).
        """
        if check:
            self.space.check(config)
        self._active = config

    def sample_active(self, rng: np.random.Generator) -> SubnetConfig:
        """Draw a sub-network from the space with ``rng``, make it active, and return it."""
        config = self.space.sample(rng)
        self._active = config
        return config

    def active_config(self) -> SubnetConfig:
        """The sub-network that :meth:`forward` runs."""
        return self._active

    def extract(self, config: SubnetConfig | None = None) -> ExitViT:
        """A standalone module holding just the parts ``config`` uses (copies of the weights).

        Its outputs equal the supernet's under ``config``.
        """
        from exitnas.supernet.subnet import ExitViT

        config = config or self._active
        self.space.check(config)
        model = ExitViT(self.space, config, norm_layer=self._norm_layer, act_layer=self._act_layer)
        model.load_state_dict(self.subnet_state_dict(config))
        return model.train(self.training)

    def subnet_state_dict(self, config: SubnetConfig) -> dict[str, torch.Tensor]:
        """Weights of ``config``'s parts under :class:`ExitViT`'s names (detached copies)."""
        state: dict[str, torch.Tensor] = {"cls_token": self.cls_token}
        with torch.no_grad():
            for b, branch in enumerate(config.branches):
                state[f"embeds.{b}.proj.weight"] = self.patch_weight(branch.patch_size)
                state[f"embeds.{b}.proj.bias"] = cast(torch.Tensor, self.patch_embed.bias)
                state[f"embeds.{b}.pos_embed"] = self.grid_pos_embed(branch.grid)
            for i in range(max(branch.depth for branch in config.branches)):
                for name, value in self.blocks[i].state_dict().items():
                    state[f"blocks.{i}.{name}"] = value
            for i, (b, exit_) in enumerate(config.exits):
                head = self.heads[head_key(b, exit_.layer, exit_.head)]
                for name, value in head.state_dict().items():
                    state[f"heads.{i}.{name}"] = value
            if config.reuse:
                for b in range(1, len(config.branches)):
                    refine = config.branches[b].refine_fraction is not None
                    for name, value in self.reuses[b - 1].state_dict().items():
                        if refine or not name.startswith("feat_"):
                            state[f"reuses.{b - 1}.{name}"] = value
        return {k: v.detach().clone() for k, v in state.items()}

    # -- parts of the active config -----------------------------------------------------------

    def patch_weight(self, patch_size: int) -> torch.Tensor:
        """The shared patch kernel PI-resized to ``patch_size`` (FlexiViT)."""
        return self.resampler(self.patch_embed.weight, [patch_size, patch_size])

    def grid_pos_embed(self, grid: int) -> torch.Tensor:
        """The shared position embedding resampled to a ``grid x grid`` token grid."""
        if grid == self.base_grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, [grid, grid], num_prefix_tokens=0)

    def run_config(self) -> SubnetConfig:
        return self._active

    def embed(self, branch: int, images: torch.Tensor) -> torch.Tensor:
        cfg = self._active.branches[branch]
        x = resize_images(images, cfg.resolution)
        weight = self.patch_weight(cfg.patch_size)
        x = F.conv2d(x, weight, self.patch_embed.bias, stride=cfg.patch_size)  # (B, C, G, G)
        return x.flatten(2).transpose(1, 2) + self.grid_pos_embed(cfg.grid)  # (B, G*G, C)

    def block(self, index: int) -> Block:
        return cast(Block, self.blocks[index])

    def head(self, branch: int, exit_: int) -> ExitHead:
        cfg = self._active.branches[branch].exits[exit_]
        return cast(ExitHead, self.heads[head_key(branch, cfg.layer, cfg.head)])

    def reuse(self, branch: int) -> BranchReuse:
        return cast(BranchReuse, self.reuses[branch - 1])

    def count_flops(self, config: SubnetConfig | None = None) -> tuple[int, ...]:
        """Analytic FLOPs per image of each stage of ``config`` (the active one by default)."""
        from exitnas.supernet.flops import count_flops

        return count_flops(self.space, config or self._active)
