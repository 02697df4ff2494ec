"""Named supernets: ``create_supernet("name")`` is the one front door (timm-style registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exitnas.spaces import BackboneSpace, SearchSpace
from exitnas.supernet.supervit import SuperViT

__all__ = ["create_supernet", "list_supernets", "register_supernet"]

_SPACES: dict[str, Callable[[], SearchSpace]] = {}


def register_supernet(fn: Callable[[], SearchSpace]) -> Callable[[], SearchSpace]:
    """Register a function returning a :class:`SearchSpace` under the function's name."""
    if fn.__name__ in _SPACES:
        raise ValueError(f"supernet {fn.__name__!r} is already registered")
    _SPACES[fn.__name__] = fn
    return fn


def list_supernets() -> list[str]:
    """Names accepted by :func:`create_supernet`."""
    return sorted(_SPACES)


def create_supernet(name: str, **kwargs: Any) -> SuperViT:
    """Build a registered supernet.

    Args:
        name: a name from :func:`list_supernets`.
        **kwargs: passed to :class:`SuperViT` (``norm_layer``, ``act_layer``).

    Example:
        >>> net = create_supernet("exitnas_tiny")
    """
    if name not in _SPACES:
        raise ValueError(f"unknown supernet {name!r}; registered: {list_supernets()}")
    unknown = sorted(set(kwargs) - {"norm_layer", "act_layer"})
    if unknown:
        raise TypeError(f"create_supernet: unknown keyword argument(s) {unknown}")
    return SuperViT(_SPACES[name](), **kwargs)


@register_supernet
def exitnas_tiny() -> SearchSpace:
    """Test-sized: 16 px single-channel input, embed 32, depth 4, every dimension searchable."""
    return SearchSpace(
        backbone=BackboneSpace(embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0),
        num_classes=10,
        in_chans=1,
        resolutions=(8, 16),
        patch_sizes=(2, 4),
        exit_layers=(2, 3, 4),
        max_branches=3,
        keep_rates=(0.5, 1.0),
        keep_layers=(2,),
        refine_fractions=(0.5, 1.0),
        reuse=(True, False),
    )


@register_supernet
def exitnas_cifar_small() -> SearchSpace:
    """CIFAR-10 sized: 16/24/32 px branches, patches 2/4/8, ViT-Tiny width, depth 8."""
    return SearchSpace(
        backbone=BackboneSpace(embed_dim=192, depth=8, num_heads=3, mlp_ratio=4.0),
        num_classes=10,
        in_chans=3,
        resolutions=(16, 24, 32),
        patch_sizes=(2, 4, 8),
        exit_layers=(4, 6, 8),
        max_branches=3,
        keep_rates=(0.5, 0.7, 1.0),
        keep_layers=(3, 6),
        refine_fractions=(0.25, 0.5, 1.0),
        reuse=(True, False),
    )
