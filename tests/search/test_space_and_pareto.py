"""The define-by-run space (tested with FixedTrial) and Pareto/hypervolume helpers."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from exitnas.exits import ExitRule
from exitnas.search import hypervolume_2d, pareto_mask, suggest
from exitnas.spaces import BranchConfig, ExitConfig, SubnetConfig


def test_fixed_trial_gives_the_expected_config(space) -> None:
    params = {
        "branches": "8/4>16/2",
        "b0_keep_rate": 0.5,
        "b0_last_exit": 3,
        "b0_exit_l2": True,
        "b0_head_l2": "mixer",
        "b0_head_l3": "cnn_add",
        "b1_keep_rate": 1.0,
        "b1_refine": 0.5,
        "b1_last_exit": 2,
        "b1_head_l2": "vit",
        "reuse": False,
        "rule": "max_softmax",
        "t_b0_l2": 0.3,
        "t_b0_l3": 0.8,
    }
    config, rule = suggest(optuna.trial.FixedTrial(params), space)
    assert config == SubnetConfig(
        (
            BranchConfig(8, 4, (ExitConfig(2, "mixer"), ExitConfig(3, "cnn_add")), 0.5),
            BranchConfig(16, 2, (ExitConfig(2, "vit"),), 1.0, 0.5),
        ),
        reuse=False,
    )
    assert rule == ExitRule("max_softmax", (0.3, 0.8))


def test_sampled_trials_cover_the_space_with_valid_configs(space) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(200):
        trial = study.ask()
        config, rule = suggest(trial, space, ("max_softmax", "entropy"))
        space.check(config)
        assert len(rule.thresholds) == config.num_exits - 1
        seen.append((config, rule))
        study.tell(trial, 0.0)
    assert {len(c.branches) for c, _ in seen} == {1, 2, 3}
    assert {e.head for c, _ in seen for _, e in c.exits} == set(space.head_types)
    assert {r.rule for _, r in seen} == {"max_softmax", "entropy"}
    assert any(b.refine_fraction for c, _ in seen for b in c.branches)


def brute_force_front(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    n = len(acc)
    return np.array(
        [
            not any(
                acc[j] >= acc[i] and cost[j] <= cost[i] and (acc[j] > acc[i] or cost[j] < cost[i])
                for j in range(n)
            )
            for i in range(n)
        ]
    )


@pytest.mark.parametrize("seed", range(5))
def test_pareto_mask_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    acc = rng.integers(0, 10, 60) / 10  # ties on purpose
    cost = rng.integers(0, 10, 60).astype(float)
    assert (pareto_mask(acc, cost) == brute_force_front(acc, cost)).all()


def test_hypervolume_by_hand() -> None:
    # points (cost, acc): (1, .5), (2, .8); reference cost 4 -> 3 * .5 + 2 * .3
    assert hypervolume_2d([0.5, 0.8, 0.4], [1.0, 2.0, 3.0], 4.0) == pytest.approx(2.1)
    assert hypervolume_2d([0.9], [5.0], 4.0) == 0.0


def test_reachable_ends_at_the_exit_everything_leaves_at(space) -> None:
    """A threshold of 0 sends every image out at that exit: the configuration up to it has the
    same exits' logits, the same stage FLOPs, and is one point with its longer variants."""
    import torch

    from exitnas.search.front import reachable
    from exitnas.supernet import SuperViT, count_flops
    from exitnas.supernet.evaluate import predict_exits

    config = SubnetConfig(
        (
            BranchConfig(8, 4, (ExitConfig(2, "mixer"), ExitConfig(3, "cnn_add")), 0.5),
            BranchConfig(16, 2, (ExitConfig(2, "vit"), ExitConfig(4, "mlp")), 0.5, 0.5),
        ),
        reuse=False,
    )
    rule = ExitRule("max_softmax", (0.0, 0.7, 0.9))
    short, cut = reachable(config, rule, space)
    assert cut == ExitRule("max_softmax", ())
    assert short == SubnetConfig((BranchConfig(8, 4, (ExitConfig(2, "mixer"),), 0.5),))
    assert short.branches[0].keep_rate == 0.5  # keep layer 2 is reached
    assert count_flops(space, short) == count_flops(space, config)[:1]
    two, cut = reachable(config, ExitRule("entropy", (0.4, 0.7, 0.0)), space)
    assert two.num_exits == 3 and cut.thresholds == (0.4, 0.7) and two.reuse is False
    assert reachable(config, ExitRule("margin", (0.1, 0.2, 0.3)), space) == (
        config,
        ExitRule("margin", (0.1, 0.2, 0.3)),
    )
    torch.manual_seed(0)
    net = SuperViT(space).eval()
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    full = predict_exits(net.extract(config), images, (0.5,), (0.25,))
    part = predict_exits(net.extract(two), images, (0.5,), (0.25,))
    np.testing.assert_allclose(part, full[:3], rtol=0, atol=1e-6)
    assert count_flops(space, two) == count_flops(space, config)[:3]
