"""The Optuna study of a run: created once, checked every time it is opened.

The study is an ordinary Optuna study (``optuna-dashboard`` opens it) named after the study
file, ``<study>@<device>`` for a device search (a third objective, latency). It records the
study file's key, the exit rules and the evaluation key it was searched with in one user
attribute written last (:func:`study_identity`), and every later opening checks them: a
retrained supernet or changed data is refused instead of mixed in.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import optuna

from exitnas.errors import CheckpointError, ExitnasError
from exitnas.faults import kill_point
from exitnas.search.seeds import seed_trials
from exitnas.spaces import StudyConfig
from exitnas.storage.urls import open_storage

OBJECTIVES = ("accuracy", "mflops")


DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]


LATENCY_OBJECTIVE = "latency_ms"  # the third objective of a device search (minimised)


def search_study_name(study: StudyConfig, device: str | None = None) -> str:
    """Name of the Optuna study: the study's, or ``<study>@<device>`` for a device search."""
    return study.name if device is None else f"{study.name}@{device}"


def search_objectives(
    device: str | None = None,
) -> tuple[tuple[str, ...], list[Literal["maximize", "minimize"]]]:
    """Metric names and directions of a search (three with a device)."""
    if device is None:
        return OBJECTIVES, list(DIRECTIONS)
    return (*OBJECTIVES, LATENCY_OBJECTIVE), [*DIRECTIONS, "minimize"]


IDENTITY_ATTR = "exitnas_identity"  # the study's identity: one user attribute, written last


# before IDENTITY_ATTR, a study's identity was five attributes written one by one
_LEGACY_ATTRS = {
    "study_key": "exitnas_study_key",
    "study": "exitnas_study",
    "rules": "rules",
    "evaluation_key": "evaluation_key",
    "device": "device",
}


def study_identity(optuna_study: optuna.Study) -> dict[str, Any] | None:
    """What a searched study was set up with (study key, study file, exit rules, evaluation
    key, device), or None when its set-up never completed.

    A study set up before the identity was one attribute gives its separate attributes (the
    fields its set-up reached).
    """
    attrs = optuna_study.user_attrs
    if IDENTITY_ATTR in attrs:
        return dict(attrs[IDENTITY_ATTR])
    if _LEGACY_ATTRS["study_key"] in attrs:
        return {field: attrs[name] for field, name in _LEGACY_ATTRS.items() if name in attrs}
    return None


def _identity(study: StudyConfig, key: str | None, device: str | None) -> dict[str, Any]:
    return {
        "study_key": study.key(),
        "study": json.dumps(study.to_dict()),
        "rules": list(study.search.rules),
        "evaluation_key": key,
        "device": device,
    }


def _check_identity(
    optuna_study: optuna.Study, study: StudyConfig, url: str, key: str | None, rules: bool
) -> None:
    identity = study_identity(optuna_study)
    where = f"study {optuna_study.study_name!r} in {url}"
    if identity is None:
        raise ExitnasError(
            f"{where} was never set up (its first search was cut short): run exitnas search"
        )
    if identity.get("study_key") != study.key():
        raise CheckpointError(
            f"{where} was searched for another study file (key "
            f"{identity.get('study_key')}); use another --storage"
        )
    if rules and list(identity.get("rules", [])) != list(study.search.rules):
        raise CheckpointError(
            f"{where} was searched with exit rules {identity.get('rules')}; the study file now "
            f"says {list(study.search.rules)}: restore them or use another --storage"
        )
    if key is not None and identity.get("evaluation_key") != key:
        raise CheckpointError(
            f"{where} was searched with other supernet weights or another validation split "
            "(the supernet was retrained or the data changed): use another --storage"
        )


def open_study(
    study: StudyConfig,
    url: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    key: str | None = None,
    device: str | None = None,
    heartbeat: int | None = None,
) -> optuna.Study:
    """Create or load the Optuna study of ``study`` in ``url`` and check it belongs to it.

    A new study queues its seed trials (:func:`~exitnas.search.seeds.seed_trials`: the plain
    ViT's config and the presets) first; the sampler draws the trials after them.

    The study's identity (:func:`study_identity`) is one user attribute, written in one step
    after everything else the set-up writes, and the only one checked: a worker killed during
    the set-up leaves a study without it, which the next worker sets up (never refuses), and a
    worker opening the study while another sets it up checks the finished identity. Workers
    with the same study file, rules and evaluation key write the same identity; two workers
    that differ, opening a fresh study at the same instant, can both pass (Optuna's attributes
    have no compare-and-set), while any later one is refused.

    Args:
        key: the :func:`evaluation_key` the study must have been searched with.
        device: a profiled device: the three-objective study ``<study>@<device>``.
        heartbeat: seconds between running trials' heartbeats (to run trials on it).
    """
    names, directions = search_objectives(device)
    optuna_study = optuna.create_study(
        study_name=search_study_name(study, device),
        storage=open_storage(url, heartbeat),
        sampler=sampler,
        directions=directions,
        load_if_exists=True,
    )
    kill_point("study-created")
    if IDENTITY_ATTR not in optuna_study.user_attrs:  # new, or its set-up was cut short
        legacy = study_identity(optuna_study) or {}  # an older study's separate attributes
        with warnings.catch_warnings():  # experimental in Optuna; names the dashboard's axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna_study.set_metric_names(list(names))
        for design, params in seed_trials(study):  # again after a cut-short set-up: no repeats
            optuna_study.enqueue_trial(params, user_attrs={"seed": design}, skip_if_exists=True)
        kill_point("identity-half-written")
        identity = {**_identity(study, key, device), **legacy}
        optuna_study.set_user_attr(IDENTITY_ATTR, identity)  # one write: the set-up is complete
    _check_identity(optuna_study, study, url, key, rules=True)
    return optuna_study


def load_searched_study(
    study: StudyConfig, url: str, key: str | None = None, device: str | None = None
) -> optuna.Study:
    """Load (never create) the searched study of ``study`` from ``url`` and check it.

    The exit rules are not compared: every trial records its rule, so reading a study back
    does not depend on the study file's ``search`` section.

    Args:
        device: load the device search ``<study>@<device>`` instead.
    """
    name = search_study_name(study, device)
    hint = "exitnas search" + (f" --device {device}" if device else "")
    if not database_exists(url):
        raise ExitnasError(f"no study named {name!r} in {url}; run {hint}")
    try:
        optuna_study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise ExitnasError(f"no study named {name!r} in {url}; run {hint}") from None
    _check_identity(optuna_study, study, url, key, rules=False)
    return optuna_study


def database_exists(url: str) -> bool:
    """False for an SQLite URL whose file is missing (opening it would create it)."""
    return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file()


def study_names(url: str) -> list[str]:
    """Optuna studies in ``url`` (none when its SQLite file does not exist)."""
    return optuna.get_all_study_names(open_storage(url)) if database_exists(url) else []


def completed_trials(study: StudyConfig, url: str, device: str | None = None) -> int:
    """Completed trials of the study's search in ``url`` (0 when it was never searched)."""
    name = search_study_name(study, device)
    if name not in study_names(url):
        return 0
    loaded = optuna.load_study(study_name=name, storage=open_storage(url))
    return len(loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
