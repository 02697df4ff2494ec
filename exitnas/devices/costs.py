"""Milliseconds per stage of any sub-network of a study on one profiled device.

A device profile holds measured stages of some configurations; :class:`DeviceCosts` answers
for every configuration of the space: the measured median where that stage was timed at the
batch size asked for, else the prediction of a :class:`StageLatencyModel` fitted on the whole
profile, plus what the runtime spends around the stages (the profile's
:class:`~exitnas.devices.profile.RuntimeOverhead`: a fixed cost per image, a cost per stage,
and the learned policy's cost per exit decision). Expected latency of an exit rule is then
``sum_k fraction_k * cumsum(stage_ms)[k]``, like expected FLOPs: what ``predict`` takes per
image at that batch size.

Example:
    >>> costs = DeviceCosts(store.get_profile("quickstart", "laptop"))
    >>> ms, measured = costs.stage_ms(space, config)  # per image, batch size 1
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from exitnas.devices.errors import ProfileError
from exitnas.devices.latency import StageLatencyModel
from exitnas.devices.profile import DeviceProfile, RuntimeOverhead, stage_features
from exitnas.exits.rules import LEARNED
from exitnas.spaces import SearchSpace, StudyConfig, SubnetConfig

__all__ = [
    "DeviceCosts",
    "expected_ms",
    "load_device_costs",
    "unknown_device",
    "with_policy_ms",
]


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
        overhead = {o.batch_size: o for o in profile.overheads}.get(batch_size)
        self.overhead = overhead or RuntimeOverhead(batch_size, 0.0, 0.0, 0.0)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def stage_ms(self, space: SearchSpace, config: SubnetConfig) -> tuple[np.ndarray, np.ndarray]:
        """Milliseconds per image of every stage of ``config`` as ``predict`` runs it under a
        confidence rule, and which stages were measured.

        Each stage's time (measured, else predicted) plus the runtime's per-stage overhead;
        the first stage also carries its fixed per-image overhead (the profile's
        :class:`~exitnas.devices.profile.RuntimeOverhead` at this batch size; none in a
        profile older than it).

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
        ms = ms / self.batch_size + self.overhead.stage_ms
        ms[0] += self.overhead.fixed_ms
        self._cache[key] = (ms, measured)
        return self._cache[key]

    @property
    def policy_ms(self) -> float:
        """Extra ms per image of each exit decision the learned policy makes."""
        return self.overhead.policy_ms

    def rule_stage_ms(self, space: SearchSpace, config: SubnetConfig, rule: str) -> np.ndarray:
        """:meth:`stage_ms` under exit rule ``rule``: with the learned policy, every stage but
        the last also pays its decision (:attr:`policy_ms`)."""
        return with_policy_ms(self.stage_ms(space, config)[0], rule, self.policy_ms)


def with_policy_ms(stage_ms: np.ndarray, rule: str, policy_ms: float) -> np.ndarray:
    """``stage_ms`` plus ``policy_ms`` on every stage but the last when ``rule`` is learned."""
    ms = np.array(stage_ms, dtype=np.float64)
    if rule == LEARNED:
        ms[:-1] += policy_ms
    return ms


def expected_ms(stage_ms: ArrayLike, exit_fractions: ArrayLike) -> float:
    """Expected ms per image: ``sum_k fraction_k * cumsum(stage_ms)[k]``."""
    return float(np.dot(np.asarray(exit_fractions, float), np.cumsum(np.asarray(stage_ms, float))))


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
