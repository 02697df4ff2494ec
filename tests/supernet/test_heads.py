"""Conformance tests every exit head passes: shapes, gradients, FLOPs."""

from __future__ import annotations

import pytest
import torch

from exitnas.spaces import HEAD_TYPES
from exitnas.supernet import create_exit_head
from exitnas.supernet.cascade import DEFAULT_NORM_LAYER
from exitnas.supernet.flops import ensure_sdpa_flop_formula
from exitnas.supernet.tokens import keep_tokens

DIM, CLASSES, GRID = 32, 7, 4


def make(name: str):
    return create_exit_head(
        name,
        DIM,
        CLASSES,
        num_heads=2,
        mlp_ratio=2.0,
        pool=2,
        norm_layer=DEFAULT_NORM_LAYER,
        act_layer=torch.nn.GELU,
    )


def tokens(batch: int = 3, keep: float | None = None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1 + GRID * GRID, DIM, generator=gen)
    cells = torch.arange(GRID * GRID).expand(batch, -1)
    if keep is not None:  # pruned grids: some cells point to the fused token
        attn = torch.rand(batch, GRID * GRID, generator=gen)
        x, remap = keep_tokens(x, attn, keep)
        cells = remap.gather(1, cells)
    return x.requires_grad_(), cells


@pytest.mark.parametrize("name", HEAD_TYPES)
@pytest.mark.parametrize("keep", [None, 0.5])
def test_forward_backward(name: str, keep) -> None:
    head = make(name)
    x, cells = tokens(keep=keep)
    logits = head(x, cells, GRID)
    assert logits.shape == (3, CLASSES)
    logits.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in head.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("name", HEAD_TYPES)
def test_analytic_flops_match_flop_counter(name: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    ensure_sdpa_flop_formula()
    head = make(name).eval()
    x, cells = tokens(batch=2, keep=0.5)
    x = x.detach()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        head(x, cells, GRID)
    assert counter.get_total_flops() // 2 == head.flops(x.shape[1] - 1, GRID)


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown exit head 'conv'.*allowed"):
        make("conv")
