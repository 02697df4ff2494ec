"""Reports: the info objects of a small random search, their drawing, and `exitnas report`."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

from exitnas.cli.report import add_report_parser
from exitnas.errors import ExitnasError
from exitnas.reports import (
    ReportError,
    build_report_info,
    draw_report,
    hypervolume_info,
    pareto_info,
    write_report,
)
from exitnas.reports.figures import TITLES
from exitnas.search import hypervolume_2d, run_search
from exitnas.search.encoding import trial_config
from exitnas.search.objective import load_evaluator
from exitnas.search.runner import reference_mflops

TRIALS = 20


@pytest.fixture(scope="module")
def searched(trained_run, tmp_path_factory):
    """A 20-trial random search with two exit rules: (study, run dir, url, optuna study)."""
    study, run = trained_run
    search = replace(study.search, sampler="random", rules=("max_softmax", "entropy"))
    study = replace(study, search=search)
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'study.db'}"
    run_search(study, run, trials=TRIALS, storage=url, progress=False)
    return study, run, url, optuna.load_study(study_name=study.name, storage=url)


@pytest.fixture(scope="module")
def info(searched):
    study, run, url, optuna_study = searched
    return build_report_info(optuna_study, study, load_evaluator(study, run, url))


def test_pareto_info_is_the_brute_force_front(searched, info) -> None:
    _, _, _, optuna_study = searched
    pareto = info.pareto
    trials = optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert pareto.trial_numbers == tuple(t.number for t in trials)
    assert list(zip(pareto.accuracy, pareto.mflops, strict=True)) == [
        tuple(t.values) for t in trials
    ]
    points = list(zip(pareto.accuracy, pareto.mflops, strict=True))
    dominated = [
        any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for a2, c2 in points) for a, c in points
    ]
    assert pareto.front == tuple(not d for d in dominated)
    assert pareto.latency_ms is None


def test_hypervolume_history(searched, info) -> None:
    study = searched[0]
    pareto, history = info.pareto, info.hypervolume
    reference = reference_mflops(study)
    assert history.reference_mflops == reference
    assert history.trial_numbers == pareto.trial_numbers
    assert np.all(np.diff(history.hypervolume) >= 0)
    for n in range(1, len(pareto.accuracy) + 1):  # each prefix, recomputed from scratch
        expected = hypervolume_2d(pareto.accuracy[:n], pareto.mflops[:n], reference)
        assert history.hypervolume[n - 1] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert history.hypervolume[-1] > 0


def test_hypervolume_of_hand_made_points() -> None:
    points = [(0.5, 4.0), (0.5, 4.0), (0.7, 6.0), (0.6, 3.0), (0.9, 12.0), (0.65, 3.0)]
    pareto = pareto_info_from(points)
    history = hypervolume_info(pareto, reference=10.0)
    expected = [3.0, 3.0, 3.0 + 0.2 * 4, 0.6 * 7 + 0.1 * 4, 0.6 * 7 + 0.1 * 4, 0.65 * 7 + 0.05 * 4]
    np.testing.assert_allclose(history.hypervolume, expected)
    assert pareto.front == (False, False, True, False, True, True)


def pareto_info_from(points, latency=None, params=None):
    """A ParetoInfo of an in-memory study holding ``points`` (and latencies) as trials, each
    with its own parameter ``x`` unless ``params`` gives them."""
    names = ["accuracy", "mflops"] + (["latency_ms"] if latency else [])
    directions = ["maximize", "minimize"] + (["minimize"] if latency else [])
    optuna_study = optuna.create_study(directions=directions)
    optuna_study.set_user_attr("objectives", names)
    distributions = {"x": optuna.distributions.IntDistribution(0, 1000)}
    for i, values in enumerate(points):
        values = [*values, latency[i]] if latency else list(values)
        x = i if params is None else params[i]
        trial = optuna.trial.create_trial(
            values=values, params={"x": x}, distributions=distributions
        )
        optuna_study.add_trial(trial)
    return pareto_info(optuna_study)


def test_a_point_sampled_again_is_one_point_of_the_front() -> None:
    """Trials of the same parameters (configuration, rule, thresholds) count once, as in the
    front JSON; equal objectives from other parameters are distinct points."""
    points = [(0.5, 2.0), (0.5, 2.0), (0.5, 2.0), (0.7, 3.0)]
    pareto = pareto_info_from(points, params=[1, 1, 2, 3])
    assert pareto.front == (True, False, True, True)


def test_latency_is_read_when_trials_carry_it() -> None:
    pareto = pareto_info_from([(0.5, 2.0), (0.6, 3.0)], latency=[1.5, 2.5])
    assert pareto.latency_ms == (1.5, 2.5)
    assert pareto.front == (True, True)


def test_exit_distribution_of_the_front(searched, info) -> None:
    study, _, _, optuna_study = searched
    points = info.exits.points
    front = {n for n, f in zip(info.pareto.trial_numbers, info.pareto.front, strict=True) if f}
    assert {p.trial_number for p in points} == front
    assert [p.mflops for p in points] == sorted(p.mflops for p in points)
    trials = {t.number: t for t in optuna_study.trials}
    for point in points:
        assert sum(point.exit_fractions) == pytest.approx(1.0)
        config, _ = trial_config(trials[point.trial_number], study.space)
        assert len(point.exit_labels) == len(point.exit_fractions) == config.num_exits
        assert all(re.fullmatch(r"b\d+/l\d+ \w+", label) for label in point.exit_labels)


def test_tradeoff_curve_of_the_most_accurate_point(searched, info) -> None:
    study, run, url, optuna_study = searched
    curve, points = info.tradeoff, info.exits.points
    best = max(p.accuracy for p in points)
    assert curve.trial_number == next(p.trial_number for p in points if p.accuracy == best)
    assert len(curve.s) == 41 and curve.s[0] == 0.0 and curve.s[-1] == 1.0
    i = curve.operating_index
    assert curve.s[i] == 0.5
    trial = optuna_study.trials[curve.trial_number]
    assert (curve.accuracy[i], curve.mflops[i]) == tuple(trial.values)  # its own thresholds
    config, rule = trial_config(trial, study.space)
    assert curve.thresholds == rule.thresholds and curve.rule == rule.rule
    table, _ = load_evaluator(study, run, url).table(config)
    assert curve.accuracy[-1] == pytest.approx(table.correct[-1].mean())  # all at the last exit
    assert curve.mflops[-1] == pytest.approx(table.cumulative_flops[-1] / 1e6)
    assert curve.accuracy[0] == pytest.approx(table.correct[0].mean())  # all at the first exit
    assert curve.mflops[0] == pytest.approx(table.cumulative_flops[0] / 1e6)
    assert np.all(np.diff(curve.mflops) >= -1e-12)  # higher thresholds never exit earlier


def test_chosen_pareto_index(searched) -> None:
    study, run, url, optuna_study = searched
    evaluator = load_evaluator(study, run, url)
    info = build_report_info(optuna_study, study, evaluator, chosen_index=0)
    assert info.tradeoff.trial_number == info.exits.points[0].trial_number
    with pytest.raises(ReportError, match="the front has points 0 to"):
        build_report_info(optuna_study, study, evaluator, chosen_index=len(info.exits.points))


def test_draw_and_write_report(info, tmp_path: Path) -> None:
    html = draw_report(info)
    assert html.startswith("<!DOCTYPE html>")
    for title in TITLES.values():
        assert title in html
    assert html.count("window.PlotlyConfig") == 1  # plotly.js inlined once
    path = tmp_path / "out" / "report.html"
    path.parent.mkdir()
    path.write_text("an older report")
    assert write_report(info, path) == path
    assert path.read_text(encoding="utf-8") == html
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left


def test_importing_reports_leaves_plotly_out() -> None:
    code = "import sys, exitnas.reports; assert 'plotly' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def run_report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="exitnas")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    return args.handler(args)


def test_report_command_writes_the_file(searched, tmp_path: Path, capsys) -> None:
    _, run, url, _ = searched
    out = tmp_path / "report.html"
    assert run_report(str(run), "--storage", url, "--out", str(out), "--pareto-index", "0") == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert TITLES["pareto"] in out.read_text(encoding="utf-8")


def test_report_command_without_a_study(trained_run, tmp_path: Path) -> None:
    _, run = trained_run
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(ExitnasError, match="^no study named 'tiny' in .*; run exitnas search$"):
        run_report(str(run), "--storage", url, "--out", str(tmp_path / "r.html"))
    assert not (tmp_path / "r.html").exists()


def test_sweep_of_never_exit_thresholds_stays_finite() -> None:
    from exitnas.reports.curves import sweep_thresholds

    thresholds = (0.4, float("inf"))  # a calibrated rule: never exit at the second exit
    assert sweep_thresholds(thresholds, 0.0).tolist() == [0.0, 0.0]
    middle = sweep_thresholds(thresholds, 0.5)
    assert middle[0] == 0.4 and 1.0 < middle[1] < 1.0 + 1e-9  # above any confidence
    assert not np.isnan(sweep_thresholds(thresholds, 0.75)).any()
    assert np.isinf(sweep_thresholds(thresholds, 1.0)).all()
