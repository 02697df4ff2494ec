"""One optimiser update of supernet training: its batch, its sub-networks, its gradients.

:func:`create_optimizer` builds timm's AdamW and cosine schedule, :func:`training_batch` the
step's augmented images, and :func:`train_step` runs the sandwich of
:mod:`exitnas.supernet.recipe` on them and updates the weights. Everything random in a step
derives from ``(seed, step)``, so any step can be replayed on its own.

Example:
    >>> optimizer, scheduler = create_optimizer(model, study.training, steps_per_epoch)
    >>> loss = train_step(model, optimizer, scheduler, study, data, rows, step, steps_per_epoch)
"""

from __future__ import annotations

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from exitnas.data import DataSplits
from exitnas.spaces import StudyConfig, TrainingConfig
from exitnas.supernet.batches import augment, normalize, step_seed
from exitnas.supernet.distributed import Ranks, average_gradients
from exitnas.supernet.recipe import sandwich_backward, sandwich_paths
from exitnas.supernet.supervit import SuperViT

__all__ = ["create_optimizer", "train_step", "training_batch"]


def create_optimizer(
    model: torch.nn.Module, cfg: TrainingConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """timm's AdamW and a per-update cosine schedule with warm-up, from a training section.

    The schedule is stateless (``step_update(step)`` sets the rate of any step), so a run
    resumed at any step continues exactly.
    """
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=cfg.epochs * steps_per_epoch,
        lr_min=cfg.min_lr,
        t_in_epochs=False,
        warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
        warmup_lr_init=cfg.lr * 0.01,
    )
    return optimizer, scheduler


def training_batch(
    study: StudyConfig, data: DataSplits, rows: torch.Tensor, step: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised, augmented images and labels of one step (augmentation seeded by the step)."""
    cfg = study.training
    generator = torch.Generator().manual_seed(step_seed(study.seed, step, 0))
    images = augment(data.train.images[rows], generator, cfg.crop_padding, cfg.hflip)
    return normalize(images.to(device), data.mean, data.std), data.train.labels[rows].to(device)


def train_step(
    model: SuperViT,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineLRScheduler,
    study: StudyConfig,
    data: DataSplits,
    rows: np.ndarray,
    step: int,
    steps_per_epoch: int,
    ranks: Ranks | None = None,
) -> float:
    """Train the step's sandwich of sub-networks on the training rows ``rows``, then update.

    Args:
        model: the supernet, on the study's training device, in training mode.
        optimizer: from :func:`create_optimizer`.
        scheduler: from :func:`create_optimizer`; set to this step's rate.
        study: the study (space, training section, seed).
        data: the splits; ``rows`` index the training split.
        rows: the step's global batch.
        step: the step's index in the whole schedule (seeds its randomness).
        steps_per_epoch: optimiser updates per epoch (the step's progress in epochs).
        ranks: this process's rank; with several, each trains on its slice of the batch and
            the gradients are averaged before the update.

    Returns:
        The step's loss, summed over the sandwich.
    """
    ranks = ranks or Ranks()
    cfg = study.training
    device = torch.device(cfg.device)
    images, labels = training_batch(study, data, torch.from_numpy(rows), step, device)
    if ranks.world > 1:  # the same global batch everywhere, a slice of it here
        share = len(images[ranks.rank :: ranks.world]) / len(images)
        images, labels = images[ranks.rank :: ranks.world], labels[ranks.rank :: ranks.world]
    rng = np.random.default_rng(step_seed(study.seed, step, 1))
    at_epoch = step / steps_per_epoch  # training progress in epochs
    paths = sandwich_paths(study.space, cfg, rng, at_epoch)
    scheduler.step_update(step)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(step_seed(study.seed, step, 2))  # stochastic depth
        loss_value = sandwich_backward(model, images, labels, paths, cfg, at_epoch)
    if ranks.world > 1:
        average_gradients(model, share)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value
