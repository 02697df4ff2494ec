"""Kill points for crash tests: ``EXITNAS_KILL_AT=<point>[:<n>]`` makes a process SIGKILL itself.

Code that must survive a crash calls :func:`kill_point` at the named moments of its life: the
study created, its identity half written, a trial asked, an architecture evaluated but not
cached, its cache row written, a trial told, a checkpoint's temporary file written but not
renamed, a device profile or a policy written but not committed. With the environment variable
unset (everywhere but the crash tests) a kill point does nothing. With it set, the process
kills itself with ``SIGKILL`` (no cleanup, no ``finally``, no ``atexit``: exactly ``kill -9``)
the ``n``-th time it passes that point (the first time without ``:n``), so a test kills a
worker at the same place in every run instead of at a moment that timing picks.

This module imports nothing from exitnas: every layer may call it.

Example:
    EXITNAS_KILL_AT=trial-told:3 exitnas search studies/quickstart.yaml --until 100
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["KILL_ENV", "KILL_POINTS", "kill_point", "parse_kill_at"]

KILL_ENV = "EXITNAS_KILL_AT"

KILL_POINTS = {
    "study-created": "the Optuna study exists, before this worker sets up or checks its identity",
    "identity-half-written": "metric names and informational attributes written, not the identity",
    "trial-asked": "a trial is RUNNING in the study, before its first heartbeat",
    "evaluated-not-cached": "an architecture's validation logits computed, their row not written",
    "cache-row-written": "the logits' cache row committed, the trial not told",
    "trial-told": "a trial told (its state committed), before the next one is asked",
    "checkpoint-temp-written": "a training checkpoint's temporary file written, not renamed",
    "profile-write": "a device profile's row written, its transaction not committed",
    "policy-write": "a fitted policy's row written, its transaction not committed",
}

_passes: Counter[str] = Counter()  # times this process passed each point (only while armed)


def _unknown(point: str) -> str:
    return f"unknown kill point {point!r}; points: {', '.join(KILL_POINTS)}"


def parse_kill_at(text: str) -> tuple[str, int]:
    """``"trial-told:3"`` -> ``("trial-told", 3)``; a bare point means its first pass.

    Raises:
        ValueError: an unknown point or a count below 1 (the message lists the points).
    """
    point, _, count = text.partition(":")
    if point not in KILL_POINTS:
        raise ValueError(f"{KILL_ENV}: {_unknown(point)}")
    try:
        times = int(count) if count else 1
    except ValueError:
        times = 0
    if times < 1:
        raise ValueError(f"{KILL_ENV}: {text!r}: the count after ':' must be an integer >= 1")
    return point, times


def kill_point(point: str) -> None:
    """SIGKILL this process if ``EXITNAS_KILL_AT`` names ``point`` and this is the pass it counts.

    Raises:
        ValueError: ``point`` is not a kill point, or ``EXITNAS_KILL_AT`` is malformed.
    """
    if point not in KILL_POINTS:
        raise ValueError(_unknown(point))
    armed = os.environ.get(KILL_ENV)
    if not armed:
        return
    target, times = parse_kill_at(armed)
    if target != point:
        return
    _passes[point] += 1
    if _passes[point] == times:
        os.kill(os.getpid(), signal.SIGKILL)
