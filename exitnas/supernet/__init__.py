"""The weight-sharing ViT supernet: exit heads, FLOPs accounting, extraction, training."""

from exitnas.supernet.cascade import CascadeState, Stage, plan_stages
from exitnas.supernet.flops import count_flops, measure_flops
from exitnas.supernet.heads import ExitHead, create_exit_head
from exitnas.supernet.pretrained import (
    VitDims,
    VitInit,
    check_vit,
    init_from_vit,
    load_vit_init,
    load_vit_state,
    vit_dims,
)
from exitnas.supernet.registry import create_supernet, list_supernets, register_supernet
from exitnas.supernet.runs import load_supernet
from exitnas.supernet.subnet import ExitViT
from exitnas.supernet.supervit import SuperViT
from exitnas.supernet.train import TrainingInterrupted, TrainSummary, build_supernet, train_supernet

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
