"""``exitnas policy fit/query``, budget exports, device searches, learned early exit at run time."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import exitnas
from exitnas.cli import build_parser
from exitnas.deploy.bundle import BundleError
from exitnas.deploy.write import export_bundle
from exitnas.devices.costs import load_device_costs
from exitnas.devices.errors import ProfileError
from exitnas.errors import ExitnasError
from exitnas.exits.options import PolicyError
from exitnas.exits.policy import policy_from_bytes, policy_to_bytes
from exitnas.exits.rules import ExitRule, exit_indices
from exitnas.runs import Run
from exitnas.search import run_search
from exitnas.search.budget import BudgetError
from exitnas.search.front import pareto_points, read_front_json
from exitnas.search.objective import evaluation_key
from exitnas.storage.store import ProfileExistsError
from exitnas.storage.urls import open_store

FAST_PROFILE = ("--repeats", "2", "--warmup", "1", "--batch-sizes", "1,4", "--configs", "3")


def _cli(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def fitted(searched_copy):
    """The session's searched run in a database of its own, device "cpu" profiled, the
    policy fitted."""
    study, run, url = searched_copy
    base = ("--study", str(run), "--storage", url)
    assert _cli("profile", *base, "--device", "cpu", *FAST_PROFILE)[0] == 0
    code, out = _cli("policy", "fit", *base, "--estimator", "logistic")
    assert code == 0
    return study, run, url, out


def _query(fitted, *extra: str) -> dict:
    _, run, url, _ = fitted
    code, out = _cli("policy", "query", "--study", str(run), "--storage", url, *extra)
    assert code == 0
    return json.loads(out)


def test_fit_stores_a_policy_and_refuses_to_overwrite(fitted) -> None:
    study, run, url, out = fitted
    assert "policy 'learned' of study 'tiny': logistic on" in out and "ROC-AUC" in out
    stored = open_store(url).get_policy(study.name, "learned")
    assert stored is not None and json.loads(stored.info_json)["estimator"] == "logistic"
    policy = policy_from_bytes(stored.blob)
    assert len(policy.fold_policies) == 2 and policy.info["architectures"] >= 1
    with pytest.raises(ProfileExistsError, match="--replace"):
        _cli("policy", "fit", "--study", str(run), "--storage", url)
    assert open_store(url).get_policy(study.name, "learned") == stored  # untouched


def test_query_answers_within_the_budget(fitted) -> None:
    study, run, url, _ = fitted
    loose = _query(fitted, "--device", "cpu", "--budget-ms", "1000")
    front = pareto_points(optuna.load_study(study_name=study.name, storage=url), study.space)
    # never less accurate than the front's best point (whose own thresholds stay on offer)
    assert loose["expected"]["val_accuracy"] >= max(p.accuracy for p in front)
    cheapest = min(loose["stage_ms"][0], *(_first_ms(fitted, p) for p in front))
    tight = 1.05 * cheapest
    answer = _query(fitted, "--device", "cpu", "--budget-ms", str(tight))
    assert answer["expected"]["latency_ms"] <= tight
    assert answer["policy_offered"] == "learned" and answer["latency_source"] in (
        "measured",
        "predicted",
        "measured+predicted",
    )
    flops = _query(fitted, "--budget-mflops", "1000", "--no-policy")
    assert flops["device"] is None and flops["expected"]["latency_ms"] is None
    assert flops["policy"] is None and flops["rule"]["rule"] != "learned"
    assert flops["policy_offered"] is None
    assert loose["device_runtime"] == "torch" and flops["device_runtime"] is None
    # --rule offers that rule alone
    for rule in ("entropy", "learned"):
        only = _query(fitted, "--budget-mflops", "1000", "--rule", rule)
        assert only["rule"]["rule"] == rule
    with pytest.raises(BudgetError, match="needs a fitted policy"):
        _query(fitted, "--budget-mflops", "1000", "--rule", "learned", "--no-policy")
    assert answer["policy"] == ("learned" if answer["rule"]["rule"] == "learned" else None)


def _first_ms(fitted, point) -> float:
    study, _, url, _ = fitted
    costs = load_device_costs(open_store(url), study, "cpu", url)
    return float(costs.stage_ms(study.space, point.config)[0][0])


def test_query_errors(fitted) -> None:
    study, run, url, _ = fitted
    base = ("policy", "query", "--study", str(run), "--storage", url)
    with pytest.raises(BudgetError, match=r"below the cheapest achievable cost on device 'cpu'"):
        _cli(*base, "--device", "cpu", "--budget-ms", "1e-6")
    with pytest.raises(ProfileError, match=r"no profile of device 'pi'.*profiled: 'cpu'"):
        _cli(*base, "--device", "pi", "--budget-ms", "5")
    with pytest.raises(BudgetError, match="--budget-ms needs --device"):
        _cli(*base, "--budget-ms", "5")
    with pytest.raises(BudgetError, match="positive"):
        _cli(*base, "--budget-mflops", "-3")
    with pytest.raises(SystemExit):  # argparse: one budget is required
        _cli(*base, "--device", "cpu")
    with pytest.raises(PolicyError, match="no fitted policy named 'other'"):
        from exitnas.jobs.query import stored_policy

        stored_policy(Run.open(run, url), "other", required=True)


def test_a_stale_policy_is_refused(fitted, tmp_path: Path) -> None:
    study, run, url, _ = fitted
    stale_url = f"sqlite:///{tmp_path / 'stale.db'}"
    run_search(study, run, trials=4, storage=stale_url, progress=False)
    store = open_store(stale_url)
    assert _cli("policy", "fit", "--study", str(run), "--storage", stale_url)[0] == 0
    stored = store.get_policy(study.name, "learned")
    store.put_policy(replace(stored, evaluation_key="0" * 64), replace=True)
    with pytest.raises(PolicyError, match="fitted on other supernet weights"):
        _cli("policy", "query", "--study", str(run), "--storage", stale_url, "--budget-mflops", "9")


def test_export_of_a_budget_answer_runs_its_rule(fitted, tmp_path: Path) -> None:
    study, run, url, _ = fitted
    out = tmp_path / "bundle"
    code, line = _cli(
        "export", "--study", str(run), "--storage", url, "--out", str(out),
        "--device", "cpu", "--budget-ms", "1000",
    )  # fmt: skip
    assert code == 0 and "exported the answer to --budget-ms 1000" in line
    bundle = exitnas.load(out)
    meta = json.loads((out / "config.json").read_text())
    assert meta["budget_query"]["device"] == "cpu"
    splits = Run.open(run, url).splits
    prediction = bundle.predict(splits.val.images, batch_size=7)
    accuracy = float((prediction.labels == splits.val.labels.numpy()).mean())
    # what the bundle records is what it does on the validation split, whatever the rule
    assert accuracy == pytest.approx(meta["val_accuracy"], abs=1e-12)
    assert prediction.flops.mean() / 1e6 == pytest.approx(meta["expected_mflops"], rel=1e-12)
    assert (meta["rule"]["rule"] == "learned") == (meta["budget_query"]["out_of_fold"] is not None)
    with pytest.raises(ExitnasError, match="not empty"):
        _cli(
            "export", "--study", str(run), "--storage", url, "--out", str(out),
            "--budget-mflops", "1000",
        )  # fmt: skip
    with pytest.raises(ExitnasError, match="--device goes with"):
        _cli("export", "--study", str(run), "--storage", url, "--out", "x", "--device", "cpu")
    # the front JSON with --device carries each point's expected latency on it
    front_path = tmp_path / "front.json"
    _cli(
        "export", "--study", str(run), "--storage", url, "--out", str(front_path),
        "--pareto", "--device", "cpu",
    )  # fmt: skip
    costs = load_device_costs(open_store(url), study, "cpu", url)
    for point in read_front_json(front_path):
        ms = costs.rule_stage_ms(study.space, point.config, point.rule.rule)
        expected = float(np.dot(point.exit_fractions, np.cumsum(ms)))
        assert point.latency_ms == pytest.approx(expected, rel=1e-12)


def test_learned_rule_runs_in_the_bundle_as_simulated(fitted, tmp_path: Path) -> None:
    """Real batched early exit with the learned policy: exits equal the cached simulation,
    including a sub-batch that empties after the first exit."""
    study, run, url, _ = fitted
    opened = Run.open(run, url)
    model, splits, optuna_study = opened.supernet, opened.splits, opened.searched()
    stored = open_store(url).get_policy(study.name, "learned")
    policy = policy_from_bytes(stored.blob)
    point = max(pareto_points(optuna_study, study.space), key=lambda p: p.config.num_exits)
    if point.config.num_exits < 2:
        point = replace(point, config=study.space.largest())
    logits, _ = opened.evaluator.logits(point.config)
    # images in order of falling exit-0 score; exit 0's threshold is the 8th score: the first
    # batch of 8 all leave at exit 0 (a sub-batch that empties early), later ones go on
    order = np.argsort(-policy.scores(logits)[0], kind="stable")
    logits = logits[:, order]
    scores = policy.scores(logits)
    thresholds = (float(scores[0, 7]),) + tuple(float(np.median(s)) for s in scores[1:-1])
    rule = ExitRule("learned", thresholds)
    out = export_bundle(
        replace(point, rule=rule),
        model,
        study,
        tmp_path / "learned",
        weights_hash="x",
        mean=splits.mean,
        std=splits.std,
        policy=policy_to_bytes(policy, deployed_only=True),
    )
    bundle = exitnas.load(out)
    images = splits.val.images[torch.from_numpy(order)]
    prediction = bundle.predict(images, batch_size=8)
    expected = exit_indices(scores, thresholds)
    assert (expected[:8] == 0).all() and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(prediction.exits, expected)
    np.testing.assert_array_equal(
        prediction.labels, logits.argmax(-1)[expected, np.arange(len(images))]
    )
    # the policy file is covered by the manifest; a bundle without it is refused
    (out / "policy.skops").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match manifest"):
        exitnas.load(out)
    with pytest.raises(ExitnasError, match="needs its policy"):
        export_bundle(
            replace(point, rule=rule), model, study, tmp_path / "x", weights_hash="x",
            mean=splits.mean, std=splits.std,
        )  # fmt: skip


def test_device_search_adds_the_latency_objective(fitted, tmp_path: Path) -> None:
    study, run, url, _ = fitted
    summary = run_search(study, run, trials=6, storage=url, device="cpu", progress=False)
    assert summary.study_name == "tiny@cpu" and summary.trials_added == 6
    device_study = optuna.load_study(study_name="tiny@cpu", storage=url)
    assert len(device_study.directions) == 3
    assert device_study.metric_names == ["accuracy", "mflops", "latency_ms"]
    costs = load_device_costs(open_store(url), study, "cpu", url)
    for point in pareto_points(device_study, study.space):
        stage_ms = costs.stage_ms(study.space, point.config)[0]
        expected = float(np.dot(point.exit_fractions, np.cumsum(stage_ms)))
        assert point.latency_ms == pytest.approx(expected)
    with pytest.raises(ProfileError, match="no profile of device 'pi'"):
        run_search(study, run, trials=1, storage=url, device="pi", progress=False)
    # a query with the device uses its device search's front
    answer = _query(fitted, "--device", "cpu", "--budget-ms", "1000")
    numbers = {t.number for t in device_study.best_trials}
    assert answer["trial_number"] in numbers
    assert evaluation_key(run, Run.open(run, url).splits)  # same cache, same key
