"""Seed trials: the inverse of the define-by-run space, and the designs a new search queues."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from exitnas.errors import ConfigError
from exitnas.exits import ExitRule
from exitnas.exits.rules import RULES
from exitnas.search import run_search, suggest
from exitnas.search.encoding import config_params
from exitnas.search.seeds import SEED_THRESHOLDS, seed_designs, seed_trials
from exitnas.search.studies import DIRECTIONS, open_study
from exitnas.spaces import BranchConfig, ExitConfig, StudyConfig, SubnetConfig
from exitnas.spaces.presets import PRESETS, make_preset


def test_config_params_are_the_params_suggest_records(space) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(300):
        trial = study.ask()
        config, rule = suggest(trial, space, RULES)
        assert config_params(config, rule, space) == trial.params
        study.tell(trial, 0.0)


def test_config_params_refuse_a_config_outside_the_space(space) -> None:
    exits = (ExitConfig(max(space.exit_layers), space.head_types[0]),)
    outside = SubnetConfig((BranchConfig(max(space.resolutions), 1, exits),))
    with pytest.raises(ConfigError, match="patch_size: 1"):
        config_params(outside, ExitRule("max_softmax", ()), space)


def test_default_seeds_are_the_plain_vit_and_every_preset(study: StudyConfig) -> None:
    study = replace(study, search=replace(study.search, seeds=None))
    assert seed_designs(study) == ("standalone", *PRESETS)
    seeds = seed_trials(study)
    assert len({repr(p) for _, p in seeds}) == len(seeds)  # no trial queued twice
    seeded = [suggest(optuna.trial.FixedTrial(p), study.space, RULES) for _, p in seeds]
    plain, plain_rule = seeded[0]  # the ViT: finest grid, last exit alone
    assert plain.branches[0].exits == study.space.standalone().branches[0].exits[-1:]
    assert plain_rule.thresholds == ()
    for name in PRESETS:  # every config of every preset, each early exit at every threshold
        for config in make_preset(study.space, name).configs:
            early = config.num_exits - 1
            wanted = {(t,) * early for t in SEED_THRESHOLDS} if early else {()}
            # the study searches max_softmax alone, so ravit's entropy rule is not used
            assert wanted == {r.thresholds for c, r in seeded if c == config}
            assert {r.rule for c, r in seeded if c == config} == {"max_softmax"}


def test_the_study_file_chooses_the_seeds(study: StudyConfig) -> None:
    chosen = replace(study, search=replace(study.search, seeds=("ravit",)))
    assert {design for design, _ in seed_trials(chosen)} == {"ravit"}
    assert seed_trials(replace(study, search=replace(study.search, seeds=()))) == []
    data = study.to_dict()
    data["search"]["seeds"] = ["vit"]
    with pytest.raises(ConfigError, match=r"search\.seeds\[0\]: 'vit' is not allowed"):
        StudyConfig.from_dict(data)
    no_reuse = replace(study.space, reuse=(False,))
    data = replace(study, space=no_reuse).to_dict()
    data["search"]["seeds"] = ["cfvit"]
    with pytest.raises(ConfigError, match=r"search\.seeds: preset cfvit reuses"):
        StudyConfig.from_dict(data)
    data["search"]["seeds"] = None  # the default skips what the space cannot make
    assert seed_designs(StudyConfig.from_dict(data)) == ("standalone", "supervit", "multi_exit_vit")


def test_a_new_search_runs_the_seeds_first_and_once(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    study = replace(study, search=replace(study.search, seeds=("standalone", "ravit")))
    seeds = seed_trials(study)
    url = f"sqlite:///{tmp_path}/seeded.db"
    run_search(study, run, trials=len(seeds) + 2, storage=url, progress=False)
    run_search(study, run, trials=2, storage=url, progress=False)  # resumes: nothing queued again
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.params for t in trials[: len(seeds)]] == [p for _, p in seeds]
    assert [t.user_attrs["seed"] for t in trials[: len(seeds)]] == [d for d, _ in seeds]
    assert all("seed" not in t.user_attrs for t in trials[len(seeds) :])
    assert len(trials) == len(seeds) + 4


def test_a_cut_short_set_up_queues_each_seed_once(study: StudyConfig, tmp_path: Path) -> None:
    study = replace(study, search=replace(study.search, seeds=("standalone", "cfvit")))
    seeds = seed_trials(study)
    url = f"sqlite:///{tmp_path}/torn.db"
    torn = optuna.create_study(study_name="tiny", storage=url, directions=DIRECTIONS)
    for _, params in seeds[:2]:  # a worker killed after queueing two seeds, before the identity
        torn.enqueue_trial(params)
    opened = open_study(study, url)
    queued = [t.system_attrs["fixed_params"] for t in opened.trials]  # waiting trials' params
    assert queued == [p for _, p in seeds]
    assert all(t.state == optuna.trial.TrialState.WAITING for t in opened.trials)
