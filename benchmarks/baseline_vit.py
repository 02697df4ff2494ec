"""Baseline: a standalone timm ViT with the backbone's largest dims, trained alone.

The benchmark's anchor (issue: end to end): a plain ``timm`` ``VisionTransformer`` at the
study's largest resolution and smallest patch size, with the supernet backbone's width, depth,
heads and MLP ratio, trained on the same training split (the same validation images held out),
with the same epochs, batch size, optimiser, schedule, label smoothing, augmentation and
seed-derived image order as the supernet. Reported: validation and test accuracy, FLOPs per
image (counted by ``FlopCounterMode``), and measured CPU latency (batch 1: median of single
images; batch 512: ms per image), with the threads given.

    python benchmarks/baseline_vit.py studies/cifar10.yaml --out runs/cifar10-baseline
    # or score the recipe ladder's rung a (the same ViT, trained the same way) without training:
    python benchmarks/baseline_vit.py studies/cifar10.yaml --out runs/cifar10-baseline \
        --trained runs/ladder-full6/a/vit.safetensors

Its ``vit.safetensors`` (``model.state_dict()``, with the ViT's dims, ``num_heads`` included, in
the metadata) is a valid warm start for the supernet of the same study:

    exitnas train studies/cifar10.yaml --init runs/cifar10-baseline/vit.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from plain_vit import load_plain_vit, save_plain_vit, train_plain_vit
from torch.utils.flop_counter import FlopCounterMode

from exitnas.search.objective import load_validation
from exitnas.spaces import load_study
from exitnas.supernet.batches import normalize


def accuracy(model, images, labels, mean, std, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = normalize(images[start : start + batch], mean, std)
            correct += int((model(x).argmax(-1) == labels[start : start + batch]).sum())
    return correct / len(images)


def latency_ms(model, image_shape, batch: int, rounds: int) -> float:
    """Median wall-clock ms per image of ``model`` on random images of one batch size."""
    x = torch.randn(batch, *image_shape)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3 / batch)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--data", help="overrides data.path")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--trained",
        type=Path,
        help="score this ViT (trained as this script trains, e.g. recipe_ladder.py's rung a, "
        "whose ladder.json beside it gives the training time) instead of training one",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study(args.study)
    cfg, space = study.training, study.space
    epochs = args.epochs or cfg.epochs
    study = study.with_data_path(args.data or None)
    splits = load_validation(study)  # the supernet's splits: same validation images held out
    if args.trained:
        model = load_plain_vit(args.trained, space)
        seconds = json.loads((args.trained.parent / "ladder.json").read_text())["train_seconds"]
    else:
        model, seconds = train_plain_vit(study, splits, epochs)
    total = epochs * math.ceil(len(splits.train) / cfg.batch_size)
    model.eval()
    shape = (space.in_chans, space.max_resolution, space.max_resolution)
    counter = FlopCounterMode(display=False)
    # count attention too: FlopCounterMode does not count the fused CPU attention kernel, so
    # the counting pass runs timm's explicit q @ k^T and attn @ v (the same FLOPs)
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in fused:
        m.fused_attn = False
    with torch.no_grad(), counter:
        model(torch.randn(2, *shape))
    for m, was in fused:
        m.fused_attn = was
    result = {
        "study": study.name,
        "epochs": epochs,
        "steps": total,
        "train_seconds": round(seconds, 1),
        "val_accuracy": accuracy(
            model, splits.val.images, splits.val.labels, splits.mean, splits.std
        ),
        "test_accuracy": accuracy(
            model, splits.test.images, splits.test.labels, splits.mean, splits.std
        ),
        "mflops": counter.get_total_flops() / 2 / 1e6,
        "latency_ms_batch1": latency_ms(model, shape, 1, 200),
        "latency_ms_per_image_batch512": latency_ms(model, shape, 512, 5),
        "threads": args.threads,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_plain_vit(args.out / "vit.safetensors", model, space, {"baseline": result})
    (args.out / "baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
