"""Training throughput: the supernet's largest single-branch sub-network vs a plain timm ViT.

Both models have the same dims (embed, depth, heads, MLP ratio), the same input resolution and
patch size, one classification head, the same batch and the same AdamW step; they are timed
side by side in one process, alternating rounds, and the median of the rounds is reported.
The multi-branch largest config of the space is timed too, with its FLOPs relative to the ViT.

    python benchmarks/train_throughput.py studies/cifar10.yaml --batch 128 --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from plain_vit import plain_vit

from exitnas.spaces import BranchConfig, ExitConfig, SubnetConfig, load_study
from exitnas.supernet import build_supernet, count_flops


def full_vit_config(space) -> SubnetConfig:
    """One branch at the largest resolution and smallest patch, all blocks, a linear head."""
    branch = BranchConfig(
        space.max_resolution, min(space.patch_sizes), (ExitConfig(space.backbone.depth, "linear"),)
    )
    return SubnetConfig((branch,), reuse=space.reuse[0])


def timed_steps(model, step, images, labels, steps: int) -> float:
    """Images per second over ``steps`` training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        step(model, images, labels)
    return steps * images.shape[0] / (time.perf_counter() - start)


def make_step(optimizer):
    def step(model, images, labels):
        outputs = model(images)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        loss = torch.stack([torch.nn.functional.cross_entropy(o, labels) for o in outputs]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    args = parser.parse_args()

    study = load_study(args.study)
    space = study.space
    supernet = build_supernet(study).train()
    config = full_vit_config(space)
    supernet.set_active(config)
    vit = plain_vit(space).train()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(
        args.batch, space.in_chans, space.max_resolution, space.max_resolution, generator=gen
    )
    labels = torch.randint(0, space.num_classes, (args.batch,), generator=gen)
    sup_step = make_step(torch.optim.AdamW(supernet.parameters(), lr=1e-4))
    vit_step = make_step(torch.optim.AdamW(vit.parameters(), lr=1e-4))
    largest = space.largest()

    def run_largest(model, x, y):
        model.set_active(largest)
        sup_step(model, x, y)
        model.set_active(config)

    for model, step in ((vit, vit_step), (supernet, sup_step)):  # warm-up
        timed_steps(model, step, images, labels, 2)
    rates: dict[str, list[float]] = {"vit": [], "supernet": [], "largest": []}
    for _ in range(args.rounds):
        rates["vit"].append(timed_steps(vit, vit_step, images, labels, args.steps))
        rates["supernet"].append(timed_steps(supernet, sup_step, images, labels, args.steps))
        rates["largest"].append(timed_steps(supernet, run_largest, images, labels, args.steps))
    median = {k: statistics.median(v) for k, v in rates.items()}
    vit_flops = sum(count_flops(space, config))
    largest_flops = sum(count_flops(space, largest))
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"study: {args.study}  batch {args.batch}  rounds {args.rounds} x {args.steps} steps")
    print(
        f"timm VisionTransformer           : {median['vit']:8.1f} img/s  "
        f"({vit_flops / 1e6:.1f} MFLOPs fwd)"
    )
    print(f"supernet, same single-branch net : {median['supernet']:8.1f} img/s")
    print(f"ratio supernet / timm            : {median['supernet'] / median['vit']:.3f}")
    print(
        f"supernet largest config          : {median['largest']:8.1f} img/s "
        f"({largest_flops / 1e6:.1f} MFLOPs fwd, {largest.num_exits} exits, "
        f"{len(largest.branches)} branches)"
    )
    print(
        "largest, FLOPs-normalised ratio  : "
        f"{median['largest'] * largest_flops / (median['vit'] * vit_flops):.3f}"
    )


if __name__ == "__main__":
    main()
