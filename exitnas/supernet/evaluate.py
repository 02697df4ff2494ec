"""Running a sub-network over a whole split: per-exit logits and accuracies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from exitnas.spaces import SubnetConfig
from exitnas.supernet.batches import normalize
from exitnas.supernet.subnet import ExitViT
from exitnas.supernet.supervit import SuperViT

__all__ = ["exit_accuracies", "predict_exits"]


@torch.no_grad()
def predict_exits(
    model: SuperViT | ExitViT,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    config: SubnetConfig | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Logits of every exit for uint8 ``images``: an array ``(num_exits, N, num_classes)``.

    Args:
        model: a :class:`~exitnas.supernet.SuperViT` (``config`` is run, then the previously
            active config restored) or an extracted :class:`~exitnas.supernet.ExitViT`
            (``config`` must be None).
    """
    was_training = model.training
    previous = model.run_config()
    model.eval()
    if config is not None:
        if not isinstance(model, SuperViT):
            raise TypeError("config can only be given with a SuperViT")
        model.set_active(config)
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size].to(device), mean, std)
        chunks.append(torch.stack(model(batch)).float().cpu())  # (E, B, K)
    model.train(was_training)
    if isinstance(model, SuperViT):
        model.set_active(previous, check=False)  # training may leave a warm-up config
    return torch.cat(chunks, dim=1).numpy()


def exit_accuracies(logits: np.ndarray, labels: torch.Tensor | np.ndarray) -> list[float]:
    """Top-1 accuracy of each exit, from :func:`predict_exits` output."""
    labels = np.asarray(labels)
    return [float((exit_logits.argmax(-1) == labels).mean()) for exit_logits in logits]
