"""Running a cascade of branches stage by stage.

A *stage* runs the shared backbone from the previous exit of a branch (or from a new branch's
token embedding) up to the next exit, then that exit's head. The supernet and every extracted
sub-network run the same code here; they differ only in where the parts come from (the supernet
resamples its shared patch kernel and position embedding on the fly, an extracted sub-network
holds fixed copies), which is what makes extraction exact.

``CascadeState`` is what flows between stages. It is batch-first throughout, so the runtime can
drop the samples that exited (:meth:`CascadeState.select`) before running the next stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from exitnas.spaces.config import SubnetConfig
from exitnas.spaces.space import BackboneSpace
from exitnas.supernet.heads import ExitHead
from exitnas.supernet.tokens import cells_attention, patch_grid, refine_tokens, run_block

__all__ = [
    "DEFAULT_NORM_LAYER",
    "BranchReuse",
    "CascadeState",
    "backbone_block",
    "Stage",
    "plan_stages",
    "resize_images",
]

# timm's ViT default: LayerNorm with eps 1e-6.
DEFAULT_NORM_LAYER = partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class Stage:
    """One stage of a cascade: blocks ``start..end`` (0-based, end exclusive) then one exit."""

    branch: int  # index of the branch in the config
    exit: int  # index of the exit in that branch
    start: int  # blocks already run in this branch (0: the stage opens the branch)
    end: int  # the exit layer
    class_attention: bool  # compute cell attention at the last block (the next branch refines)


def plan_stages(config: SubnetConfig) -> tuple[Stage, ...]:
    """The stages of ``config`` in cascade order, one per exit."""
    stages = []
    for b, branch in enumerate(config.branches):
        nxt = config.branches[b + 1] if b + 1 < len(config.branches) else None
        refines_next = nxt is not None and nxt.refine_fraction is not None
        start = 0
        for e, exit_ in enumerate(branch.exits):
            last = e == len(branch.exits) - 1
            stages.append(Stage(b, e, start, exit_.layer, refines_next and last))
            start = exit_.layer
    return tuple(stages)


@dataclass
class CascadeState:
    """Everything a stage hands to the next, batch-first."""

    images: torch.Tensor  # (B, c, H, W) the input images
    tokens: torch.Tensor | None = None  # (B, 1 + N, C) current branch tokens
    cell_index: torch.Tensor | None = None  # (B, G*G) token covering each cell of the grid
    cell_attn: torch.Tensor | None = None  # (B, G*G) class attention per cell, for refinement
    logits: torch.Tensor | None = None  # (B, K) latest exit's logits
    prior: torch.Tensor | None = None  # (B, K) previous branch's reused prediction

    def select(self, index: torch.Tensor) -> CascadeState:
        """The state of a subset of samples (a boolean mask or indices)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        picked = {k: None if v is None else v[index] for k, v in values.items()}
        return CascadeState(**picked)  # type: ignore[arg-type]


def backbone_block(
    backbone: BackboneSpace,
    norm_layer: Callable[..., nn.Module],
    act_layer: Callable[..., nn.Module],
    drop_path: float = 0.0,
) -> Block:
    """One shared transformer block of the backbone (timm's ``Block``)."""
    return Block(
        backbone.embed_dim,
        backbone.num_heads,
        backbone.mlp_ratio,
        qkv_bias=backbone.qkv_bias,
        drop_path=drop_path,
        norm_layer=norm_layer,  # type: ignore[arg-type]
        act_layer=act_layer,  # type: ignore[arg-type]
    )


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize ``(B, c, H, W)`` images to a branch's resolution (bilinear, antialiased)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(
        images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    )


class BranchReuse(nn.Module):
    """What branch k+1 takes from branch k (RAViT, CF-ViT).

    - class token: branch k's output class token, projected, is added to the shared one;
    - prediction: branch k's last logits, projected, are added to every exit's logits;
    - features (coarse-to-fine branches only): branch k's final patch features, projected, are
      added to the coarse token and the fine tokens of each cell.
    """

    def __init__(
        self, embed_dim: int, num_classes: int, norm_layer: Callable[..., nn.Module], features=True
    ):
        super().__init__()
        self.cls_norm = norm_layer(embed_dim)
        self.cls_proj = nn.Linear(embed_dim, embed_dim)
        self.pred_proj = nn.Linear(num_classes, num_classes)
        self.feat_norm = norm_layer(embed_dim) if features else None
        self.feat_proj = nn.Linear(embed_dim, embed_dim) if features else None

    def cls(self, prev_cls: torch.Tensor) -> torch.Tensor:
        return self.cls_proj(self.cls_norm(prev_cls))  # (B, 1, C)

    def prediction(self, prev_logits: torch.Tensor) -> torch.Tensor:
        return self.pred_proj(prev_logits)  # (B, K)

    def features(self, prev_tokens: torch.Tensor, prev_cells: torch.Tensor) -> torch.Tensor:
        if self.feat_norm is None or self.feat_proj is None:
            raise RuntimeError("this BranchReuse was built without feature reuse")
        grid = math.isqrt(prev_cells.shape[1])
        cells = patch_grid(prev_tokens, prev_cells, grid).flatten(2).transpose(1, 2)  # (B, G*G, C)
        return self.feat_proj(self.feat_norm(cells))


class CascadeRunner(nn.Module):
    """Stage logic shared by :class:`~exitnas.supernet.SuperViT` and extracted sub-networks.

    Subclasses provide the parts of the config they run: ``cls_token`` ``(1, 1, C)``,
    ``keep_layers``, :meth:`run_config`, :meth:`embed`, :meth:`block`, :meth:`head` and
    :meth:`reuse`.
    """

    cls_token: nn.Parameter
    keep_layers: frozenset[int]

    def run_config(self) -> SubnetConfig:
        raise NotImplementedError

    def embed(self, branch: int, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens of branch ``branch`` with position embedding, ``(B, G*G, C)``."""
        raise NotImplementedError

    def block(self, index: int) -> Block:
        raise NotImplementedError

    def head(self, branch: int, exit_: int) -> ExitHead:
        raise NotImplementedError

    def reuse(self, branch: int) -> BranchReuse:
        """Reuse module into branch ``branch`` (>= 1)."""
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Logits of every exit of the config, in cascade order, in one pass.

        Args:
            images: ``(B, in_chans, H, W)``, normalised.
            upto: stop after this stage (0-based); all stages by default.
        """
        return [logits for logits, _ in self.iter_stages(images, upto)]

    def iter_stages(
        self, images: torch.Tensor, upto: int | None = None
    ) -> Iterator[tuple[torch.Tensor, CascadeState]]:
        state = CascadeState(images=images)
        for i, stage in enumerate(plan_stages(self.run_config())):
            if upto is not None and i > upto:
                return
            state = self.run_stage(stage, state)
            assert state.logits is not None
            yield state.logits, state

    def run_stage(self, stage: Stage, state: CascadeState) -> CascadeState:
        """Run one stage on ``state`` and return the next state (its ``logits`` set)."""
        state = self.advance(stage, state)
        grid = self.run_config().branches[stage.branch].grid
        logits = self.head(stage.branch, stage.exit)(state.tokens, state.cell_index, grid)
        if state.prior is not None:
            logits = logits + state.prior
        return replace(state, logits=logits)

    def advance(self, stage: Stage, state: CascadeState) -> CascadeState:
        """Run the backbone part of one stage: the state at the stage's exit, before its head.

        ``logits`` still holds the previous stage's (a new branch reuses them).
        """
        config = self.run_config()
        branch = config.branches[stage.branch]
        if stage.start == 0:
            state = self._open_branch(stage.branch, state)
        x, cell_index, cell_attn = state.tokens, state.cell_index, None
        assert x is not None and cell_index is not None, "a branch is open"
        for layer in range(stage.start, stage.end):
            keep = layer + 1 in self.keep_layers and branch.keep_rate < 1.0
            want = stage.class_attention and layer + 1 == stage.end
            x, cls_attn, remap = run_block(
                self.block(layer),
                x,
                keep_rate=branch.keep_rate if keep else None,
                class_attention=want,
            )
            if want:
                assert cls_attn is not None
                cell_attn = cells_attention(cls_attn, cell_index)
            if remap is not None:
                cell_index = remap.gather(1, cell_index)
        return replace(state, tokens=x, cell_index=cell_index, cell_attn=cell_attn)

    def _open_branch(self, b: int, state: CascadeState) -> CascadeState:
        """Embed branch ``b``'s tokens; ``state`` holds branch ``b - 1``'s outputs if b > 0."""
        config = self.run_config()
        branch = config.branches[b]
        images = state.images
        patches = self.embed(b, images)  # (B, G*G, C)
        bsz = images.shape[0]
        prev_tokens, prev_cells, prev_logits = state.tokens, state.cell_index, state.logits
        reuse = self.reuse(b) if config.reuse and b > 0 else None
        if branch.refine_fraction is not None:
            assert state.cell_attn is not None, "the previous branch computed cell attention"
            feats = None
            if reuse is not None:
                assert prev_tokens is not None and prev_cells is not None
                feats = reuse.features(prev_tokens, prev_cells)
            patches, cell_index = refine_tokens(
                self.embed(b - 1, images), patches, state.cell_attn, branch.refine_fraction, feats
            )
        else:
            cells = torch.arange(patches.shape[1], device=patches.device)
            cell_index = cells.expand(bsz, -1)
        cls = self.cls_token.expand(bsz, -1, -1)
        prior = None
        if reuse is not None:
            assert prev_tokens is not None and prev_logits is not None
            cls = cls + reuse.cls(prev_tokens[:, :1])
            prior = reuse.prediction(prev_logits)
        tokens = torch.cat([cls, patches], dim=1)
        return replace(state, tokens=tokens, cell_index=cell_index, cell_attn=None, prior=prior)
