"""Warm start from a pretrained timm ViT: exact mapping, refusals, and ``train --init``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from exitnas.cli import main
from exitnas.data import DataSplits
from exitnas.errors import CheckpointError
from exitnas.spaces import BranchConfig, ExitConfig, StudyConfig, SubnetConfig
from exitnas.supernet import (
    TrainingInterrupted,
    build_supernet,
    init_from_vit,
    load_vit_init,
    load_vit_state,
    train_supernet,
)
from exitnas.supernet.batches import normalize
from exitnas.supernet.cascade import DEFAULT_NORM_LAYER, resize_images
from exitnas.supernet.checkpoint import save_weights
from exitnas.supernet.evaluate import exit_accuracies, predict_exits


def tiny_vit(
    img: int,
    patch: int,
    embed_dim: int = 32,
    depth: int = 4,
    num_classes: int = 10,
    **kwargs: Any,
) -> VisionTransformer:
    """A timm ViT of the tiny space's dims (other timm options as keywords)."""
    return VisionTransformer(
        img_size=img,
        patch_size=patch,
        in_chans=1,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=2,
        mlp_ratio=2.0,
        norm_layer=DEFAULT_NORM_LAYER,
        **kwargs,
    )


def vit_inputs(digits: DataSplits, images: torch.Tensor, img: int) -> torch.Tensor:
    """What the supernet's branch at resolution ``img`` sees: normalised, then resized."""
    return resize_images(normalize(images, digits.mean, digits.std), img)


def train_vit(digits: DataSplits, img: int, patch: int, steps: int = 80) -> VisionTransformer:
    """A tiny ViT trained for a few steps on the digits, then its head fitted on its features
    (a tiny ViT learns slowly; the probe lifts it well above chance). In eval mode."""
    torch.manual_seed(0)
    vit = tiny_vit(img, patch)
    optimizer = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    x, y = vit_inputs(digits, digits.train.images, img), digits.train.labels
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(len(x), (64,), generator=generator)
        F.cross_entropy(vit(x[rows]), y[rows]).backward()
        optimizer.step()
        optimizer.zero_grad()
    vit.eval()
    with torch.no_grad():
        features = vit.forward_head(vit.forward_features(x), pre_logits=True)  # (N, C)
    optimizer = torch.optim.Adam(vit.head.parameters(), lr=1e-2)
    for _ in range(500):
        F.cross_entropy(vit.head(features), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return vit


def standalone(resolution: int, patch: int, depth: int = 4) -> SubnetConfig:
    exit_ = ExitConfig(depth, "linear")
    return SubnetConfig((BranchConfig(resolution, patch, (exit_,), keep_rate=1.0),), reuse=True)


@pytest.fixture(scope="module", params=[(16, 2), (8, 2)], ids=["img16-patch2", "img8-patch2"])
def trained_vit(request, digits: DataSplits, tmp_path_factory) -> tuple[VisionTransformer, Path]:
    """A trained tiny ViT and its safetensors file (as benchmarks/baseline_vit.py writes it)."""
    img, patch = request.param
    vit = train_vit(digits, img, patch)
    path = tmp_path_factory.mktemp("vit") / "vit.safetensors"
    save_weights(path, vit.state_dict(), {"vit": {"num_heads": 2}})
    return vit, path


def test_the_standalone_path_scores_the_vits_accuracy(
    trained_vit, study: StudyConfig, digits: DataSplits
) -> None:
    """The supernet's one-branch path at the ViT's resolution and patch size (16 px / patch 2
    is the space's largest resolution with its smallest patch) is the ViT: the same logits and
    the same validation accuracy."""
    vit, path = trained_vit
    img, patch = vit.patch_embed.img_size[0], vit.patch_embed.patch_size[0]
    model = build_supernet(study)
    report = load_vit_init(path, study.space).apply(model)
    assert report["patch_size"] == patch and report["img_size"] == img
    assert report["patch_embed_exact_at"] == patch and report["pos_embed_error"] < 1e-5
    assert "heads b0_l4_linear, b1_l4_linear, b2_l4_linear" in report["set"]

    with torch.no_grad():
        expected = vit(vit_inputs(digits, digits.val.images, img)).numpy()
    logits = predict_exits(
        model, digits.val.images, digits.mean, digits.std, config=standalone(img, patch)
    )[-1]
    assert abs(logits - expected).max() < 1e-4
    vit_accuracy = exit_accuracies(expected[None], digits.val.labels)[0]
    assert vit_accuracy > 0.3  # trained: well above chance (0.1)
    assert abs(exit_accuracies(logits[None], digits.val.labels)[0] - vit_accuracy) <= 0.005


def test_timm_resampling_alone_would_not_reproduce_the_kernel(study: StudyConfig) -> None:
    """Why the stored kernel is corrected: PI-resizing timm's 2 -> 4 resample back to 2 is not
    the original kernel; the stored one is."""
    from timm.layers import resample_patch_embed

    torch.manual_seed(1)
    vit = tiny_vit(16, 2)
    model = build_supernet(study)
    init_from_vit(model, vit.state_dict())
    kernel = vit.patch_embed.proj.weight.detach()
    naive = model.resampler(resample_patch_embed(kernel, [4, 4]), [2, 2])
    assert (naive - kernel).abs().max() > 1e-2
    assert (model.patch_weight(2) - kernel).abs().max() < 1e-5


def test_torch_files_load_like_safetensors(trained_vit, study: StudyConfig, tmp_path) -> None:
    vit, path = trained_vit
    state = vit.state_dict()
    plain, wrapped = tmp_path / "vit.pt", tmp_path / "vit.pth.tar"
    torch.save(state, plain)
    torch.save({"epoch": 3, "state_dict": state}, wrapped)  # a timm training checkpoint
    reference = build_supernet(study)
    init_from_vit(reference, load_vit_state(path))
    for file in (plain, wrapped):
        model = build_supernet(study)
        init_from_vit(model, load_vit_state(file))
        for (name, a), b in zip(
            model.state_dict().items(), reference.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "variant",
    [{"init_values": 0.5}, {"no_embed_class": True}, {"img_size": 16, "patch_size": 4}],
    ids=["layer-scale", "no-class-position", "img16-patch4"],
)
def test_vit_variants_map_exactly(variant, study: StudyConfig, images: torch.Tensor) -> None:
    torch.manual_seed(2)
    kwargs = {"img_size": 16, "patch_size": 2, **variant}
    options = {k: v for k, v in kwargs.items() if k not in ("img_size", "patch_size")}
    vit = tiny_vit(kwargs["img_size"], kwargs["patch_size"], **options).eval()
    with torch.no_grad():  # make position, class token and layer scale matter
        vit.pos_embed.normal_(std=0.5)
        vit.cls_token.normal_(std=0.5)
        for name, param in vit.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
    model = build_supernet(study).eval()
    init_from_vit(model, vit.state_dict())
    model.set_active(standalone(16, kwargs["patch_size"]))
    with torch.no_grad():
        assert (model(images)[-1] - vit(images)).abs().max() < 1e-4


def test_register_tokens_are_refused(study: StudyConfig) -> None:
    vit = tiny_vit(16, 2, reg_tokens=2)
    with pytest.raises(CheckpointError, match="no place in the supernet for register tokens"):
        init_from_vit(build_supernet(study), vit.state_dict())


def test_other_classes_keep_fresh_heads(study: StudyConfig) -> None:
    model = build_supernet(study)
    fresh = {k: v.clone() for k, v in model.heads.state_dict().items()}
    report = init_from_vit(model, tiny_vit(16, 2, num_classes=100).state_dict())
    assert "100 classes" in report["heads_fresh_because"]
    assert all(torch.equal(v, fresh[k]) for k, v in model.heads.state_dict().items())


def test_other_dims_are_named_in_one_message(study: StudyConfig, tmp_path) -> None:
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit(16, 4, 48, 3).state_dict().items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_vit_init(path, study.space)
    message = str(err.value)
    assert message.startswith(f"--init {path}: ")
    assert "embed_dim 48 in the checkpoint, 32 in the study" in message
    assert "depth 3 in the checkpoint, 4 in the study" in message
    assert "mlp hidden width 96 in the checkpoint, 64 in the study" in message
    assert "num_heads" not in message


def test_recorded_num_heads_are_checked(study: StudyConfig, tmp_path) -> None:
    path = tmp_path / "vit.safetensors"
    save_weights(path, tiny_vit(16, 2).state_dict(), {"vit": {"num_heads": 4}})
    with pytest.raises(CheckpointError, match="num_heads 4 in the checkpoint, 2 in the study"):
        load_vit_init(path, study.space)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"not a safetensors file", "unreadable or corrupt safetensors file"),
        ({"weight": torch.zeros(2)}, "not a timm VisionTransformer state dict"),
    ],
    ids=["missing", "corrupt", "not-a-vit"],
)
def test_bad_files_are_refused(content, message, tmp_path) -> None:
    path = tmp_path / "vit.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        save_file(content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_vit_state(path)
    assert str(path) in str(err.value)


def test_a_wrong_init_touches_no_run_folder(
    study: StudyConfig, tiny_data: DataSplits, tmp_path, capsys
) -> None:
    bad = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit(16, 2, 48).state_dict().items()}, bad)
    fresh = tmp_path / "fresh"
    with pytest.raises(CheckpointError, match="embed_dim 48"):
        train_supernet(study, tiny_data, fresh, progress=False, init=bad)
    assert not fresh.exists()

    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(study.to_dict()))
    args = ["train", str(study_file), "--quiet", "--init", str(bad)]
    assert main([*args, "--out", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "embed_dim 48 in the checkpoint, 32 in the study" in err
    assert not fresh.exists()

    interrupted = tmp_path / "interrupted"  # a run with a checkpoint: left byte for byte
    with pytest.raises(TrainingInterrupted):
        train_supernet(study, tiny_data, interrupted, progress=False, stop_at_step=1)
    before = {p: p.read_bytes() for p in interrupted.iterdir()}
    assert main([*args, "--out", str(interrupted)]) == 2
    assert {p: p.read_bytes() for p in interrupted.iterdir()} == before


def test_train_with_init_records_it_and_a_resume_keeps_it(
    study: StudyConfig, tiny_data: DataSplits, tmp_path
) -> None:
    study = replace(study, training=replace(study.training, epochs=1, batch_size=64))  # 2 steps
    path = tmp_path / "vit.safetensors"
    save_weights(path, tiny_vit(16, 2).state_dict(), {"vit": {"num_heads": 2}})
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_supernet(study, tiny_data, out, progress=False, init=path, stop_at_step=1)
    summary = train_supernet(study, tiny_data, out, progress=False)  # resumed, no --init
    training = json.loads((out / "supernet.json").read_text())["training"]
    assert training["complete"] and summary.steps == training["steps"]
    init = training["init"]
    assert init["path"] == str(path)
    assert init["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert init["report"]["patch_size"] == 2
