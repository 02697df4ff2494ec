"""Training the supernet once: the sandwich rule with in-place distillation.

Every step (:mod:`exitnas.supernet.steps`) trains the sandwich of
:mod:`exitnas.supernet.recipe` (the teacher on the labels, the other fixed and random
sub-networks on labels and the teacher's soft predictions), accumulating gradients before one
AdamW update (timm's optimiser factory and cosine schedule).
All randomness of a step (its images, augmentation, sub-networks and stochastic depth) derives
from ``(seed, step)``, so a run resumed from any checkpoint continues exactly as if it had
never stopped, on the same machine with the same number of threads (:mod:`exitnas.threads`;
another count sums in another order and changes the weights slightly).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler
from tqdm.auto import tqdm

import exitnas
from exitnas.data import DataSplits
from exitnas.errors import CheckpointError, ConfigError
from exitnas.spaces import StudyConfig
from exitnas.supernet.batches import epoch_order
from exitnas.supernet.checkpoint import (
    atomic_write,
    load_weights,
    remove_stale_temporaries,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
)
from exitnas.supernet.distributed import Ranks
from exitnas.supernet.evaluate import exit_accuracies, predict_exits
from exitnas.supernet.pretrained import VitInit, load_vit_init
from exitnas.supernet.steps import create_optimizer, train_step
from exitnas.supernet.supervit import SuperViT
from exitnas.threads import use_threads

__all__ = [
    "TrainSummary",
    "TrainingInterrupted",
    "build_supernet",
    "check_target",
    "train_supernet",
]

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "supernet.safetensors"
DESCRIPTION = "supernet.json"


class TrainingInterrupted(Exception):
    """Training stopped early (Ctrl-C, SIGTERM or ``stop_at_step``); a checkpoint was written."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"training interrupted after step {step}; checkpoint at {path}")
        self.step, self.path = step, path


@dataclass(frozen=True)
class TrainSummary:
    """What a finished training run reports (also stored in ``supernet.json``)."""

    steps: int  # optimiser updates in the whole schedule
    epochs: int
    seconds: float  # wall-clock seconds of training, summed over resumed runs
    images_per_second: float  # training images per second (each through every sandwich net)
    final_loss: float  # loss of the last step, summed over the sandwich
    val_accuracy_largest: float  # largest sub-network's last exit on the validation split
    val_accuracy_smallest: float  # smallest sub-network's exit on the validation split
    # the standalone configuration's last exit (the plain ViT inside the space); older runs: nan
    val_accuracy_standalone: float = float("nan")


def build_supernet(study: StudyConfig) -> SuperViT:
    """The study's supernet, initialised from the study seed (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(study.seed)
        return SuperViT(study.space)


def train_supernet(
    study: StudyConfig,
    data: DataSplits,
    out_dir: str | Path,
    *,
    progress: bool = True,
    stop_at_step: int | None = None,
    ranks: Ranks | None = None,
    init: str | Path | None = None,
) -> TrainSummary:
    """Train ``study``'s supernet into ``out_dir``, resuming from its checkpoint if present.

    Writes ``supernet.safetensors`` (weights) and ``supernet.json`` (study, supernet and
    training state) when done; ``checkpoint.safetensors`` while running.

    Args:
        study: the study (space, training budget, seed).
        data: splits from :func:`exitnas.data.load_splits`; only train and val are used.
        out_dir: the run folder, e.g. ``runs/quickstart``.
        progress: show a tqdm progress bar (epoch, loss, images/s, ETA).
        stop_at_step: stop (as if interrupted) once this many steps are done.
        ranks: this process's rank among several training processes
            (:func:`~exitnas.supernet.distributed.init_distributed`); alone by default.
        init: a pretrained timm ViT (safetensors or torch file) of the backbone's dims to start
            from (:func:`~exitnas.supernet.pretrained.init_from_vit`); read and checked before
            anything is written, applied only to a fresh run (a resumed run keeps its
            checkpoint). Its path and sha256 go into ``supernet.json``.

    Raises:
        CheckpointError: ``out_dir`` holds a run of a different study, or a corrupt checkpoint;
            ``init`` is missing, unreadable, or of other dims.
        TrainingInterrupted: stopped by a signal or ``stop_at_step``; run again to resume.
    """
    out = Path(out_dir)
    ranks = ranks or Ranks()
    check_target(study, out)
    _check_data(study, data)
    vit = load_vit_init(init, study.space) if init is not None else None
    done = _finished_summary(out, study)
    if done is not None:
        return done
    run, start, seconds = _start_run(study, data, out, ranks, vit)
    loss_value, seconds = _train_steps(run, start, seconds, progress, stop_at_step)
    if not ranks.main:  # rank 0 evaluates and writes the run; read its summary
        ranks.barrier()
        finished = _finished_summary(out, study)
        assert finished is not None
        return finished
    return run.finish(seconds, loss_value)


@dataclass
class _Run:
    """A training run in progress: what its steps, checkpoints and end share."""

    study: StudyConfig
    data: DataSplits
    out: Path  # the run folder
    ranks: Ranks
    model: SuperViT
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    steps_per_epoch: int
    init_record: dict | None  # the warm start, as supernet.json records it

    @property
    def total(self) -> int:
        """Optimiser updates in the whole schedule."""
        return self.study.training.epochs * self.steps_per_epoch

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT

    def save(self, step: int, elapsed: float) -> None:
        """Write the checkpoint after ``step`` steps (on the main rank only)."""
        if not self.ranks.main:
            return
        training = {"complete": False, "step": step, "steps": self.total, "init": self.init_record}
        _write_description(self.out, self.study, self.model, training)
        meta = {
            "step": step,
            "seconds": elapsed,
            "study_key": self.study.key(),
            "init": self.init_record,
        }
        save_checkpoint(
            self.checkpoint, self.model, self.optimizer, {**meta, "study": self.study.to_dict()}
        )

    def finish(self, seconds: float, loss_value: float) -> TrainSummary:
        """Evaluate, write the weights and ``supernet.json``, drop the checkpoint."""
        study, data, model, cfg = self.study, self.data, self.model, self.study.training
        model.eval()
        accs = [
            exit_accuracies(
                predict_exits(model, data.val.images, data.mean, data.std, config=c),
                data.val.labels,
            )[-1]
            for c in (study.space.largest(), study.space.smallest(), study.space.standalone())
        ]
        summary = TrainSummary(
            steps=self.total,
            epochs=cfg.epochs,
            seconds=round(seconds, 2),
            images_per_second=round(cfg.epochs * len(data.train) / max(seconds, 1e-9), 1),
            final_loss=round(loss_value, 4),
            val_accuracy_largest=accs[0],
            val_accuracy_smallest=accs[1],
            val_accuracy_standalone=accs[2],
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_weights(self.out / WEIGHTS, state, {"study_key": study.key(), "format": 1})
        training = {"complete": True, **asdict(summary), "init": self.init_record}
        _write_description(self.out, study, model, training)
        self.checkpoint.unlink(missing_ok=True)
        self.ranks.barrier()
        return summary


def _start_run(
    study: StudyConfig, data: DataSplits, out: Path, ranks: Ranks, vit: VitInit | None
) -> tuple[_Run, int, float]:
    """Build the supernet and its optimiser, warm-started from ``vit`` or resumed from the
    run's checkpoint; returns the run, the steps done and the seconds they took."""
    cfg = study.training
    use_threads(cfg.num_threads)  # 0: automatic (exitnas.threads), checked at every epoch
    model = build_supernet(study).to(torch.device(cfg.device))
    ckpt = out / CHECKPOINT
    init_record = None
    if vit is not None and not ckpt.exists():  # a resumed run keeps its checkpoint's weights
        init_record = {**vit.record(), "report": vit.apply(model)}
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    optimizer, scheduler = create_optimizer(model, cfg, steps_per_epoch)
    start, seconds = 0, 0.0
    if ckpt.exists():
        tensors, meta = load_weights(ckpt)
        if meta.get("study_key") != study.key():
            raise CheckpointError(_other_study(ckpt, meta))
        restore_checkpoint(ckpt, tensors, meta, model, optimizer)
        start, seconds = int(meta["step"]), float(meta["seconds"])
        init_record = meta.get("init")
    out.mkdir(parents=True, exist_ok=True)
    if ranks.main:
        remove_stale_temporaries(out)
    run = _Run(study, data, out, ranks, model, optimizer, scheduler, steps_per_epoch, init_record)
    return run, start, seconds


def _train_steps(
    run: _Run, start: int, seconds: float, progress: bool, stop_at_step: int | None
) -> tuple[float, float]:
    """Train from step ``start`` to the end, checkpointing on the way.

    Returns:
        ``(loss of the last step, seconds of training including the earlier runs')``.

    Raises:
        TrainingInterrupted: stopped by a signal or ``stop_at_step``; the checkpoint is written.
    """
    study, cfg, ranks, total = run.study, run.study.training, run.ranks, run.total
    steps_per_epoch, num_train = run.steps_per_epoch, len(run.data.train)
    run.model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"train {study.name}" + (f" ({ranks.world} processes)" if ranks.world > 1 else ""),
        unit="step",
        disable=not (progress and ranks.main),
    )
    began, loss_value = time.perf_counter(), float("nan")
    order_epoch = start // steps_per_epoch
    order = epoch_order(study.seed, order_epoch, num_train)
    with _stop_requests() as stop, bar:
        for step in range(start, total):
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(study.seed, epoch, num_train), epoch
                use_threads(cfg.num_threads)
            rows = order[position * cfg.batch_size : (position + 1) * cfg.batch_size]
            loss_value = train_step(
                run.model,
                run.optimizer,
                run.scheduler,
                study,
                run.data,
                rows,
                step,
                steps_per_epoch,
                ranks,
            )
            done_steps = step + 1
            elapsed = seconds + time.perf_counter() - began
            bar.update(1)
            rate = (done_steps - start) * cfg.batch_size / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix(
                epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}"
            )
            boundary = done_steps % cfg.checkpoint_every == 0 or done_steps % steps_per_epoch == 0
            halt = stop.is_set() or (stop_at_step is not None and done_steps >= stop_at_step)
            halt = ranks.any(halt)  # every rank stops after the same step
            if (boundary or halt) and done_steps < total:
                run.save(done_steps, elapsed)
            if halt and done_steps < total:
                ranks.barrier()  # the checkpoint is written before any rank reports it
                raise TrainingInterrupted(done_steps, run.checkpoint)
    return loss_value, seconds + time.perf_counter() - began


def check_target(study: StudyConfig, out: Path) -> None:
    """Refuse, before any work, a run folder that is a file or a device that is not there."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    device = torch.device(study.training.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"training.device: {study.training.device!r} but this torch build sees no CUDA "
            "device; use cpu"
        )


def _check_data(study: StudyConfig, data: DataSplits) -> None:
    space = study.space
    if data.num_classes != space.num_classes or data.in_chans != space.in_chans:
        raise ConfigError(
            f"space.num_classes/in_chans: the study says {space.num_classes} classes and "
            f"{space.in_chans} channels, the data has {data.num_classes} and {data.in_chans}"
        )


def _finished_summary(out: Path, study: StudyConfig) -> TrainSummary | None:
    path = out / DESCRIPTION
    if not path.is_file():
        return None
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is unreadable ({err}); move it away to train again"
        ) from None
    if description.get("study_key") != study.key():
        raise CheckpointError(_other_study(path, description))
    training = description.get("training", {})
    if not training.get("complete") or not (out / WEIGHTS).is_file():
        return None
    fields = TrainSummary.__dataclass_fields__
    return TrainSummary(**{k: v for k, v in training.items() if k in fields})


def _other_study(path: Path, meta: dict) -> str:
    return (
        f"{path} belongs to another study or training budget (study key "
        f"{meta.get('study_key')}); train into another folder with --out, or remove "
        f"{path.parent} to start over"
    )


def _write_description(out: Path, study: StudyConfig, model: SuperViT, training: dict) -> None:
    description = {
        "format": 1,
        "exitnas_version": exitnas.__version__,
        "study_key": study.key(),
        "study": study.to_dict(),
        "supernet": {
            "class": "SuperViT",
            "parameters": sum(p.numel() for p in model.parameters()),
            "heads": len(model.heads),
            "base_patch_size": model.base_patch,
            "base_grid": model.base_grid,
            "weights": WEIGHTS,
        },
        "training": training,
    }
    text = json.dumps(description, indent=2) + "\n"
    atomic_write(out / DESCRIPTION, lambda tmp: Path(tmp).write_text(text))


@contextmanager
def _stop_requests():
    """Turn the first Ctrl-C / SIGTERM into a request to stop after the current step."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
