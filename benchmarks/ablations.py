"""The ablations of ``versus_baseline.py``: exitnas with one part taken away, on the test split.

``fixed-thresholds``: the run's front with max-softmax and one threshold shared by every exit
(set per budget on validation). ``no-reuse``, ``single-branch``, ``linear-heads``,
``no-keep-rates``: a new search in the space narrowed that way (same sampler, seed and trials),
its own learned policy, the same budget queries. :class:`TestLogits` gives every arm's test
logits, each configuration's computed once.

    rows = ablation_rows("linear-heads", run, trials, TestLogits(run), fractions, budgets)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
from presets import describe, test_point

from exitnas.exits.policy import fit_study_policy
from exitnas.exits.rules import confidences, exit_indices, score_exits, softmax
from exitnas.jobs.query import front_candidates
from exitnas.runs import Run
from exitnas.search.budget import Budget, BudgetError, Candidate, answer_budget
from exitnas.search.front import ParetoPoint, pareto_points
from exitnas.search.objective import SearchObjective
from exitnas.search.samplers import create_sampler
from exitnas.search.studies import DIRECTIONS
from exitnas.supernet.evaluate import predict_exits

FIXED = "fixed-thresholds"
SHARED_THRESHOLDS = np.linspace(0.0, 1.0, 51)
NARROWED: dict[str, dict[str, Any]] = {  # ablation -> the SearchSpace fields it narrows
    "no-reuse": {"reuse": (False,)},
    "single-branch": {"max_branches": 1},
    "linear-heads": {"head_types": ("linear",)},
    "no-keep-rates": {"keep_rates": (1.0,)},
}
ABLATIONS = (FIXED, *NARROWED)


class TestLogits:
    """Per-exit test-split logits of configurations on the run's supernet, each computed once."""

    def __init__(self, run: Run):
        self.run = run
        self.labels = run.splits.test.labels.numpy()
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, config) -> np.ndarray:
        """``(E, N, K)`` test logits of ``config``."""
        if config.key() not in self._cache:
            splits = self.run.splits
            self._cache[config.key()] = predict_exits(
                self.run.supernet, splits.test.images, splits.mean, splits.std, config=config
            )
        return self._cache[config.key()]


@dataclass(frozen=True)
class Choice:
    """What an arm chose for one budget on the validation split."""

    point: ParetoPoint
    rule: str
    thresholds: Any
    val_accuracy: float


def fit_policy(candidates, labels, seed: int):
    """The learned policy of a front (as ``exitnas policy fit``), or None without multi-exits."""
    logits = list({c.point.config.key(): c.logits for c in candidates}.values())
    try:
        return fit_study_policy(logits, labels, random_state=seed)
    except ValueError:
        return None


def shared_threshold_answer(candidates, labels, budget_mflops: float) -> Choice | None:
    """Most accurate (config, one max-softmax threshold for every exit) within the budget."""
    best = None
    for c in candidates:
        conf = confidences(softmax(c.logits), "max_softmax")
        correct = c.logits.argmax(-1) == labels[None, :]
        cumulative = np.cumsum(c.point.stage_flops) / 1e6
        for t in SHARED_THRESHOLDS:
            thresholds = np.full(c.logits.shape[0] - 1, t)
            outcome = score_exits(exit_indices(conf, thresholds), correct, cumulative)
            if outcome.expected_flops > budget_mflops * (1 + 1e-12):
                continue
            key = (outcome.accuracy, -outcome.expected_flops)
            if best is None or key > best[0]:
                best = (key, c, tuple(thresholds.tolist()))
    return None if best is None else Choice(best[1].point, "max_softmax", best[2], best[0][0])


def narrowed_candidates(run: Run, name: str, trials: int) -> list[Candidate]:
    """The Pareto points, with validation logits, of a new search (same sampler, seed, trials)
    in the space narrowed by ablation ``name``."""
    study = run.study
    space = replace(study.space, **NARROWED[name])
    sampler = create_sampler(study.search.sampler, study.seed, study.search.population_size)
    optuna_study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    objective = SearchObjective(run.evaluator, study.search.rules, space=space)
    optuna_study.optimize(objective, n_trials=trials, show_progress_bar=True)
    return [
        Candidate(p, run.evaluator.logits(p.config)[0]) for p in pareto_points(optuna_study, space)
    ]


def query_choice(candidates, labels, budget_mflops: float, policy) -> Choice | None:
    """The budget query's answer (calibrated on validation), or None below the cheapest."""
    try:
        answer = answer_budget(candidates, labels, Budget("mflops", budget_mflops), policy=policy)
    except BudgetError:
        return None
    return Choice(answer.point, answer.rule.rule, answer.rule.thresholds, answer.accuracy)


def ablation_rows(
    name: str, run: Run, trials: int, test: TestLogits, fractions, budgets
) -> list[dict]:
    """Test accuracy and MFLOPs of ablation ``name`` at each budget it can meet."""
    val_labels = run.splits.val.labels.numpy()
    if name == FIXED:
        candidates, policy = front_candidates(run), None
    else:
        print(f"\nablation {name}: {trials} trials in the narrowed space", flush=True)
        candidates = narrowed_candidates(run, name, trials)
        policy = fit_policy(candidates, val_labels, run.study.seed)
    rows = []
    for fraction, budget in zip(fractions, budgets, strict=True):
        if name == FIXED:
            choice = shared_threshold_answer(candidates, val_labels, budget)
        else:
            choice = query_choice(candidates, val_labels, budget, policy)
        if choice is None:
            continue
        config = choice.point.config
        acc, mflops = test_point(
            test(config),
            test.labels,
            choice.point.stage_flops,
            choice.rule,
            choice.thresholds,
            policy,
        )
        rows.append(
            {
                "fraction": fraction,
                "config": describe(config),
                "rule": choice.rule,
                "val_accuracy": choice.val_accuracy,
                "test_accuracy": acc,
                "mflops": mflops,
            }
        )
    return rows
