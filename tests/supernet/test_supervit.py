"""The supernet's four verbs, extraction, gradients, and FLOPs accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exitnas.errors import ConfigError
from exitnas.spaces import BranchConfig, ExitConfig, SearchSpace, SubnetConfig
from exitnas.supernet import (
    ExitViT,
    SuperViT,
    count_flops,
    create_supernet,
    list_supernets,
    measure_flops,
    plan_stages,
)
from exitnas.supernet.supervit import head_key


@pytest.fixture
def net(space: SearchSpace) -> SuperViT:
    torch.manual_seed(0)
    return SuperViT(space)


def refine_config(fraction: float = 0.5, keep: float = 0.5, reuse: bool = True) -> SubnetConfig:
    coarse = BranchConfig(8, 4, (ExitConfig(2, "cnn_add"), ExitConfig(3, "mixer")), keep)
    fine = BranchConfig(16, 2, (ExitConfig(2, "vit"), ExitConfig(4, "resmlp")), keep, fraction)
    return SubnetConfig((coarse, fine), reuse=reuse)


def test_four_verbs(net: SuperViT, rng, images) -> None:
    config = net.sample_active(rng)
    assert net.active_config() == config
    assert len(net(images)) == config.num_exits
    other = refine_config()
    net.set_active(other)
    assert net.active_config() == other
    outputs = net(images)
    assert [o.shape for o in outputs] == [(6, 10)] * 4
    assert isinstance(net.extract(), ExitViT)


def test_set_active_checks_the_space(net: SuperViT) -> None:
    outside = SubnetConfig((BranchConfig(16, 4, (ExitConfig(1, "linear"),)),))
    with pytest.raises(ConfigError, match="exits.0..layer: 1"):
        net.set_active(outside)


def test_extracted_subnet_equals_supernet(net: SuperViT, rng, images) -> None:
    net.eval()
    configs = [net.space.largest(), net.space.smallest(), refine_config(), refine_config(1.0)]
    configs += [net.space.sample(rng) for _ in range(30)]
    for config in configs:
        net.set_active(config)
        expected = net(images)
        sub = net.extract(config).eval()
        got = sub(images)
        assert len(got) == len(expected) == config.num_exits
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
        # the extracted module holds only what the config uses
        assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in net.parameters())


def test_extracted_subnet_rebuilds_from_space_config_and_weights(net: SuperViT, images) -> None:
    config = refine_config()
    sub = net.extract(config).eval()
    rebuilt = ExitViT(net.space, config)
    rebuilt.load_state_dict(sub.state_dict())
    for a, b in zip(rebuilt.eval()(images), sub(images), strict=True):
        torch.testing.assert_close(a, b)


def test_stages_can_drop_samples(net: SuperViT, images) -> None:
    """Running later stages on a subset of the batch gives that subset's full-batch logits."""
    sub = net.extract(refine_config()).eval()
    full = sub(images)
    stages = plan_stages(sub.config)
    state = None
    keep = torch.tensor([0, 2, 5])
    with torch.no_grad():
        from exitnas.supernet import CascadeState

        state = sub.run_stage(stages[0], CascadeState(images=images))
        state = state.select(keep)
        for stage, expected in zip(stages[1:], full[1:], strict=True):
            state = sub.run_stage(stage, state)
            torch.testing.assert_close(state.logits, expected[keep])


def active_parameter_names(net: SuperViT, config: SubnetConfig) -> set[str]:
    names = {"patch_embed.weight", "patch_embed.bias", "pos_embed", "cls_token"}
    depth = max(b.depth for b in config.branches)
    for name, _ in net.named_parameters():
        if name.startswith("blocks.") and int(name.split(".")[1]) < depth:
            names.add(name)
    for b, exit_ in config.exits:
        prefix = f"heads.{head_key(b, exit_.layer, exit_.head)}."
        names |= {n for n, _ in net.named_parameters() if n.startswith(prefix)}
    if config.reuse:
        for b in range(1, len(config.branches)):
            refine = config.branches[b].refine_fraction is not None
            prefix = f"reuses.{b - 1}."
            for n, _ in net.named_parameters():
                if n.startswith(prefix) and (refine or ".feat_" not in n):
                    names.add(n)
    return names


def test_gradients_reach_exactly_the_active_weights(net: SuperViT, rng, images) -> None:
    net.train()
    configs = [refine_config(), refine_config(0.5, 1.0, reuse=False), net.space.largest()]
    configs += [net.space.sample(rng) for _ in range(12)]
    for config in configs:
        net.zero_grad(set_to_none=True)
        net.set_active(config)
        torch.stack([o.logsumexp(-1).mean() for o in net(images)]).sum().backward()
        active = active_parameter_names(net, config)
        for name, param in net.named_parameters():
            if name in active:
                assert param.grad is not None, f"{name} is active but got no gradient"
                assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
            else:
                assert param.grad is None, f"{name} is inactive but got a gradient"


def test_analytic_flops_agree_with_flop_counter(net: SuperViT, rng, images) -> None:
    configs = [net.space.largest(), net.space.smallest(), refine_config(), refine_config(0.5, 1.0)]
    configs += [net.space.sample(rng) for _ in range(15)]
    for config in configs:
        sub = net.extract(config).eval()
        analytic = np.cumsum(count_flops(net.space, config))
        assert len(analytic) == config.num_exits
        for k, expected in enumerate(analytic):
            measured = measure_flops(sub, images, upto=k)
            assert abs(expected - measured) <= 0.02 * measured, (config, k, expected, measured)


def test_flops_grow_with_stages_and_tokens(space: SearchSpace) -> None:
    stages = count_flops(space, space.largest())
    assert all(cost > 0 for cost in stages)
    fewer = count_flops(space, refine_config(0.5, 0.5))
    more = count_flops(space, refine_config(1.0, 1.0))
    assert sum(fewer) < sum(more)


def test_registry(space: SearchSpace) -> None:
    assert "exitnas_tiny" in list_supernets()
    net = create_supernet("exitnas_tiny")
    assert net.space == space
    with pytest.raises(ValueError, match="unknown supernet 'nope'"):
        create_supernet("nope")
    with pytest.raises(TypeError, match="unknown keyword"):
        create_supernet("exitnas_tiny", embed_dim=3)
