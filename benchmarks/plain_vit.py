"""The plain timm ViT the benchmarks compare the supernet with, and its training alone (a
helper, not a benchmark)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from tqdm.auto import tqdm

from exitnas.data import DataSplits
from exitnas.spaces import SearchSpace, StudyConfig
from exitnas.supernet.batches import epoch_order
from exitnas.supernet.checkpoint import load_weights, save_weights
from exitnas.supernet.pretrained import space_vit
from exitnas.supernet.steps import create_optimizer, training_batch


def plain_vit(space: SearchSpace, drop_path_rate: float = 0.0) -> VisionTransformer:
    """A ``VisionTransformer`` with the backbone's dims at the space's largest resolution and
    the smallest patch size dividing it (the supernet's finest single-branch grid)."""
    resolution = space.max_resolution
    patch = min(p for p in space.patch_sizes if resolution % p == 0)
    return space_vit(space, resolution, patch, drop_path_rate=drop_path_rate)


def save_plain_vit(
    path: Path, model: VisionTransformer, space: SearchSpace, metadata: dict | None = None
) -> None:
    """Write the ViT's state dict as safetensors, a valid ``exitnas train --init`` checkpoint
    (its dims in the metadata: ``num_heads`` is in no tensor shape)."""
    vit = {
        "num_heads": space.backbone.num_heads,
        "img_size": space.max_resolution,
        "patch_size": model.patch_embed.patch_size[0],
        "num_classes": space.num_classes,
    }
    save_weights(path, model.state_dict(), {**(metadata or {}), "vit": vit})


def load_plain_vit(path: Path, space: SearchSpace) -> VisionTransformer:
    """A ViT written by :func:`save_plain_vit`, in eval mode."""
    model = plain_vit(space)
    model.load_state_dict(load_weights(path)[0])
    return model.eval()


def train_plain_vit(
    study: StudyConfig,
    splits: DataSplits,
    epochs: int,
    *,
    progress: bool = True,
    init: Path | None = None,
) -> tuple[VisionTransformer, float]:
    """:func:`plain_vit` trained alone exactly as the supernet is: the same images in the same
    order, augmentation, optimiser, schedule, label smoothing and seed (a fresh schedule of
    ``epochs`` from the weights in ``init`` if given). Returns the model (in eval mode) and the
    training wall time in seconds."""
    cfg, space = study.training, study.space
    torch.manual_seed(study.seed)
    model = plain_vit(space, space.backbone.drop_path_rate)
    if init is not None:
        model.load_state_dict(load_weights(init)[0])
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total = epochs * steps_per_epoch
    optimizer, scheduler = create_optimizer(model, replace(cfg, epochs=epochs), steps_per_epoch)
    loss_fn = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    resize = space.max_resolution != study.data.image_size
    started = time.perf_counter()
    model.train()
    for step in tqdm(range(total), desc="train plain ViT", unit="step", disable=not progress):
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(study.seed, epoch, len(splits.train))
        rows = torch.from_numpy(order[position * cfg.batch_size : (position + 1) * cfg.batch_size])
        x, labels = training_batch(study, splits, rows, step, torch.device("cpu"))
        if resize:
            x = torch.nn.functional.interpolate(x, size=space.max_resolution, mode="bilinear")
        scheduler.step_update(step)
        loss = loss_fn(model(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval(), time.perf_counter() - started
