"""Token operations shared by the supernet and extracted sub-networks.

- class attention from a timm ``Attention`` without a second projection (EViT, CF-ViT);
- token keeping: keep the most attended patch tokens, fuse the rest into one token (EViT);
- coarse-to-fine refinement: re-split the most attended coarse patches at a finer grid (CF-ViT);
- ``cell_index`` bookkeeping: for every cell of a branch's full grid, the token covering it.

FLOP helpers count what ``torch.utils.flop_counter.FlopCounterMode`` counts: 2 x the
multiply-accumulates of matmuls, convolutions and attention.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block

__all__ = [
    "attention_with_cls",
    "block_flops",
    "cells_attention",
    "keep_tokens",
    "kept_count",
    "informative_count",
    "patch_grid",
    "refine_tokens",
    "run_block",
]


def kept_count(keep_rate: float, num_patches: int) -> int:
    """Patch tokens kept (besides the fused one) when keeping ``keep_rate`` of them."""
    return min(num_patches, max(1, math.ceil(keep_rate * num_patches - 1e-9)))


def informative_count(fraction: float, num_cells: int) -> int:
    """Coarse cells re-split at the finer grid by coarse-to-fine refinement."""
    return min(num_cells, max(1, math.ceil(fraction * num_cells - 1e-9)))


def block_flops(
    embed_dim: int,
    hidden: int,
    num_tokens: int,
    *,
    mlp_tokens: int | None = None,
    class_attention: bool = False,
    fused: int = 0,
) -> int:
    """FLOPs of one pre-norm transformer block for one image.

    Args:
        embed_dim: token width C.
        hidden: hidden width of the block's MLP.
        num_tokens: tokens entering the attention (class token included).
        mlp_tokens: tokens entering the MLP when tokens were kept in between.
        class_attention: the class token's attention row was computed explicitly.
        fused: patch tokens fused into one by token keeping.
    """
    c, n = embed_dim, num_tokens
    m = n if mlp_tokens is None else mlp_tokens
    attention = 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c
    extra = (2 * n * c if class_attention else 0) + 2 * fused * c
    return attention + extra + 4 * m * c * hidden


def patch_grid(x: torch.Tensor, cell_index: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch tokens as a feature map: ``(B, 1 + N, C)`` -> ``(B, C, grid, grid)``."""
    b, _, c = x.shape
    cells = x[:, 1:].gather(1, cell_index.unsqueeze(-1).expand(-1, -1, c))  # (B, g*g, C)
    return cells.transpose(1, 2).reshape(b, c, grid, grid)


def attention_with_cls(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention.forward`` that also returns the class token's attention to patches.

    The class attention row reuses the block's own query and key (no second projection); the
    attention output itself still goes through fused scaled-dot-product attention.

    Returns:
        The attention output ``(B, N, C)`` and the head-averaged class attention over the patch
        tokens ``(B, N - 1)``.
    """
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, D) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    drop = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    cls_attn = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, 1, N)
    cls_attn = cls_attn[:, :, 0, 1:].mean(dim=1)  # (B, N - 1)
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), cls_attn


def keep_tokens(
    x: torch.Tensor, cls_attn: torch.Tensor, keep_rate: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep the most attended patch tokens and fuse the others into one token (EViT).

    Args:
        x: tokens ``(B, 1 + N, C)``, class token first.
        cls_attn: class attention over the patch tokens ``(B, N)``.
        keep_rate: fraction of patch tokens kept.

    Returns:
        The new tokens ``(B, 1 + K + 1, C)`` (kept tokens in their original order, then the
        fused token) and ``remap`` ``(B, N)``, the new index of every old patch token (the
        fused token's for dropped ones); ``remap`` is None when nothing was dropped.
    """
    b, n1, c = x.shape
    n = n1 - 1
    k = kept_count(keep_rate, n)
    if k >= n:
        return x, None
    order = torch.argsort(cls_attn, dim=1, descending=True, stable=True)
    keep_idx = order[:, :k].sort(dim=1).values  # (B, K)
    drop_idx = order[:, k:]  # (B, N - K)
    patches = x[:, 1:]
    kept = patches.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, c))
    dropped = patches.gather(1, drop_idx.unsqueeze(-1).expand(-1, -1, c))
    weights = cls_attn.gather(1, drop_idx)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    fused = torch.bmm(weights.unsqueeze(1), dropped)  # (B, 1, C)
    remap = torch.full((b, n), k, dtype=torch.long, device=x.device)
    positions = torch.arange(k, device=x.device).expand(b, k)
    remap.scatter_(1, keep_idx, positions)
    return torch.cat([x[:, :1], kept, fused], dim=1), remap


def run_block(
    block: Block, x: torch.Tensor, *, keep_rate: float | None = None, class_attention: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run one timm ``Block``, keeping tokens after its attention when ``keep_rate`` is given.

    Returns:
        tokens, the class attention over the block's input patch tokens (when it was computed),
        and the ``remap`` of :func:`keep_tokens` (when tokens were dropped).
    """
    if keep_rate is None and not class_attention:
        return block(x), None, None
    out, cls_attn = attention_with_cls(cast(Attention, block.attn), block.norm1(x))
    x = x + block.drop_path1(block.ls1(out))
    remap = None
    if keep_rate is not None:
        x, remap = keep_tokens(x, cls_attn, keep_rate)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, cls_attn, remap


def cells_attention(cls_attn: torch.Tensor, cell_index: torch.Tensor) -> torch.Tensor:
    """Spread token attention ``(B, N)`` over grid cells ``(B, G)``: a token covering c cells
    gives each of them 1/c of its attention."""
    ones = torch.ones_like(cell_index, dtype=cls_attn.dtype)
    counts = torch.zeros_like(cls_attn).scatter_add_(1, cell_index, ones)
    return cls_attn.gather(1, cell_index) / counts.gather(1, cell_index)


def refine_tokens(
    coarse: torch.Tensor,
    fine: torch.Tensor,
    cell_attn: torch.Tensor,
    fraction: float,
    reuse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse-to-fine token set (CF-ViT): informative coarse cells are re-split.

    Args:
        coarse: coarse patch tokens ``(B, Gc*Gc, C)`` (previous branch's grid).
        fine: fine patch tokens ``(B, Gf*Gf, C)``, ``Gf`` a multiple of ``Gc``.
        cell_attn: previous branch's class attention per coarse cell ``(B, Gc*Gc)``.
        fraction: share of coarse cells to re-split (the most attended ones).
        reuse: previous branch's features per coarse cell ``(B, Gc*Gc, C)``, added to the coarse
            token and to every fine token of that cell (feature reuse); None for no reuse.

    Returns:
        Patch tokens ``(B, (Gc*Gc - M) + M*s*s, C)`` (uninformative coarse cells first, then the
        fine tokens of the informative cells) and ``cell_index`` ``(B, Gf*Gf)``.
    """
    b, nc, c = coarse.shape
    gc, gf = math.isqrt(nc), math.isqrt(fine.shape[1])
    s, m = gf // gc, informative_count(fraction, nc)
    device = coarse.device
    rows = torch.arange(gf, device=device)
    parent = ((rows // s)[:, None] * gc + (rows // s)[None, :]).reshape(-1)  # (Gf*Gf,) coarse cell
    children = torch.argsort(parent, stable=True).reshape(nc, s * s)  # (Gc*Gc, s*s) fine cells
    if reuse is not None:
        coarse = coarse + reuse
        fine = fine + reuse[:, parent]
    informative = torch.zeros(b, nc, dtype=torch.long, device=device)
    # among equally attended cells the lower index wins: a stable sort, as ONNX's TopK does
    # (torch.topk leaves ties unspecified; after token keeping the fused cells all tie)
    top = torch.argsort(cell_attn, dim=1, descending=True, stable=True)[:, :m]
    informative.scatter_(1, top, 1)
    order = torch.argsort(informative, dim=1, stable=True)  # uninformative first, each ascending
    plain, split = order[:, : nc - m], order[:, nc - m :]
    fine_idx = children[split].reshape(b, m * s * s)
    tokens = torch.cat(
        [
            coarse.gather(1, plain.unsqueeze(-1).expand(-1, -1, c)),
            fine.gather(1, fine_idx.unsqueeze(-1).expand(-1, -1, c)),
        ],
        dim=1,
    )
    coarse_pos = torch.zeros(b, nc, dtype=torch.long, device=device)
    coarse_pos.scatter_(1, plain, torch.arange(nc - m, device=device).expand(b, -1))
    fine_pos = torch.full((b, gf * gf), -1, dtype=torch.long, device=device)
    fine_positions = torch.arange(nc - m, nc - m + m * s * s, device=device)
    fine_pos.scatter_(1, fine_idx, fine_positions.expand(b, -1))
    cell_index = torch.where(fine_pos >= 0, fine_pos, coarse_pos[:, parent])
    return tokens, cell_index
