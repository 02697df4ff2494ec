"""Training once: checkpoints, exact resume, refusal of foreign or corrupt runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from exitnas.errors import CheckpointError, ConfigError
from exitnas.spaces import StudyConfig
from exitnas.supernet import TrainingInterrupted, build_supernet, load_supernet, train_supernet
from exitnas.supernet.checkpoint import load_checkpoint, load_weights, save_checkpoint


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(run / "supernet.safetensors")[0]


def test_training_writes_weights_and_description(study, tiny_data, tmp_path: Path) -> None:
    summary = train_supernet(study, tiny_data, tmp_path / "run", progress=False)
    assert summary.steps == 2 * 4  # 128 images, batch 32, 2 epochs
    description = json.loads((tmp_path / "run" / "supernet.json").read_text())
    assert description["study_key"] == study.key()
    assert description["training"]["complete"] is True
    assert StudyConfig.from_dict(description["study"]) == study
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert 0.0 <= summary.val_accuracy_largest <= 1.0
    model, trained = load_supernet(tmp_path / "run", study)
    assert trained == study
    stored = weights(tmp_path / "run")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, stored[name])


def test_same_seed_same_weights_and_finished_runs_are_not_retrained(
    study, tiny_data, tmp_path: Path
) -> None:
    train_supernet(study, tiny_data, tmp_path / "a", progress=False)
    train_supernet(study, tiny_data, tmp_path / "b", progress=False)
    before = (tmp_path / "a" / "supernet.safetensors").stat().st_mtime_ns
    again = train_supernet(study, tiny_data, tmp_path / "a", progress=False)
    assert again.steps == 8
    assert (tmp_path / "a" / "supernet.safetensors").stat().st_mtime_ns == before
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@pytest.mark.parametrize("stop_at", [3, 5])
def test_resume_matches_an_uninterrupted_run(study, tiny_data, tmp_path: Path, stop_at) -> None:
    train_supernet(study, tiny_data, tmp_path / "straight", progress=False)
    with pytest.raises(TrainingInterrupted) as stop:
        train_supernet(study, tiny_data, tmp_path / "resumed", progress=False, stop_at_step=stop_at)
    assert stop.value.step == stop_at
    description = json.loads((tmp_path / "resumed" / "supernet.json").read_text())
    assert description["training"] == {"complete": False, "step": stop_at, "steps": 8, "init": None}
    train_supernet(study, tiny_data, tmp_path / "resumed", progress=False)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name])


def test_checkpoint_round_trip(study, tmp_path: Path) -> None:
    model = build_supernet(study)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 16, 16))[0].sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "ckpt.safetensors", model, optimizer, {"step": 1})
    other = build_supernet(replace(study, seed=99))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    meta = load_checkpoint(tmp_path / "ckpt.safetensors", other, other_opt)
    assert meta["step"] == 1
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        if p.grad is None:
            continue
        a, b = optimizer.state[p], other_opt.state[q]
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"])


def test_corrupt_checkpoint_is_refused_and_kept(study, tiny_data, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_supernet(study, tiny_data, run, progress=False, stop_at_step=2)
    ckpt = run / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a torn write
    with pytest.raises(CheckpointError, match="corrupt"):
        train_supernet(study, tiny_data, run, progress=False)
    assert ckpt.stat().st_size == 1000  # left for the user to inspect, not overwritten


def test_a_run_of_another_study_is_refused(study, tiny_data, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_supernet(study, tiny_data, run, progress=False)
    before = (run / "supernet.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="another study"):
        train_supernet(study.with_overrides(epochs=3), tiny_data, run, progress=False)
    with pytest.raises(CheckpointError, match="another study"):
        load_supernet(run, study.with_overrides(epochs=3))
    assert (run / "supernet.safetensors").read_bytes() == before


def test_data_must_match_the_space(study, tiny_data, tmp_path: Path) -> None:
    wrong = replace(study, space=replace(study.space, num_classes=5))
    with pytest.raises(ConfigError, match="num_classes"):
        train_supernet(wrong, tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_load_supernet_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no trained supernet"):
        load_supernet(tmp_path)
