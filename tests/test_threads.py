"""Torch's threads: --threads, the study field, OMP_NUM_THREADS, and the shared automatic count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exitnas import threads


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty registry folder; this process unregistered, 8 CPUs, no OMP_NUM_THREADS."""
    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_registration", {})
    monkeypatch.setattr(threads, "cpu_count", lambda: 8)
    return tmp_path


def test_requested_then_environment_then_automatic(registry, monkeypatch) -> None:
    assert threads.choose_threads(3) == 3
    assert threads.choose_threads(0) == 8  # alone
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(0) == 2
    assert threads.choose_threads(5) == 5


def test_live_processes_share_the_cpus_and_dead_ones_are_forgotten(registry) -> None:
    (registry / str(os.getppid())).write_text("2\n")  # a live process holding two shares
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    (registry / dead).write_text("1\n")
    assert threads.live_shares() == 3  # the parent's 2 and this unregistered process
    assert not (registry / dead).exists()
    threads.register()
    assert (registry / str(os.getpid())).read_text() == "1\n"
    assert threads.live_shares() == 3 and threads.automatic_threads() == 8 // 3
    with threads.holding(4):  # the parent of four workers
        assert threads.live_shares() == 6
    assert threads.live_shares() == 3
    threads._unregister()
    assert not (registry / str(os.getpid())).exists()


def test_workers_count_in_their_parents_shares(registry) -> None:
    with threads.holding(2):
        assert threads.automatic_threads() == 4
    threads.register(0)  # a worker: its parent holds its share
    assert threads.live_shares() == 1


def test_use_threads_sets_torch(registry) -> None:
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
