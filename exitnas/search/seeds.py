"""The trials a new search evaluates first: the plain ViT inside the space and the presets.

NSGA-II's first generation is otherwise random, and in a large space it rarely draws the
configs the published designs use, which a trained supernet may serve well (on CIFAR-10 the
RAViT cascade beat every point of a 200-trial front). A new study therefore queues them
(Optuna's ``enqueue_trial``) before the sampler takes over, as once-for-all's evolutionary
search starts from known-good sub-networks. Each design's multi-exit configs are queued at a
few shared thresholds, from "never exit early" down; the search refines them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from exitnas.errors import ConfigError
from exitnas.exits.rules import ExitRule
from exitnas.search.encoding import config_params
from exitnas.spaces import StudyConfig, SubnetConfig
from exitnas.spaces.presets import PRESETS, make_preset

__all__ = ["SEED_THRESHOLDS", "seed_designs", "seed_trials"]

# every early exit of a multi-exit seed at the same threshold, one trial each
SEED_THRESHOLDS = (1.0, 0.75)


def seed_designs(study: StudyConfig) -> tuple[str, ...]:
    """The study's ``search.seeds``, or by default the plain ViT and every preset its space
    can make."""
    if study.search.seeds is not None:
        return tuple(study.search.seeds)
    designs = ["standalone"]
    for name in PRESETS:
        try:
            make_preset(study.space, name)
        except ConfigError:
            continue
        designs.append(name)
    return tuple(designs)


def seed_trials(study: StudyConfig) -> list[tuple[str, dict[str, Any]]]:
    """``(design, params)`` of every seed trial, in queue order, without repeats.

    The plain ViT is the standalone config's last exit alone; a design's exit rule is used
    when the study searches it, else the study's first rule.
    """
    space, rules = study.space, study.search.rules
    seeds: list[tuple[str, dict[str, Any]]] = []
    for design in seed_designs(study):
        configs: tuple[SubnetConfig, ...]
        if design == "standalone":
            standalone = space.standalone()
            branch = replace(standalone.branches[0], exits=standalone.branches[0].exits[-1:])
            configs, rule = (SubnetConfig((branch,), reuse=standalone.reuse),), rules[0]
        else:
            preset = make_preset(space, design)
            configs, rule = preset.configs, preset.rule if preset.rule in rules else rules[0]
        for config in configs:
            early = config.num_exits - 1
            for threshold in SEED_THRESHOLDS if early else (1.0,):
                params = config_params(config, ExitRule(rule, (threshold,) * early), space)
                if all(params != seen for _, seen in seeds):
                    seeds.append((design, params))
    return seeds
