"""Baseline: a standalone timm ViT with the backbone's largest dims, trained alone.

The benchmark's anchor (issue: end to end): a plain ``timm`` ``VisionTransformer`` at the
study's largest resolution and smallest patch size, with the supernet backbone's width, depth,
heads and MLP ratio, trained on the same training split (the same validation images held out),
with the same epochs, batch size, optimiser, schedule, label smoothing, augmentation and
seed-derived image order as the supernet. Reported: validation and test accuracy, FLOPs per
image (counted by ``FlopCounterMode``), and measured CPU latency (batch 1: median of single
images; batch 512: ms per image), with the threads given.

    python benchmarks/baseline_vit.py studies/cifar10.yaml --out runs/cifar10-baseline
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from exitnas.data import load_splits
from exitnas.spaces import load_study
from exitnas.supernet.batches import augment, epoch_order, normalize, step_seed
from exitnas.supernet.cascade import DEFAULT_NORM_LAYER
from exitnas.supernet.checkpoint import save_weights


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study(args.study)
    cfg, space, bb = study.training, study.space, study.space.backbone
    epochs = args.epochs or cfg.epochs
    data = study.data
    splits = load_splits(
        data.dataset,
        args.data or data.path,
        data.image_size,
        data.val_fraction,
        study.seed,
        download=data.download,
    )
    torch.manual_seed(study.seed)
    model = VisionTransformer(
        img_size=space.max_resolution,
        patch_size=min(p for p in space.patch_sizes if space.max_resolution % p == 0),
        in_chans=space.in_chans,
        num_classes=space.num_classes,
        embed_dim=bb.embed_dim,
        depth=bb.depth,
        num_heads=bb.num_heads,
        mlp_ratio=bb.mlp_ratio,
        qkv_bias=bb.qkv_bias,
        drop_path_rate=bb.drop_path_rate,
        norm_layer=DEFAULT_NORM_LAYER,
    )
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total = epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total,
        lr_min=cfg.min_lr,
        t_in_epochs=False,
        warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
        warmup_lr_init=cfg.lr * 0.01,
    )
    loss_fn = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    resize = space.max_resolution != data.image_size
    started = time.perf_counter()
    model.train()
    for step in tqdm(range(total), desc="train baseline ViT", unit="step"):
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(study.seed, epoch, len(splits.train))
        rows = torch.from_numpy(order[position * cfg.batch_size : (position + 1) * cfg.batch_size])
        generator = torch.Generator().manual_seed(step_seed(study.seed, step, 0))
        images = augment(splits.train.images[rows], generator, cfg.crop_padding, cfg.hflip)
        x = normalize(images, splits.mean, splits.std)
        if resize:
            x = torch.nn.functional.interpolate(x, size=space.max_resolution, mode="bilinear")
        scheduler.step_update(step)
        loss = loss_fn(model(x), splits.train.labels[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    model.eval()
    shape = (space.in_chans, space.max_resolution, space.max_resolution)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(2, *shape))
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
    save_weights(args.out / "vit.safetensors", model.state_dict(), {"baseline": result})
    (args.out / "baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
