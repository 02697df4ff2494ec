"""``exitnas run``: the whole job on a tiny study, its outputs present and consistent."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

import exitnas
from exitnas.cli import main
from exitnas.exits.rules import confidences, exit_indices, softmax
from exitnas.search.front import read_front_json
from exitnas.spaces import StudyConfig
from exitnas.storage.urls import open_store


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    from exitnas.spaces import DataConfig, TrainingConfig
    from exitnas.spaces.study import SearchConfig
    from exitnas.supernet.registry import exitnas_tiny

    study = StudyConfig(
        name="tiny-run",
        space=exitnas_tiny(),
        data=DataConfig(image_size=16, val_fraction=0.1),
        training=TrainingConfig(epochs=1, batch_size=128, random_subnets=1, warmup_epochs=0.2),
        search=SearchConfig(trials=12, budget_mflops=0.5),
        seed=5,
    )
    folder = tmp_path_factory.mktemp("pipeline")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    run = folder / "run"
    return study, path, run


def _main(*argv: str) -> int:
    return main(list(argv))


def test_run_does_the_whole_job(ran, capsys) -> None:
    study, path, run = ran
    argv = ("run", str(path), "--out", str(run), "--device", "cpu", "--profile-repeats", "2")
    assert _main(*argv, "--quiet") == 0
    table = capsys.readouterr().out
    deploy = run / "deploy"
    for name in ("supernet.safetensors", "report.html", "deploy/front.json", "deploy/answer.json"):
        assert (run / name).is_file(), name
    url = f"sqlite:///{run / 'study.db'}"
    optuna_study = optuna.load_study(study_name="tiny-run", storage=url)
    assert len(optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 12
    store = open_store(url)
    assert store.list_devices("tiny-run") == ["cpu"]
    assert store.get_policy("tiny-run", "learned") is not None or "no learned policy" in table

    # the summary table lists the front of front.json
    front = read_front_json(deploy / "front.json")
    lines = [
        line.split() for line in table.splitlines() if line.startswith("  ") and "point" not in line
    ]
    assert [(int(r[0]), int(r[1]), float(r[2])) for r in lines] == [
        (p.index, p.trial_number, round(p.accuracy, 4)) for p in front
    ]
    # the bundle is the budget query's answer, and reproduces its validation accuracy
    answer = json.loads((deploy / "answer.json").read_text())
    assert answer["budget"] == {"metric": "mflops", "value": 0.5}
    assert answer["expected"]["mflops"] <= 0.5
    bundle = exitnas.load(deploy / "bundle")
    assert bundle.meta["pareto"]["trial_number"] == answer["trial_number"]
    assert bundle.meta["val_accuracy"] == answer["expected"]["val_accuracy"]
    from exitnas.runs import Run

    splits = Run.open(run).splits
    prediction = bundle.predict(splits.val.images)
    accuracy = float(np.mean(prediction.labels == splits.val.labels.numpy()))
    if answer["rule"]["rule"] == "learned":
        # expected numbers are out-of-fold estimates; the bundle runs the policy fitted on
        # every validation image: its exits are that policy's, as simulated on cached logits
        logits = bundle.logits(splits.val.images)
        thresholds = bundle.rule.thresholds
        expected = exit_indices(bundle.policy.scores(logits), thresholds)
        np.testing.assert_array_equal(prediction.exits, expected)
    else:
        assert accuracy == pytest.approx(answer["expected"]["val_accuracy"])
    assert f"point {answer['pareto_index']} (trial {answer['trial_number']})" in table


def test_a_second_run_keeps_what_is_there(ran, capsys) -> None:
    study, path, run = ran
    url = f"sqlite:///{run / 'study.db'}"
    store = open_store(url)
    profile = store.get_profile("tiny-run", "cpu")
    policy = store.get_policy("tiny-run", "learned")
    argv = ("run", str(path), "--out", str(run), "--device", "cpu", "--quiet")
    assert _main(*argv) == 0
    assert "(12 trials," in capsys.readouterr().out  # no trial added
    assert store.get_profile("tiny-run", "cpu") == profile  # not re-measured
    assert store.get_policy("tiny-run", "learned") == policy  # not refitted
    assert (run / "deploy" / "bundle" / "manifest.json").is_file()
    assert not (run / ".deploy.old").exists() and not (run / ".deploy.new").exists()


def test_bad_input_exits_2(ran, tmp_path: Path, capsys) -> None:
    study, path, run = ran
    assert _main("run", str(tmp_path / "missing.yaml")) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    document = study.to_dict()
    document["search"]["budget_mflops"] = -1
    bad.write_text(yaml.safe_dump(document))
    assert _main("run", str(bad), "--out", str(tmp_path / "r")) == 2
    assert "budget_mflops" in capsys.readouterr().err
    impossible = tmp_path / "impossible.yaml"
    document["search"]["budget_mflops"] = 1e-6
    impossible.write_text(yaml.safe_dump(document))
    before = sorted(p.name for p in run.iterdir())
    assert _main("run", str(impossible), "--out", str(run), "--device", "cpu", "--quiet") == 2
    assert "below the cheapest achievable cost" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing replaced


@pytest.fixture(scope="module")
def deployed(trained_run, tmp_path_factory):
    """The shared tiny run after ``exitnas run`` with 40 random trials and no budget: a front
    with multi-exit configurations, so that the learned policy is fitted."""
    from exitnas.spaces.study import SearchConfig

    trained_study, trained = trained_run
    study = replace(trained_study, search=SearchConfig(trials=40, sampler="random", seeds=()))
    folder = tmp_path_factory.mktemp("deployed")
    run = folder / "run"
    shutil.copytree(trained, run)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    argv = ["run", str(path), "--out", str(run), "--device", "cpu", "--profile-repeats", "2"]
    assert main([*argv, "--quiet"]) == 0
    assert open_store(f"sqlite:///{run / 'study.db'}").get_policy(study.name, "learned")
    return study, run


@pytest.mark.parametrize("rule", ["max_softmax", "learned"])
def test_every_artefact_states_what_predict_does(deployed, rule: str) -> None:
    """One source of truth (issue 15): answer.json, the bundle's config.json, front.json, the
    printed table and the report say about the deployed point exactly what the bundle's
    ``predict`` does on the validation split: labels and FLOPs exactly, latency to the
    precision printed."""
    from exitnas.devices.costs import expected_ms, load_device_costs
    from exitnas.jobs.pipeline import run_pipeline
    from exitnas.runs import Run

    study, run = deployed
    summary = run_pipeline(study, run, device="cpu", progress=False, rule=rule)
    deploy = run / "deploy"
    answer = json.loads((deploy / "answer.json").read_text())
    assert answer == summary.answer and answer["rule"]["rule"] == rule
    assert answer["policy"] == ("learned" if rule == "learned" else None)

    bundle = exitnas.load(deploy / "bundle")
    opened = Run.open(run)
    splits, loaded, url = opened.splits, opened.study, opened.url
    labels = splits.val.labels.numpy()
    prediction = bundle.predict(splits.val.images, batch_size=13)
    # exits and labels: what the stated rule does on the cached logits
    logits = bundle.logits(splits.val.images)
    scores = (
        bundle.policy.scores(logits) if rule == "learned" else confidences(softmax(logits), rule)
    )
    exits = exit_indices(scores, bundle.rule.thresholds)
    np.testing.assert_array_equal(prediction.exits, exits)
    np.testing.assert_array_equal(
        prediction.labels, logits.argmax(-1)[exits, np.arange(len(exits))]
    )
    accuracy = float(np.mean(prediction.labels == labels))
    mflops = float(prediction.flops.mean()) / 1e6
    fractions = np.bincount(prediction.exits, minlength=bundle.config.num_exits) / len(labels)
    costs = load_device_costs(open_store(url), loaded, "cpu", url)
    latency = expected_ms(costs.rule_stage_ms(loaded.space, bundle.config, rule), fractions)

    expected = answer["expected"]
    assert expected["val_accuracy"] == accuracy
    assert expected["mflops"] == pytest.approx(mflops, rel=1e-12)
    assert expected["latency_ms"] == pytest.approx(latency, rel=1e-9)
    np.testing.assert_allclose(expected["exit_fractions"], fractions, rtol=0, atol=1e-12)
    meta = bundle.meta
    assert (meta["val_accuracy"], meta["expected_mflops"]) == (accuracy, expected["mflops"])
    assert meta["exit_fractions"] == expected["exit_fractions"]
    assert meta["budget_query"] == answer
    # the printed bundle line, to its printed precision
    line = next(x for x in summary.table().splitlines() if x.startswith("bundle "))
    assert f"val acc {accuracy:.4f}, {mflops:.3f} MFLOPs, {latency:.3f} ms/image" in line

    # front.json, the table and the report list the same deduplicated points
    front = read_front_json(deploy / "front.json")
    keys = {(p.config.key(), json.dumps(p.rule.to_dict())) for p in front}
    assert len(keys) == len(front) == len(summary.front)
    for point, row in zip(front, summary.front, strict=True):
        assert (point.index, point.trial_number) == (row.index, row.trial_number)
        assert (point.accuracy, point.mflops, point.latency_ms) == (
            row.accuracy,
            row.mflops,
            row.latency_ms,
        )
        ms = costs.rule_stage_ms(loaded.space, point.config, point.rule.rule)
        assert point.latency_ms == pytest.approx(expected_ms(ms, point.exit_fractions))
    html = summary.report.read_text()
    assert f"{len(front)} points on the Pareto front" in html
    # the report's trade-off marks the deployed rule's operating point
    marker = re.search(
        r'"name":"deployed: ([a-z_]+) at the bundle\'s thresholds",'
        r'"x":\[([^\]]+)\],"y":\[([^\]]+)\]',
        html,
    )
    assert marker is not None, "the trade-off does not mark the deployed point"
    assert marker.group(1) == rule
    assert float(marker.group(2)) == pytest.approx(mflops, rel=1e-9)
    assert float(marker.group(3)) == pytest.approx(accuracy, rel=1e-9)
