"""Budget queries pick the most accurate configuration within the budget (brute force check)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from exitnas.exits.policy import fit_study_policy
from exitnas.exits.rules import ExitRule, confidences, exit_indices, score_exits, softmax
from exitnas.search.budget import Budget, BudgetError, Candidate, answer_budget
from exitnas.search.front import ParetoPoint
from exitnas.spaces import SearchSpace


def _front(space: SearchSpace, rng: np.random.Generator, labels: np.ndarray) -> list[Candidate]:
    """Five two-exit candidates of growing cost and accuracy (synthetic logits and costs)."""
    candidates = []
    largest = space.largest()
    branch = replace(largest.branches[0], exits=largest.branches[0].exits[1:])
    two_exit = replace(largest, branches=(branch,))
    assert two_exit.num_exits == 2
    for index in range(5):
        logits = rng.normal(size=(2, labels.size, 4))
        strength = np.array([0.5 + 0.4 * index, 1.5 + 0.5 * index])
        logits[:, np.arange(labels.size), labels] += strength[:, None]
        flops = (int(1e6 * (1 + index)), int(1e6 * (2 + index)))
        ms = np.array([0.1 * (1 + index), 0.3 * (1 + index)])
        point = ParetoPoint(
            index, 100 + index, two_exit, ExitRule("max_softmax", (0.5,)), 0.0, 0.0, (), flops
        )
        candidates.append(Candidate(point, logits, ms, np.array([True, index % 2 == 0])))
    return candidates


def _brute_force(candidates, labels, budget: Budget) -> float:
    """Best validation accuracy within the budget over every threshold of every candidate."""
    best = -1.0
    for candidate in candidates:
        cost = np.cumsum(candidate.stage_cost(budget.metric))
        conf = confidences(softmax(candidate.logits), "max_softmax")
        correct = candidate.logits.argmax(-1) == labels[None]
        for t in itertools.chain([0.0, np.inf], np.unique(conf[0])):
            taken = exit_indices(conf, (t,))
            if cost[taken].mean() <= budget.value * (1 + 1e-12):
                best = max(best, correct[taken, np.arange(labels.size)].mean())
    return best


@pytest.mark.parametrize("metric,value", [("ms", 0.25), ("ms", 0.6), ("mflops", 3.5), ("ms", 9)])
def test_query_is_the_brute_force_best(space, metric: str, value: float) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 40)
    candidates = _front(space, rng, labels)
    budget = Budget(metric, value)
    answer = answer_budget(candidates, labels, budget, device="cpu", num_candidates=64)
    assert answer.accuracy == pytest.approx(_brute_force(candidates, labels, budget))
    cost = answer.latency_ms if metric == "ms" else answer.mflops
    assert cost <= value * (1 + 1e-12)
    # the answer's numbers are those of its rule on its candidate
    chosen = next(c for c in candidates if c.point.index == answer.point.index)
    conf = confidences(softmax(chosen.logits), "max_softmax")
    taken = exit_indices(conf, answer.rule.thresholds)
    assert answer.exit_fractions == tuple(np.bincount(taken, minlength=2) / labels.size)
    assert answer.mflops == pytest.approx(np.cumsum(chosen.point.stage_flops)[taken].mean() / 1e6)
    assert answer.latency_ms == pytest.approx(np.cumsum(chosen.stage_ms)[taken].mean())
    source = "measured" if chosen.stage_ms_measured.all() else "measured+predicted"
    assert answer.latency_source == source
    document = answer.to_dict()
    assert document["pareto_index"] == answer.point.index and document["device"] == "cpu"
    assert document["expected"]["val_accuracy"] == answer.accuracy


def test_more_budget_is_never_less_accurate(space) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 60)
    candidates = _front(space, rng, labels)
    accuracies = [
        answer_budget(candidates, labels, Budget("ms", b)).accuracy for b in (0.12, 0.3, 0.6, 2)
    ]
    assert accuracies == sorted(accuracies)


def test_learned_rule_is_offered_when_a_policy_is_given(space) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 80)
    candidates = _front(space, rng, labels)
    policy = fit_study_policy([c.logits for c in candidates], labels, estimator="logistic")
    answer = answer_budget(candidates, labels, Budget("ms", 0.8), policy=policy)
    without = answer_budget(candidates, labels, Budget("ms", 0.8))
    # every candidate offers both rules; a learned option counts when both its out-of-fold and
    # its deployed outcome meet the budget
    assert without.options < answer.options <= 2 * without.options
    assert answer.rule.rule in ("max_softmax", "learned")
    chosen_on = answer.accuracy if answer.out_of_fold is None else answer.out_of_fold[0]
    assert chosen_on >= without.accuracy


def test_a_learned_answer_records_what_the_deployed_policy_does(space) -> None:
    """The figures are the deployed policy's (what a bundle's predict gives on these images);
    the out-of-fold ones the choice was made on are kept beside them."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 80)
    candidates = _front(space, rng, labels)
    policy = fit_study_policy([c.logits for c in candidates], labels, estimator="logistic")
    learned = 0
    for budget in (0.2, 0.3, 0.8):
        answer = answer_budget(candidates, labels, Budget("ms", budget), policy=policy)
        if answer.rule.rule != "learned":
            assert answer.out_of_fold is None
            continue
        learned += 1
        chosen = next(c for c in candidates if c.point == answer.point)
        taken = exit_indices(policy.scores(chosen.logits), answer.rule.thresholds)
        correct = chosen.logits.argmax(-1) == labels[None, :]
        flops = score_exits(taken, correct, np.cumsum(chosen.point.stage_flops))
        ms = score_exits(taken, correct, np.cumsum(chosen.stage_ms)).expected_flops
        assert answer.accuracy == flops.accuracy and answer.exit_fractions == flops.exit_fractions
        assert answer.mflops == flops.expected_flops / 1e6
        assert answer.latency_ms == pytest.approx(ms, rel=1e-12) and ms <= budget * (1 + 1e-12)
        assert answer.out_of_fold is not None and answer.to_dict()["out_of_fold"]["mflops"] > 0
    assert learned  # the case under test happened (budget 0.2 here)


def test_the_learned_policy_pays_for_its_decisions(space) -> None:
    """On a device, every exit decision of the learned policy costs ``policy_ms`` more: the
    answer's latency includes it, and it must fit the budget."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 80)
    free = _front(space, rng, labels)
    policy = fit_study_policy([c.logits for c in free], labels, estimator="logistic")
    priced = [replace(c, policy_ms=0.05) for c in free]
    answer = answer_budget(priced, labels, Budget("ms", 0.2), policy=policy, rule="learned")
    chosen = next(c for c in priced if c.point == answer.point)
    ms = np.asarray(chosen.stage_ms) + np.array([0.05, 0.0])
    np.testing.assert_allclose(answer.stage_ms, ms)
    assert answer.latency_ms == pytest.approx(np.dot(answer.exit_fractions, np.cumsum(ms)))
    assert answer.latency_ms <= 0.2 * (1 + 1e-12)
    # a confidence rule's decisions cost nothing extra
    plain = answer_budget(priced, labels, Budget("ms", 0.2), rule="max_softmax")
    assert plain.stage_ms == tuple(next(c for c in priced if c.point == plain.point).stage_ms)


def test_impossible_budgets_name_the_cheapest_cost(space) -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 20)
    candidates = _front(space, rng, labels)
    with pytest.raises(BudgetError, match=r"cheapest achievable cost on device 'pi': 0\.1 ms"):
        answer_budget(candidates, labels, Budget("ms", 0.05), device="pi")
    with pytest.raises(BudgetError, match=r"--budget-mflops 0\.5 .* 1 mflops per image"):
        answer_budget(candidates, labels, Budget("mflops", 0.5))
    with pytest.raises(BudgetError, match="must be a positive number"):
        Budget("ms", -1.0)
    with pytest.raises(BudgetError, match="allowed"):
        Budget("seconds", 1.0)
    bare = [Candidate(c.point, c.logits) for c in candidates]
    with pytest.raises(BudgetError, match="needs a profiled device"):
        answer_budget(bare, labels, Budget("ms", 1.0))
    with pytest.raises(BudgetError, match="empty"):
        answer_budget([], labels, Budget("ms", 1.0))
