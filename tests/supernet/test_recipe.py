"""The training recipe: each option changes the gradients it should, and no others."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from exitnas.spaces import SearchSpace, TrainingConfig
from exitnas.supernet import SuperViT
from exitnas.supernet.recipe import (
    exit_weights,
    path_loss,
    sandwich_backward,
    sandwich_paths,
    warm_keep_rates,
)
from exitnas.supernet.supervit import head_key


@pytest.fixture
def model(space: SearchSpace) -> SuperViT:
    torch.manual_seed(0)
    return SuperViT(space).train()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 16, 16, generator=generator), torch.arange(8) % 10


def grads(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        name: p.grad.clone()
        for name, p in model.named_parameters()
        if p.grad is not None and name.startswith(prefix)
    }


def backbone(model: SuperViT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in grads(model).items() if not k.startswith(("heads.", "reuses."))}


def test_exit_weights_sum_to_one_and_favour_the_last_exit() -> None:
    assert exit_weights(3, "equal") == pytest.approx([1 / 3] * 3)
    assert exit_weights(3, "depth") == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert exit_weights(3, "last") == [0.0, 0.0, 1.0]
    assert exit_weights(1, "depth") == [1.0]


def test_a_joint_path_loss_weights_its_exits_as_stated(model, space, batch) -> None:
    images, labels = batch
    config = space.standalone()
    hard = LabelSmoothingCrossEntropy(0.1)
    cfg = TrainingConfig(head_training="joint", exit_weights="depth")
    loss, last = path_loss(model, images, config, lambda o: hard(o, labels), cfg)
    model.set_active(config)
    outputs = model(images)
    expected = sum(w * hard(o, labels) for w, o in zip([1 / 6, 2 / 6, 3 / 6], outputs, strict=True))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(last, outputs[-1])


def test_detached_heads_send_no_gradient_to_the_backbone(model, space, batch) -> None:
    images, labels = batch
    config = replace(space.standalone("mlp"), reuse=True)
    hard = LabelSmoothingCrossEntropy(0.1)
    loss, _ = path_loss(
        model, images, config, lambda o: hard(o, labels), TrainingConfig(head_training="detached")
    )
    loss.backward()
    detached = grads(model)
    model.zero_grad(set_to_none=True)
    only_last = TrainingConfig(head_training="joint", exit_weights="last")
    loss, _ = path_loss(model, images, config, lambda o: hard(o, labels), only_last)
    loss.backward()
    last = grads(model)
    # the backbone learns from the last exit alone, exactly as if no other head existed
    for name, value in backbone(model).items():
        torch.testing.assert_close(detached[name], value, msg=name)
    # ... while every head type at every exit layer the branch passes learns
    for layer in space.exit_layers:
        for head in space.head_types:
            key = f"heads.{head_key(0, layer, head)}."
            assert any(k.startswith(key) and v.abs().sum() > 0 for k, v in detached.items()), key
    assert not any(k.startswith(f"heads.{head_key(1, 2, 'linear')}") for k in detached)
    assert last.keys() <= detached.keys()


def test_detached_heads_in_a_cascade_keep_reuse_trainable(model, space, batch) -> None:
    images, labels = batch
    config = space.largest()
    hard = LabelSmoothingCrossEntropy(0.1)
    cfg = TrainingConfig(head_training="detached")
    loss, last = path_loss(model, images, config, lambda o: hard(o, labels), cfg)
    loss.backward()
    found = grads(model)
    assert any(k.startswith("reuses.0.cls_proj") for k in found)
    assert any(k.startswith("reuses.1.pred_proj") for k in found)
    model.set_active(config)
    torch.testing.assert_close(last, model(images)[-1])


def test_the_teacher_learns_from_labels_and_students_from_the_mix(model, space, batch) -> None:
    images, labels = batch
    cfg = TrainingConfig(
        sandwich=("standalone", "smallest"),
        random_subnets=0,
        head_training="joint",
        exit_weights="last",
        kd_ratio=0.25,
        distill_start_epochs=1.0,
        label_smoothing=0.1,
    )
    paths = sandwich_paths(space, cfg, np.random.default_rng(0))
    assert [name for name, _ in paths] == ["standalone", "smallest"]
    hard = LabelSmoothingCrossEntropy(0.1)
    soft = SoftTargetCrossEntropy()
    model.set_active(paths[0][1])
    teacher_logits = model(images)[-1]
    teacher = teacher_logits.detach().softmax(-1)
    model.set_active(paths[1][1])
    student = model(images)[-1]
    teacher_loss = hard(teacher_logits, labels)
    mixed = 0.75 * hard(student, labels) + 0.25 * soft(student, teacher)
    total = sandwich_backward(model, images, labels, paths, cfg, epoch=1.5)
    assert total == pytest.approx((teacher_loss + mixed).item(), rel=1e-5)
    # before distillation starts, students learn from the labels alone
    early = sandwich_backward(model, images, labels, paths, cfg, epoch=0.5)
    assert early == pytest.approx((teacher_loss + hard(student, labels)).item(), rel=1e-5)


def test_distillation_options_leave_the_teachers_gradient_alone(model, space, batch) -> None:
    images, labels = batch
    found = []
    for kd_ratio, start in ((1.0, 0.0), (0.3, 0.0), (0.3, 5.0)):
        cfg = TrainingConfig(random_subnets=0, sandwich=("standalone",), kd_ratio=kd_ratio)
        cfg = replace(cfg, distill_start_epochs=start)
        model.zero_grad(set_to_none=True)
        sandwich_backward(
            model, images, labels, sandwich_paths(space, cfg, np.random.default_rng(0)), cfg, 2.0
        )
        found.append(grads(model))
    for other in found[1:]:
        for name, value in found[0].items():
            torch.testing.assert_close(other[name], value, msg=name)


def test_keep_rates_warm_up_from_one(space) -> None:
    config = space.smallest()  # keep rate 0.5
    assert warm_keep_rates(config, 0.0, 2.0).branches[0].keep_rate == 1.0
    assert warm_keep_rates(config, 1.0, 2.0).branches[0].keep_rate == pytest.approx(0.75)
    assert warm_keep_rates(config, 2.0, 2.0) == config
    assert warm_keep_rates(config, 0.0, 0.0) == config
    cfg = TrainingConfig(sandwich=("standalone", "smallest"), keep_warmup_epochs=4.0)
    paths = dict(sandwich_paths(space, cfg, np.random.default_rng(0), epoch=1.0))
    assert paths["smallest"].branches[0].keep_rate == pytest.approx(0.875)


def test_the_standalone_phase_trains_one_path_and_delays_the_keep_warm_up(space) -> None:
    cfg = TrainingConfig(epochs=4, standalone_epochs=1.5, keep_warmup_epochs=2.0)
    rng = np.random.default_rng(0)
    assert sandwich_paths(space, cfg, rng, epoch=1.4) == [("standalone", space.standalone())]
    paths = sandwich_paths(space, cfg, rng, epoch=2.5)  # one epoch into the sandwich
    assert [name for name, _ in paths] == ["standalone", "largest", "smallest", "random", "random"]
    assert dict(paths)["smallest"].branches[0].keep_rate == pytest.approx(0.75)


def test_sampling_as_the_search_draws_the_last_exit_uniformly(space) -> None:
    rng = np.random.default_rng(0)
    drawn = [space.sample(rng, "search") for _ in range(3000)]
    for config in drawn[:200]:
        space.check(config)
    depths = Counter(config.branches[0].depth for config in drawn)
    for layer in space.exit_layers:
        assert depths[layer] / len(drawn) == pytest.approx(1 / len(space.exit_layers), abs=0.03)
    uniform = Counter(space.sample(rng).branches[0].depth for _ in range(3000))
    assert uniform[max(space.exit_layers)] / 3000 > 0.5  # why search sampling exists


def test_the_standalone_config_is_the_plain_vit_of_the_space(space) -> None:
    config = space.standalone()
    (branch,) = config.branches
    assert (branch.resolution, branch.patch_size) == (16, 2)
    assert [e.layer for e in branch.exits] == list(space.exit_layers)
    assert branch.keep_rate == 1.0 and branch.refine_fraction is None


def test_the_teacher_weight_scales_the_teachers_gradient_alone(model, space, batch) -> None:
    images, labels = batch
    cfg = TrainingConfig(sandwich=("standalone", "smallest"), random_subnets=0)
    paths = sandwich_paths(space, cfg, np.random.default_rng(0))
    found = {}
    for weight in (1.0, 3.0):
        model.zero_grad(set_to_none=True)
        sandwich_backward(model, images, labels, paths, replace(cfg, teacher_weight=weight), 2.0)
        found[weight] = grads(model)
    model.zero_grad(set_to_none=True)
    sandwich_backward(model, images, labels, paths[:1], cfg, 2.0)  # the teacher alone
    teacher = grads(model)
    for name, value in found[1.0].items():
        expected = value + 2.0 * teacher.get(name, torch.zeros_like(value))
        torch.testing.assert_close(found[3.0][name], expected, msg=name, rtol=1e-4, atol=1e-6)
    # alone in its step (the standalone phase) the teacher's loss is not scaled
    model.zero_grad(set_to_none=True)
    heavy = replace(cfg, teacher_weight=3.0)
    sandwich_backward(model, images, labels, paths[:1], heavy, 2.0)
    for name, value in grads(model).items():
        torch.testing.assert_close(value, teacher[name], msg=name)
