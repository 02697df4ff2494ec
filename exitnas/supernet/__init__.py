"""The weight-sharing ViT supernet: exit heads, FLOPs accounting, extraction, training.

Names are imported on first use (:mod:`exitnas._lazy`): importing the package loads neither
torch nor timm until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.supernet.cascade import CascadeState, Stage, plan_stages
    from exitnas.supernet.flops import count_flops, measure_flops
    from exitnas.supernet.heads import ExitHead, create_exit_head
    from exitnas.supernet.pretrained import VitInit, init_from_vit, load_vit_init
    from exitnas.supernet.registry import create_supernet, list_supernets, register_supernet
    from exitnas.supernet.subnet import ExitViT
    from exitnas.supernet.supervit import SuperViT
    from exitnas.supernet.train import (
        TrainingInterrupted,
        TrainSummary,
        build_supernet,
        train_supernet,
    )
    from exitnas.supernet.trained import load_supernet
    from exitnas.supernet.vit_checkpoint import VitDims, check_vit, load_vit_state, vit_dims

__all__ = [
    "CascadeState",
    "ExitHead",
    "ExitViT",
    "Stage",
    "SuperViT",
    "TrainSummary",
    "TrainingInterrupted",
    "VitDims",
    "VitInit",
    "build_supernet",
    "check_vit",
    "count_flops",
    "create_exit_head",
    "create_supernet",
    "init_from_vit",
    "list_supernets",
    "load_supernet",
    "load_vit_init",
    "load_vit_state",
    "measure_flops",
    "plan_stages",
    "register_supernet",
    "train_supernet",
    "vit_dims",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.supernet.cascade": ("CascadeState", "Stage", "plan_stages"),
        "exitnas.supernet.flops": ("count_flops", "measure_flops"),
        "exitnas.supernet.heads": ("ExitHead", "create_exit_head"),
        "exitnas.supernet.pretrained": ("VitInit", "init_from_vit", "load_vit_init"),
        "exitnas.supernet.registry": ("create_supernet", "list_supernets", "register_supernet"),
        "exitnas.supernet.trained": ("load_supernet",),
        "exitnas.supernet.subnet": ("ExitViT",),
        "exitnas.supernet.supervit": ("SuperViT",),
        "exitnas.supernet.train": (
            "TrainingInterrupted",
            "TrainSummary",
            "build_supernet",
            "train_supernet",
        ),
        "exitnas.supernet.vit_checkpoint": ("VitDims", "check_vit", "load_vit_state", "vit_dims"),
    },
)
