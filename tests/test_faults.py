"""Kill points: EXITNAS_KILL_AT names one, optionally with the pass that kills."""

from __future__ import annotations

import multiprocessing
import signal

import pytest

from exitnas.faults import KILL_ENV, KILL_POINTS, kill_point, parse_kill_at


def test_parse_kill_at() -> None:
    assert parse_kill_at("trial-told") == ("trial-told", 1)
    assert parse_kill_at("trial-told:3") == ("trial-told", 3)
    with pytest.raises(ValueError, match="unknown kill point 'trial-toll'; points: study-created"):
        parse_kill_at("trial-toll")
    for bad in ("trial-told:0", "trial-told:x", "trial-told:-1"):
        with pytest.raises(ValueError, match="integer >= 1"):
            parse_kill_at(bad)


def test_unarmed_or_other_points_do_nothing(monkeypatch) -> None:
    monkeypatch.delenv(KILL_ENV, raising=False)
    for point in KILL_POINTS:
        kill_point(point)
    monkeypatch.setenv(KILL_ENV, "trial-told")
    kill_point("trial-asked")
    with pytest.raises(ValueError, match="unknown kill point"):
        kill_point("no-such-point")


def _pass_three_times() -> None:
    for _ in range(3):
        kill_point("cache-row-written")


@pytest.mark.parametrize(
    ("armed", "exitcode"),
    [("cache-row-written:2", -signal.SIGKILL), ("cache-row-written:4", 0), ("trial-told", 0)],
)
def test_the_nth_pass_kills_with_sigkill(monkeypatch, armed: str, exitcode: int) -> None:
    monkeypatch.setenv(KILL_ENV, armed)
    process = multiprocessing.get_context("fork").Process(target=_pass_three_times)
    process.start()
    process.join(30)
    assert process.exitcode == exitcode
