"""Budget queries on a run: the most accurate configuration and exit rule within a budget.

:func:`query_budget` answers ``exitnas policy query`` and ``exitnas export --budget-...``: the
Pareto configurations of the run's searched study, each with its searched exit rule and the
run's learned policy (when fitted), are calibrated on the validation split for the budget, and
the most accurate that fits is chosen (:func:`~exitnas.search.budget.answer_budget`).
:func:`export_answer` writes the answer's bundle.

Example:
    >>> run = Run.open("runs/quickstart")
    >>> result = query_budget(run, Budget("ms", 2.5), device="laptop")
    >>> export_answer(result, Path("bundles/laptop"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exitnas.exits.options import DEFAULT_POLICY, PolicyError

if TYPE_CHECKING:
    from exitnas.devices.costs import DeviceCosts
    from exitnas.exits.policy import StudyPolicy
    from exitnas.runs import Run
    from exitnas.search.budget import Budget, BudgetAnswer, Candidate
    from exitnas.storage.store import StoredPolicy

__all__ = ["QueryResult", "export_answer", "front_candidates", "query_budget", "stored_policy"]


@dataclass(frozen=True)
class QueryResult:
    """A budget query on a run, with what exporting its answer needs."""

    answer: BudgetAnswer
    run: Run  # the supernet, study and normalisation the answer's bundle is cut from
    policy_name: str | None  # the stored policy offered to the query, if any
    policy: StudyPolicy | None = None  # the policy the answer's rule runs, when it is learned
    device_runtime: str | None = None  # what the device's profile was measured with

    def to_dict(self) -> dict[str, Any]:
        """The answer as ``policy query`` prints it and ``answer.json`` stores it.

        ``policy`` names the learned policy the chosen rule runs (None for a confidence rule);
        ``policy_offered`` the stored policy the query could choose; ``device_runtime`` what
        the device's profile timed (``torch``, ``onnxruntime <version> <provider>``): the
        latency holds for a bundle run the same way.
        """
        from exitnas.exits.rules import LEARNED

        learned = self.answer.rule.rule == LEARNED
        return {
            **self.answer.to_dict(),
            "policy": self.policy_name if learned else None,
            "policy_offered": self.policy_name,
            "device_runtime": self.device_runtime,
        }


def front_candidates(run: Run, costs: DeviceCosts | None = None) -> list[Candidate]:
    """The run's Pareto points (one per configuration and rule) with their validation logits
    and, given a device's costs, their stage latencies."""
    from exitnas.search.budget import Candidate
    from exitnas.search.front import pareto_points

    seen: set[tuple[str, str]] = set()
    candidates = []
    space = run.study.space
    for point in pareto_points(run.searched(None if costs is None else costs.device), space):
        key = (point.config.key(), point.rule.rule)
        if key in seen:
            continue
        seen.add(key)
        logits, _ = run.evaluator.logits(point.config)
        ms, measured = (None, None) if costs is None else costs.stage_ms(space, point.config)
        policy_ms = 0.0 if costs is None else costs.policy_ms
        candidates.append(Candidate(point, logits, ms, measured, policy_ms))
    return candidates


def stored_policy(
    run: Run, name: str, required: bool
) -> tuple[StudyPolicy, StoredPolicy] | tuple[None, None]:
    """The run's stored policy ``name`` (checked against its evaluation key) and its record,
    or ``(None, None)`` when there is none and it is not ``required``.

    Raises:
        PolicyError: it is required and missing, or it was fitted on other cached logits.
    """
    from exitnas.exits.policy import policy_from_bytes

    study = run.study
    stored = run.store.get_policy(study.name, name)
    if stored is None:
        if required:
            raise PolicyError(
                f"study {study.name!r} has no fitted policy named {name!r}; run exitnas policy fit"
            )
        return None, None
    if stored.evaluation_key != run.evaluation_key:
        raise PolicyError(
            f"policy {name!r} was fitted on other supernet weights or another validation "
            "split; fit it again: exitnas policy fit --replace"
        )
    return policy_from_bytes(stored.blob, f"stored policy {name!r}"), stored


def query_budget(
    run: Run,
    budget: Budget,
    *,
    device: str | None = None,
    policy: str | None = DEFAULT_POLICY,
    rule: str | None = None,
) -> QueryResult:
    """Answer a budget query on a trained and searched run.

    Args:
        run: the opened run folder.
        budget: the budget, in ms (needs ``device``) or MFLOPs.
        device: a device profiled for the study (needed for a budget in ms); its latencies are
            reported either way. Its device search (``search --device``) is used when present.
        policy: name of a stored learned policy to offer beside the confidence rules (used when
            fitted; ``None``: confidence rules only).
        rule: offer only this exit rule (``--rule``; see
            :func:`~exitnas.search.budget.answer_budget`).

    Raises:
        ExitnasError: unknown device, stale policy, impossible budget, missing study...
    """
    from exitnas.exits.rules import LEARNED
    from exitnas.search.budget import answer_budget

    run.searched(device)  # a missing study is reported before a device or policy problem
    costs = run.costs(device)
    fitted, stored = (None, None)
    if policy is not None:
        fitted, stored = stored_policy(run, policy, required=rule == LEARNED)
    candidates = front_candidates(run, costs)
    labels = run.splits.val.labels.numpy()
    answer = answer_budget(candidates, labels, budget, policy=fitted, device=device, rule=rule)
    used = fitted if answer.rule.rule == LEARNED else None  # only offered when fitted
    runtime = None if costs is None else costs.profile.runtime
    return QueryResult(answer, run, policy if stored else None, used, runtime)


def export_answer(result: QueryResult, out: Path, fmt: str = "torch") -> Path:
    """Write the bundle of a budget query's answer (its config, calibrated rule, policy).

    ``fmt``: ``torch`` (safetensors, for ``exitnas.load``), ``onnx`` or ``both``.

    The bundle's ``config.json`` records the answer's expected validation accuracy, MFLOPs,
    latency and exit fractions, and the whole answer under ``budget_query``: what the bundle's
    ``predict`` gives on the validation split (with the learned rule, the deployed policy's
    figures; the out-of-fold ones it was chosen on are under ``budget_query.out_of_fold``).
    """
    from dataclasses import replace

    from exitnas.exits.policy import policy_to_bytes
    from exitnas.jobs.export import export_point

    answer, used = result.answer, result.policy
    point = replace(
        answer.point,
        rule=answer.rule,
        accuracy=answer.accuracy,
        mflops=answer.mflops,
        exit_fractions=answer.exit_fractions,
        latency_ms=answer.latency_ms,
    )
    blob = None if used is None else policy_to_bytes(used, deployed_only=True)
    extra = {"budget_query": result.to_dict()}
    return export_point(result.run, point, out, fmt, policy=blob, extra=extra)
