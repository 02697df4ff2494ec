"""The weight-sharing ViT supernet: exit heads, FLOPs accounting, extraction, training."""

from exitnas.supernet.cascade import CascadeState, Stage, plan_stages
from exitnas.supernet.flops import count_flops, measure_flops
from exitnas.supernet.heads import ExitHead, create_exit_head
from exitnas.supernet.subnet import ExitViT
from exitnas.supernet.supervit import SuperViT

__all__ = [
    "CascadeState",
    "ExitHead",
    "ExitViT",
    "Stage",
    "SuperViT",
    "count_flops",
    "create_exit_head",
    "measure_flops",
    "plan_stages",
]
