"""The plain timm ViT the benchmarks compare the supernet with (a helper, not a benchmark)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from exitnas.spaces import SearchSpace
from exitnas.supernet.cascade import DEFAULT_NORM_LAYER


def plain_vit(space: SearchSpace, drop_path_rate: float = 0.0) -> VisionTransformer:
    """A ``VisionTransformer`` with the backbone's dims at the space's largest resolution and
    the smallest patch size dividing it (the supernet's finest single-branch grid)."""
    bb = space.backbone
    return VisionTransformer(
        img_size=space.max_resolution,
        patch_size=min(p for p in space.patch_sizes if space.max_resolution % p == 0),
        in_chans=space.in_chans,
        num_classes=space.num_classes,
        embed_dim=bb.embed_dim,
        depth=bb.depth,
        num_heads=bb.num_heads,
        mlp_ratio=bb.mlp_ratio,
        qkv_bias=bb.qkv_bias,
        drop_path_rate=drop_path_rate,
        norm_layer=DEFAULT_NORM_LAYER,
    )
