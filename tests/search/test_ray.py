"""The Ray Tune backend on a local 2-CPU Ray instance: same study, same storage, same scores."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml

from exitnas.search import run_search, suggest
from exitnas.search.front import front_trials
from exitnas.search.objective import TRIAL_ATTR, load_evaluator
from exitnas.storage.urls import open_storage

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_storage_pickles(tmp_path: Path) -> None:
    # OptunaSearch checkpoints its Optuna study, storage included, with plain pickle
    storage = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{tmp_path / 'study.db'}")))
    assert storage.get_all_studies() == []


def test_ray_search_fills_the_optuna_storage(trained_run, tmp_path: Path) -> None:
    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="nsga2", population_size=4))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    summary = run_search(
        study, run, backend="ray", trials=8, storage=url, workers=2, progress=False
    )
    assert summary.trials_added == 8 and summary.trials_complete == 8
    assert summary.cache_hits + summary.cache_misses == 8
    optuna_study = optuna.load_study(study_name="tiny", storage=url)
    trials = optuna_study.trials
    assert len(trials) == 8  # nothing asked and left running
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(len(t.values) == 2 for t in trials)
    assert 0 < len(front_trials(optuna_study, study.space)) == summary.pareto_size
    evaluator = load_evaluator(study, run, url)
    for trial in trials:
        config, rule = suggest(optuna.trial.FixedTrial(trial.params), study.space)
        outcome = evaluator.score(config, rule)
        assert (outcome.accuracy, outcome.expected_flops / 1e6) == tuple(trial.values)
        assert trial.user_attrs[TRIAL_ATTR]["exit_fractions"] == list(outcome.exit_fractions)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WAIT_FOR_NODES = """
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + 60
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.2)
"""


def test_search_on_a_two_node_ray_cluster(trained_run, tmp_path: Path) -> None:
    """`ray start --head` and `ray start --address` on loopback (one CPU each, token
    authentication): the search runs trials on both nodes and every trial lands in the shared
    storage exactly once."""
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not installed")
    study, run = trained_run
    study = replace(study, search=replace(study.search, sampler="random"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    address = f"127.0.0.1:{_free_port()}"
    node = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000"]
    node.append("--disable-usage-stats")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"  # Ray reads it at import: the driver is a process of its own
    try:
        head = ["start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"]
        subprocess.run([ray_cli, *head, *node], check=True, env=env, capture_output=True)
        second = ["start", f"--address={address}", *node]
        subprocess.run([ray_cli, *second], check=True, env=env, capture_output=True)
        # `ray start` can return before the second node has joined: wait for it, or the search
        # may begin on one CPU and finish its tiny trials there before the second node is up
        joined = [sys.executable, "-c", WAIT_FOR_NODES, address, "2"]
        assert subprocess.run(joined, env=env, capture_output=True, timeout=120).returncode == 0
        args = [sys.executable, "-m", "exitnas.cli", "search", str(path), "--run", str(run)]
        args += ["--storage", url, "--quiet", "--backend", "ray", "--ray-address", address]
        args += ["--trials", "10", "--workers", "2"]
        search = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
    assert search.returncode == 0, search.stderr[-2000:]
    assert "+10 trials (10 complete)" in search.stdout
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.number for t in trials] == list(range(10))  # each trial once, none left over
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["ray_node"] for t in trials}) == 2  # both nodes ran trials
