"""Reading a trained supernet back from its run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from exitnas.errors import CheckpointError, ConfigError
from exitnas.spaces import StudyConfig
from exitnas.supernet.checkpoint import load_weights, read_weights_meta
from exitnas.supernet.supervit import SuperViT
from exitnas.supernet.train import DESCRIPTION, WEIGHTS, build_supernet

__all__ = ["checked_study", "load_supernet", "trained_study"]


def trained_study(run_dir: str | Path, study: StudyConfig | None = None) -> StudyConfig:
    """The study a run folder's finished supernet was trained for, without loading weights.

    Args:
        run_dir: folder written by ``exitnas train``.
        study: if given, the run must have been trained for this study.

    Raises:
        CheckpointError: the folder holds no finished supernet, its description is corrupt,
            or it was trained for a different study.
    """
    run = Path(run_dir)
    path = run / DESCRIPTION
    if not path.is_file():
        raise CheckpointError(f"no trained supernet in {run} (missing {DESCRIPTION}); run train")
    try:
        description = json.loads(path.read_text())
        trained = StudyConfig.from_dict(description["study"])
    except (OSError, ValueError, KeyError, ConfigError) as err:
        raise CheckpointError(f"{path} is unreadable or corrupt ({err})") from None
    if not description.get("training", {}).get("complete"):
        raise CheckpointError(f"{run} holds an unfinished training run; run train to finish it")
    if study is not None and study.key() != trained.key():
        raise CheckpointError(
            f"{run} was trained for another study: {trained.key_differences(study)} "
            "(here: the run, there: the study file)"
        )
    return trained


def checked_study(run_dir: str | Path, study: StudyConfig | None = None) -> StudyConfig:
    """:func:`trained_study`, with the weights file checked to be its own from the file's
    header (the tensors are not read: :func:`load_supernet` reads them when needed)."""
    run = Path(run_dir)
    trained = trained_study(run, study)
    _check_belongs(run, trained, read_weights_meta(run / WEIGHTS))
    return trained


def _check_belongs(run: Path, trained: StudyConfig, meta: dict[str, Any]) -> None:
    if meta.get("study_key") != trained.key():
        raise CheckpointError(
            f"{run / WEIGHTS} does not belong to {run / DESCRIPTION} (study key mismatch)"
        )


def load_supernet(
    run_dir: str | Path, study: StudyConfig | None = None, map_location: str = "cpu"
) -> tuple[SuperViT, StudyConfig]:
    """Load the trained supernet of a run folder (``runs/<study>``).

    Args:
        run_dir: folder written by ``exitnas train``.
        study: if given, the run must have been trained for this study.
        map_location: device for the weights.

    Returns:
        The supernet in eval mode and the study it was trained for.

    Raises:
        CheckpointError: the folder holds no finished supernet, its files are corrupt, or it
            was trained for a different study.
    """
    run = Path(run_dir)
    trained = trained_study(run, study)
    tensors, meta = load_weights(run / WEIGHTS)
    _check_belongs(run, trained, meta)
    model = build_supernet(trained)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{run / WEIGHTS} does not fit the study's supernet: {first}"
        ) from None
    return model.to(torch.device(map_location)).eval(), trained
