"""Milliseconds per stage of any sub-network of a study on one profiled device.

A device profile holds measured stages of some configurations; :class:`DeviceCosts` answers
for every configuration of the space: the measured median where that stage was timed at the
batch size asked for, else the prediction of a :class:`StageLatencyModel` fitted on the whole
profile. Expected latency of an exit rule is then ``sum_k fraction_k * cumsum(stage_ms)[k]``,
like expected FLOPs.

Example:
    >>> costs = DeviceCosts(store.get_profile("quickstart", "laptop"))
    >>> ms, measured = costs.stage_ms(space, config)  # per image, batch size 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike

from exitnas.policies.latency import StageLatencyModel
from exitnas.policies.profile import DeviceProfile, ProfileError, stage_features
from exitnas.search.export import ParetoPoint
from exitnas.spaces import SearchSpace, StudyConfig, SubnetConfig

__all__ = ["DeviceCosts", "expected_ms", "load_device_costs", "unknown_device", "with_latency"]


class DeviceCosts:
    """Per-stage latency of sub-networks on the device of ``profile``.

    Args:
        profile: the device's measured stages.
        batch_size: images run together; latencies are returned per image (batch latency /
            batch size). 1 (the default) is the latency one request sees.

    Attributes:
        model: the :class:`StageLatencyModel` fitted on every timing of the profile.
    """

    def __init__(self, profile: DeviceProfile, batch_size: int = 1):
        if not profile.timings:
            raise ProfileError(f"profile of device {profile.device!r} holds no timings")
        self.profile, self.batch_size = profile, batch_size
        self.device = profile.device
        self._measured = {
            (t.config_key, t.stage): t.median_ms
            for t in profile.timings
            if t.batch_size == batch_size
        }
        self.model = StageLatencyModel().fit(profile.timings)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def stage_ms(self, space: SearchSpace, config: SubnetConfig) -> tuple[np.ndarray, np.ndarray]:
        """Milliseconds per image of every stage of ``config``, and which ones were measured.

        Returns:
            ``(stage_ms, measured)``: ``(E,)`` float and ``(E,)`` bool arrays.
        """
        key = config.key()
        if key in self._cache:
            return self._cache[key]
        features = stage_features(space, config, self.batch_size)
        predicted = self.model.predict(features)
        measured = np.array([(key, f.stage) in self._measured for f in features])
        pairs = zip(features, predicted, strict=True)
        ms = np.array([self._measured.get((key, f.stage), p) for f, p in pairs])
        self._cache[key] = (ms / self.batch_size, measured)
        return self._cache[key]


def expected_ms(stage_ms: ArrayLike, exit_fractions: ArrayLike) -> float:
    """Expected ms per image: ``sum_k fraction_k * cumsum(stage_ms)[k]``."""
    return float(np.dot(np.asarray(exit_fractions, float), np.cumsum(np.asarray(stage_ms, float))))


def with_latency(
    points: Sequence[ParetoPoint], costs: DeviceCosts, space: SearchSpace
) -> list[ParetoPoint]:
    """``points`` with ``latency_ms`` set from ``costs`` (the device's current profile).

    A device search's trials carry the latency of the profile at search time; this recomputes
    it, so that the front JSON, the printed table and a budget answer agree on one profile.
    """
    return [
        replace(p, latency_ms=expected_ms(costs.stage_ms(space, p.config)[0], p.exit_fractions))
        for p in points
    ]


def unknown_device(store, study_name: str, device: str, url: str) -> ProfileError:
    """The error for a device with no stored profile, naming the profiled ones."""
    devices = store.list_devices(study_name)
    known = ", ".join(repr(d) for d in devices) if devices else "none yet (run exitnas profile)"
    return ProfileError(
        f"no profile of device {device!r} for study {study_name!r} in {url}; profiled: {known}"
    )


def load_device_costs(
    store, study: StudyConfig, device: str, url: str, batch_size: int = 1
) -> DeviceCosts:
    """The stored profile of ``device`` for ``study``, as :class:`DeviceCosts`.

    Raises:
        ProfileError: no such device, or its profile was measured for another study file.
    """
    profile = store.get_profile(study.name, device)
    if profile is None:
        raise unknown_device(store, study.name, device, url)
    if profile.study_key != study.key():
        raise ProfileError(
            f"profile of device {device!r} was measured for another study file (key "
            f"{profile.study_key}, this one's is {study.key()}); profile it again with --replace"
        )
    return DeviceCosts(profile, batch_size)
