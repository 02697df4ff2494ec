"""How many threads torch computes with, chosen on purpose in every exitnas process.

The count of torch's intra-op threads (``torch.set_num_threads``) comes from, first to last:

1. ``--threads N`` of the command (train, search, run, profile, policy, export, report);
2. the study's ``training.num_threads`` (0: not set);
3. the environment's ``OMP_NUM_THREADS``, which torch itself would follow;
4. automatic: this machine's CPUs shared among the exitnas processes computing on it.

**Automatic.** torch's own default, one thread per core in every process, makes processes
that share a machine fight over it: two of them on two cores spend most of their time
waiting for each other (the quickstart's training probe took 147 s instead of 24 s with one
thread each). Each exitnas command that computes therefore registers itself as a file in a
per-user runtime folder (``$XDG_RUNTIME_DIR/exitnas`` or ``<tmp>/exitnas-<uid>``) for its
lifetime, holding its number of *shares*: 1, or ``W`` for ``exitnas search --workers W``
(whose worker processes are its shares). A process uses ``max(1, cpus // shares)`` threads,
where ``cpus`` is ``len(os.sched_getaffinity(0))`` and ``shares`` the sum over the live
registered processes (dead ones' files are skipped and removed). It checks again at every
training epoch and search trial, so a run that another one joins drops to its share at its
next epoch, and takes the cores back when the other ends. The load average, the other way
to see a busy machine, trails the load by a minute and counts a process's own threads, so
it cannot tell one process on two threads from two processes fighting.

**Determinism.** A training run resumed from a checkpoint gives bit-exactly the weights of an
uninterrupted one on the same machine with the same thread count; with another thread count
the floating-point sums run in another order, and the weights (and accuracies) differ
slightly. The automatic count follows the other exitnas processes, so pass ``--threads`` (or
set ``training.num_threads``) where a rerun has to reproduce a previous one bit for bit.

Example:
    >>> register()  # this process computes: count it in the others' shares
    >>> use_threads(0)  # automatic; use_threads(2) asks for two
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "automatic_threads",
    "choose_threads",
    "cpu_count",
    "holding",
    "live_shares",
    "register",
    "registry_dir",
    "use_threads",
]

REGISTRY_ENV = "EXITNAS_RUNTIME_DIR"  # overrides the registry folder (tests)

_registration: dict[Path, int] = {}  # this process's registry file -> its shares (one at most)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def registry_dir() -> Path:
    """The per-user folder of live exitnas processes."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "exitnas"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"exitnas-{uid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def register(shares: int = 1) -> None:
    """Count this process as ``shares`` computing processes until it exits (again: update).

    Args:
        shares: 1 for a command; ``W`` for the parent of ``W`` worker processes, and 0 for
            each of those workers (their parent holds their shares).
    """
    folder = registry_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / str(os.getpid())
        temporary = folder / f".{os.getpid()}.tmp"
        temporary.write_text(f"{max(0, shares)}\n")
        os.replace(temporary, path)  # readers never see a half-written count
    except OSError:  # a read-only or full temporary folder: no registry, threads still set
        return
    for old in [old for old in _registration if old != path]:  # the folder changed
        old.unlink(missing_ok=True)
        del _registration[old]
    _registration[path] = shares
    atexit.unregister(_unregister)
    atexit.register(_unregister)  # once


def _unregister() -> None:
    for path in _registration:
        path.unlink(missing_ok=True)
    _registration.clear()


@contextmanager
def holding(shares: int) -> Iterator[None]:
    """Count this process as ``shares`` processes inside the block (the parent of ``shares``
    workers), then as before."""
    previous = next(iter(_registration.values()), None)
    register(shares)
    try:
        yield
    finally:
        if previous is None:
            _unregister()
        else:
            register(previous)


def live_shares() -> int:
    """Shares of the live registered exitnas processes, this one counted at least once."""
    me, total, counted_me = os.getpid(), 0, False
    try:
        entries = list(registry_dir().iterdir())
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid != me and not _alive(pid):
            entry.unlink(missing_ok=True)  # a killed process's file
            continue
        try:
            shares = int(entry.read_text().strip())
        except (OSError, ValueError):  # removed meanwhile
            continue
        total += max(0, shares)
        counted_me |= pid == me
    return max(1, total + (0 if counted_me else 1))


def automatic_threads(shares: int | None = None) -> int:
    """``max(1, cpus // shares)``: this process's even share of the machine.

    Args:
        shares: the live shares to divide by (default :func:`live_shares`).
    """
    return max(1, cpu_count() // (live_shares() if shares is None else max(1, shares)))


def _env_threads() -> int:
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0


def choose_threads(requested: int | None = 0, shares: int | None = None) -> int:
    """The thread count: ``requested`` when positive, else ``OMP_NUM_THREADS``, else
    :func:`automatic_threads`."""
    if requested:
        return requested
    return _env_threads() or automatic_threads(shares)


def use_threads(requested: int | None = 0, shares: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`choose_threads` (when it differs); return it.

    Cheap enough to call at every epoch or trial: an automatic count follows the other exitnas
    processes there.
    """
    import torch

    count = choose_threads(requested, shares)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
