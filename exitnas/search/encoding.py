"""The search space as one define-by-run function.

:func:`suggest` asks an Optuna trial for one sub-network and its exit rule. The same function
drives Optuna directly and Ray Tune through ``OptunaSearch``, and is unit-tested with
``optuna.trial.FixedTrial``. Branch chains are one categorical choice (so branch count,
resolutions and patch sizes always form a valid cascade); each branch then chooses its keep
rate, its coarse-to-fine fraction (where its grid refines the previous one), its last exit
layer, which earlier layers also exit, and a head type per exit; finally the exit rule and one
threshold per exit but the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from exitnas.errors import ConfigError
from exitnas.exits.rules import RULES, ExitRule
from exitnas.spaces import BranchConfig, ExitConfig, SearchSpace, SubnetConfig

__all__ = ["chain_label", "config_params", "suggest", "trial_config"]


def chain_label(chain: Sequence[tuple[int, int]]) -> str:
    """``((8, 4), (16, 2))`` -> ``"8/4>16/2"`` (resolution/patch of each branch)."""
    return ">".join(f"{resolution}/{patch}" for resolution, patch in chain)


def suggest(
    trial: optuna.trial.BaseTrial, space: SearchSpace, rules: Sequence[str] = ("max_softmax",)
) -> tuple[SubnetConfig, ExitRule]:
    """Ask ``trial`` for a sub-network of ``space`` and an exit rule from ``rules``.

    Example:
        >>> config, rule = suggest(optuna.trial.FixedTrial(params), space)
    """
    chains = {chain_label(chain): chain for chain in space.branch_chains}
    chain = chains[trial.suggest_categorical("branches", list(chains))]
    branches: list[BranchConfig] = []
    for i, (resolution, patch) in enumerate(chain):
        keep = _choose(trial, f"b{i}_keep_rate", space.keep_rates)
        refine: float | None = None
        if i > 0 and _asks_refine(space, branches[-1].grid, resolution // patch):
            choice = trial.suggest_categorical(f"b{i}_refine", [None, *space.refine_fractions])
            refine = None if choice is None else float(choice)
        last = trial.suggest_categorical(f"b{i}_last_exit", list(space.exit_layers))
        exits = []
        for layer in (x for x in space.exit_layers if x <= last):
            if layer == last or trial.suggest_categorical(f"b{i}_exit_l{layer}", [False, True]):
                exits.append(
                    ExitConfig(layer, _choose(trial, f"b{i}_head_l{layer}", space.head_types))
                )
        branches.append(BranchConfig(resolution, patch, tuple(exits), keep, refine))
    reuse = _choose(trial, "reuse", space.reuse) if len(branches) > 1 else space.reuse[0]
    config = SubnetConfig(tuple(branches), reuse=reuse)
    rule = trial.suggest_categorical("rule", list(rules))  # always recorded, even if alone
    thresholds = tuple(
        trial.suggest_float(f"t_b{b}_l{exit_.layer}", 0.0, 1.0) for b, exit_ in config.exits[:-1]
    )
    return config, ExitRule(rule, thresholds)


def _asks_refine(space: SearchSpace, previous_grid: int, grid: int) -> bool:
    """Whether a branch after one of ``previous_grid`` tokens a side chooses a refine fraction
    (its grid must split the previous one's patches evenly)."""
    return bool(space.refine_fractions) and grid % previous_grid == 0


def _choose(trial: optuna.trial.BaseTrial, name: str, choices: Sequence):
    """A categorical parameter, or the only choice without asking."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def trial_config(
    trial: optuna.trial.FrozenTrial, space: SearchSpace
) -> tuple[SubnetConfig, ExitRule]:
    """The sub-network and exit rule a finished trial evaluated, rebuilt from its parameters."""
    return suggest(optuna.trial.FixedTrial(trial.params), space, RULES)


def config_params(config: SubnetConfig, rule: ExitRule, space: SearchSpace) -> dict[str, Any]:
    """The parameters :func:`suggest` records for ``config`` and ``rule``: its inverse, for
    ``study.enqueue_trial`` (a threshold of ``inf``, never exit, becomes 1.0).

    Raises:
        ConfigError: ``config`` is not a sub-network of ``space``.

    Example:
        >>> suggest(optuna.trial.FixedTrial(config_params(config, rule, space)), space, RULES)
    """
    space.check(config, "seed config")
    chain = tuple((b.resolution, b.patch_size) for b in config.branches)
    if chain not in {tuple(c) for c in space.branch_chains}:
        allowed = [chain_label(c) for c in space.branch_chains]
        raise ConfigError(
            f"seed config: branches {chain_label(chain)} not allowed; allowed: {allowed}"
        )
    params: dict[str, Any] = {"branches": chain_label(chain)}
    for i, branch in enumerate(config.branches):
        if len(space.keep_rates) > 1:
            params[f"b{i}_keep_rate"] = branch.keep_rate
        if i > 0 and _asks_refine(space, config.branches[i - 1].grid, branch.grid):
            params[f"b{i}_refine"] = branch.refine_fraction
        last = branch.exits[-1].layer
        params[f"b{i}_last_exit"] = last
        heads = {exit_.layer: exit_.head for exit_ in branch.exits}
        for layer in (x for x in space.exit_layers if x <= last):
            if layer != last:
                params[f"b{i}_exit_l{layer}"] = layer in heads
            if layer in heads and len(space.head_types) > 1:
                params[f"b{i}_head_l{layer}"] = heads[layer]
    if len(config.branches) > 1 and len(space.reuse) > 1:
        params["reuse"] = config.reuse
    params["rule"] = rule.rule
    for (b, exit_), threshold in zip(config.exits[:-1], rule.thresholds, strict=True):
        params[f"t_b{b}_l{exit_.layer}"] = min(float(threshold), 1.0)
    return params
