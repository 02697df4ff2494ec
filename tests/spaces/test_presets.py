"""Presets: the published designs as configs of a space."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exitnas.errors import ConfigError
from exitnas.spaces import load_study
from exitnas.spaces.presets import PRESETS, make_preset


@pytest.fixture(params=["studies/quickstart.yaml", "studies/cifar10.yaml"])
def study_space(request):
    return load_study(request.param).space


def test_every_preset_is_valid_in_the_shipped_studies(study_space) -> None:
    for name in PRESETS:
        preset = make_preset(study_space, name)
        assert preset.configs and preset.name == name
        for config in preset.configs:
            study_space.check(config)


def test_preset_shapes(study_space) -> None:
    space = study_space
    ravit = make_preset(space, "ravit")
    assert ravit.rule == "entropy"
    for config in ravit.configs:
        resolutions = [b.resolution for b in config.branches]
        assert len(resolutions) >= 2 and resolutions == sorted(set(resolutions))
        assert len({b.patch_size for b in config.branches}) == 1 and config.reuse
        assert all(b.refine_fraction is None and len(b.exits) == 1 for b in config.branches)

    (cfvit,) = make_preset(space, "cfvit").configs
    coarse, fine = cfvit.branches
    assert coarse.resolution == fine.resolution == space.max_resolution
    assert fine.patch_size < coarse.patch_size and fine.refine_fraction is not None
    assert coarse.refine_fraction is None and cfvit.reuse

    supervit = make_preset(space, "supervit").configs
    assert len(supervit) == len(space.branch_options) * len(space.keep_rates)
    assert all(c.num_exits == 1 and len(c.branches) == 1 for c in supervit)

    multi = make_preset(space, "multi_exit_vit").configs
    assert [c.branches[0].exits[0].head for c in multi] == list(space.head_types)
    for config in multi:
        assert [e.layer for e in config.branches[0].exits] == list(space.exit_layers)
        assert len({e.head for e in config.branches[0].exits}) == 1


def test_unknown_or_impossible_presets(study_space) -> None:
    with pytest.raises(ConfigError, match="allowed: \\('ravit'"):
        make_preset(study_space, "bogus")
    no_reuse = replace(study_space, reuse=(False,))
    with pytest.raises(ConfigError, match="reuse"):
        make_preset(no_reuse, "ravit")
    one_patch = replace(study_space, patch_sizes=study_space.patch_sizes[:1])
    with pytest.raises(ConfigError, match="preset cfvit needs two patch sizes"):
        make_preset(one_patch, "cfvit")
