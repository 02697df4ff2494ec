"""The supernet's training recipe: which sub-networks learn each step, from what, and how.

One step runs a *sandwich* of sub-networks over the same batch and accumulates their gradients
before one optimiser update (once-for-all, BigNAS, SuperViT):

- the fixed paths named by ``training.sandwich`` (``standalone``: the plain ViT inside the space;
  ``largest``; ``smallest``), the teacher first;
- ``training.random_subnets`` random sub-networks, drawn as the search draws them
  (``sampling: search``) or uniformly over exit counts (``uniform``).

For its first ``standalone_epochs`` a step trains the standalone path alone (once-for-all trains
the full network before it shrinks it; a warm start in one run).

The teacher learns from the labels. Every other path learns from
``(1 - kd_ratio) x labels + kd_ratio x teacher`` once ``distill_start_epochs`` have passed, and
from the labels alone before (the teacher is not worth copying yet). Keep rates fall from 1.0
to their target over the ``keep_warmup_epochs`` after the sandwich starts (EViT).

Within one path, ``head_training`` decides what trains the backbone:

- ``joint``: every exit of the path, its losses weighted by ``exit_weights`` (equal; depth:
  exit i of n weighs i/n, as PABEE; last: only the last exit), the weights summing to 1;
- ``detached``: only the path's last exit (LGViT, DeeBERT). Every head type at every candidate
  exit layer the path's branches pass then learns on detached features, so no head pulls the
  backbone and none is starved; ``exit_weights`` does not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from exitnas.spaces import BranchConfig, ExitConfig, SearchSpace, SubnetConfig, TrainingConfig
from exitnas.supernet.cascade import CascadeState, plan_stages
from exitnas.supernet.supervit import SuperViT, head_key

__all__ = [
    "exit_weights",
    "path_loss",
    "sandwich_backward",
    "sandwich_paths",
    "warm_keep_rates",
]


def sandwich_paths(
    space: SearchSpace, cfg: TrainingConfig, rng: np.random.Generator, epoch: float = 1e9
) -> list[tuple[str, SubnetConfig]]:
    """The named sub-networks of one step, the teacher first.

    Args:
        space: the search space.
        cfg: the training section.
        rng: draws the random sub-networks (seeded by the step).
        epoch: training progress in epochs (fractional), for the standalone phase and the
            keep-rate warm-up.
    """
    if epoch < cfg.standalone_epochs:
        return [("standalone", space.standalone())]
    fixed = {
        "standalone": space.standalone,
        "largest": space.largest,
        "smallest": space.smallest,
    }
    order = [cfg.teacher, *(name for name in cfg.sandwich if name != cfg.teacher)]
    paths: list[tuple[str, SubnetConfig]] = [(name, fixed[name]()) for name in order]
    paths += [("random", space.sample(rng, cfg.sampling)) for _ in range(cfg.random_subnets)]
    since = epoch - cfg.standalone_epochs
    return [(name, warm_keep_rates(c, since, cfg.keep_warmup_epochs)) for name, c in paths]


def warm_keep_rates(config: SubnetConfig, epoch: float, warmup_epochs: float) -> SubnetConfig:
    """``config`` with keep rates moved linearly from 1.0 (epoch 0) to its own (warm-up end)."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return config
    ramp = epoch / warmup_epochs
    branches = [replace(b, keep_rate=1.0 - (1.0 - b.keep_rate) * ramp) for b in config.branches]
    return replace(config, branches=tuple(branches))


def exit_weights(num_exits: int, how: str) -> list[float]:
    """Loss weight of each exit of a path in cascade order (summing to 1)."""
    if how == "equal":
        raw = [1.0] * num_exits
    elif how == "depth":
        raw = [float(i) for i in range(1, num_exits + 1)]
    elif how == "last":
        raw = [0.0] * (num_exits - 1) + [1.0]
    else:
        raise ValueError(f"exit_weights: {how!r} is not allowed; allowed: equal, depth, last")
    return [w / sum(raw) for w in raw]


def sandwich_backward(
    model: SuperViT,
    images: torch.Tensor,
    labels: torch.Tensor,
    paths: list[tuple[str, SubnetConfig]],
    cfg: TrainingConfig,
    epoch: float,
) -> float:
    """Accumulate the gradients of one step's paths (``paths[0]`` the teacher, its loss times
    ``cfg.teacher_weight`` when other paths share the step); the summed loss.

    Args:
        model: the supernet (in training mode).
        images: the normalised batch.
        labels: its labels.
        paths: from :func:`sandwich_paths`.
        cfg: the training section (label smoothing, distillation, head training, exit weights).
        epoch: training progress in epochs, for the start of distillation.
    """
    hard = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    soft = SoftTargetCrossEntropy()
    temperature = cfg.distill_temperature
    kd = cfg.kd_ratio if epoch >= cfg.distill_start_epochs else 0.0
    teacher: torch.Tensor | None = None

    def criterion(logits: torch.Tensor) -> torch.Tensor:
        if teacher is None or kd == 0.0:
            return hard(logits, labels)
        distil = soft(logits / temperature, teacher) * temperature**2
        return distil if kd == 1.0 else (1.0 - kd) * hard(logits, labels) + kd * distil

    total = 0.0
    for i, (_, config) in enumerate(paths):
        loss, last = path_loss(model, images, config, criterion, cfg)
        if i == 0 and len(paths) > 1:
            loss = cfg.teacher_weight * loss
        loss.backward()
        total += loss.item()
        if teacher is None:
            teacher = (last.detach() / temperature).softmax(dim=-1)
    return total


def path_loss(
    model: SuperViT,
    images: torch.Tensor,
    config: SubnetConfig,
    criterion: Callable[[torch.Tensor], torch.Tensor],
    cfg: TrainingConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of one sub-network and its last exit's logits.

    Args:
        model: the supernet.
        images: the normalised batch.
        config: the sub-network (keep rates may lie outside the space during warm-up).
        criterion: the loss of one exit's logits (labels, or labels and teacher).
        cfg: the training section (``head_training``, ``exit_weights``).
    """
    space = model.space
    detached = cfg.head_training == "detached"
    weights = exit_weights(config.num_exits, cfg.exit_weights)
    own = {(b, e.layer): e.head for b, e in config.exits}
    final = config.exits[-1]
    final_at = (final[0], final[1].layer)
    # the same cascade with a stage at every candidate exit layer, so detached heads see them all
    passes = _every_exit_layer(config, space) if detached else config
    model.set_active(passes, check=False)
    state = CascadeState(images=images)
    losses: list[torch.Tensor] = []
    own_index = 0
    last: torch.Tensor | None = None
    for stage in plan_stages(passes):
        state = model.advance(stage, state)
        branch = passes.branches[stage.branch]
        at = (stage.branch, stage.end)
        x, cells, prior = state.tokens, state.cell_index, state.prior
        assert x is not None and cells is not None
        if at in own:
            joint = not detached or at == final_at
            head = model.heads[head_key(stage.branch, stage.end, own[at])]
            features = x if joint else x.detach()
            logits = head(features, cells, branch.grid)
            if prior is not None:
                logits = logits + (prior if joint else prior.detach())
            if detached:
                if joint:
                    losses.append(criterion(logits))
            elif weights[own_index]:
                losses.append(weights[own_index] * criterion(logits))
            own_index += 1
            state = replace(state, logits=logits)
            last = logits
        if detached and stage.end in space.exit_layers:
            head_losses = []
            for name in space.head_types:
                if at in own and name == own[at]:
                    if at == final_at:
                        continue  # trained jointly above
                    out = logits  # this exit's own head, already run on detached features
                else:
                    out = model.heads[head_key(stage.branch, stage.end, name)](
                        x.detach(), cells, branch.grid
                    )
                    if prior is not None:
                        out = out + prior.detach()
                head_losses.append(criterion(out))
            if head_losses:
                losses.append(torch.stack(head_losses).mean())
    assert last is not None
    return torch.stack(losses).sum(), last


def _every_exit_layer(config: SubnetConfig, space: SearchSpace) -> SubnetConfig:
    """``config`` with an exit at every candidate layer up to each branch's depth.

    The added exits are only places to stop the backbone; their heads are chosen by the caller.
    """
    branches: list[BranchConfig] = []
    for branch in config.branches:
        heads = {e.layer: e.head for e in branch.exits}
        layers = sorted({x for x in space.exit_layers if x < branch.depth} | set(heads))
        exits = tuple(ExitConfig(x, heads.get(x, space.head_types[0])) for x in layers)
        branches.append(replace(branch, exits=exits))
    return replace(config, branches=tuple(branches))
