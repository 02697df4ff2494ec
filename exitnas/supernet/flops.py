"""Analytic FLOPs of each stage of a sub-network, and a measured counterpart.

Convention (that of ``torch.utils.flop_counter.FlopCounterMode`` and fvcore): a FLOP is half a
multiply-accumulate of a matmul, convolution or attention product, so a ``(m x k) @ (k x n)``
product costs ``2 m k n``. Norms, activations, softmax, pooling and resizing are not counted.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from exitnas.spaces import SearchSpace, SubnetConfig
from exitnas.supernet.cascade import plan_stages
from exitnas.supernet.heads import ExitHead, create_space_head
from exitnas.supernet.tokens import block_flops, informative_count, kept_count

__all__ = ["count_flops", "ensure_sdpa_flop_formula", "measure_flops"]


def count_flops(space: SearchSpace, config: SubnetConfig) -> tuple[int, ...]:
    """FLOPs per image of each stage of ``config``, in cascade order.

    Stage k's cost covers everything run after exit k-1 up to and including exit k's head:
    patch embedding of a new branch (and of the coarse grid it refines), reuse of the previous
    branch, blocks (with class attention and token fusion where tokens are kept), and the head.
    The expected cost of a config is ``sum_k fraction_exiting_at_k * cumsum(stages)[k]``.

    Example:
        >>> stages = count_flops(space, space.largest())
        >>> total = sum(stages)
    """
    bb = space.backbone
    dim, hidden, classes = bb.embed_dim, int(bb.embed_dim * bb.mlp_ratio), space.num_classes
    heads = _template_heads(space)
    keep_layers = set(space.keep_layers)
    costs = []
    tokens = 0  # patch tokens of the current branch
    for stage in plan_stages(config):
        b = stage.branch
        branch = config.branches[b]
        cost = 0
        if stage.start == 0:
            cost += _embed_flops(space, branch.resolution, branch.patch_size)
            tokens = branch.grid**2
            if branch.refine_fraction is not None:
                prev = config.branches[b - 1]
                cost += _embed_flops(space, prev.resolution, prev.patch_size)
                cells = prev.grid**2
                if config.reuse:
                    cost += 2 * cells * dim * dim  # feature reuse, per coarse cell
                split = informative_count(branch.refine_fraction, cells)
                scale = branch.grid // prev.grid
                tokens = cells - split + split * scale * scale
            if config.reuse and b > 0:
                cost += 2 * dim * dim + 2 * classes * classes  # class token + prediction reuse
        for layer in range(stage.start, stage.end):
            keep = layer + 1 in keep_layers and branch.keep_rate < 1.0
            want = stage.class_attention and layer + 1 == stage.end
            kept = kept_count(branch.keep_rate, tokens) if keep else tokens
            fused = tokens - kept
            after = kept + 1 if fused else tokens
            cost += block_flops(
                dim,
                hidden,
                tokens + 1,
                mlp_tokens=after + 1,
                class_attention=keep or want,
                fused=fused,
            )
            tokens = after
        cost += heads[branch.exits[stage.exit].head].flops(tokens, branch.grid)
        costs.append(cost)
    return tuple(costs)


def _embed_flops(space: SearchSpace, resolution: int, patch_size: int) -> int:
    grid = resolution // patch_size
    return 2 * grid * grid * space.backbone.embed_dim * space.in_chans * patch_size * patch_size


@lru_cache(maxsize=32)
def _template_heads(space: SearchSpace) -> dict[str, ExitHead]:
    """One head of each type on the meta device: their shapes give their FLOPs."""
    with torch.device("meta"):
        return {
            name: create_space_head(name, space, torch.nn.LayerNorm, torch.nn.GELU)
            for name in space.head_types
        }


def ensure_sdpa_flop_formula() -> None:
    """Make FlopCounterMode count fused attention on CPU.

    timm's ``Attention`` runs ``F.scaled_dot_product_attention``, which on CPU dispatches to
    ``aten._scaled_dot_product_flash_attention_for_cpu``. Recent PyTorch counts it; older
    releases have no formula for it and count nothing. Register one where it is missing.
    """
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry:
        return

    @register_flop_formula(op)
    def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        b, h, s_q, d = query_shape
        s_k, d_v = key_shape[2], value_shape[3]
        return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def measure_flops(model: torch.nn.Module, images: torch.Tensor, upto: int | None = None) -> int:
    """FLOPs per image counted by FlopCounterMode while ``model(images, upto=upto)`` runs."""
    ensure_sdpa_flop_formula()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, upto=upto)
    return counter.get_total_flops() // images.shape[0]
