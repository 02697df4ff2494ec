"""Sub-network configs: one choice for every dimension of a search space.

A :class:`SubnetConfig` is a cascade of branches (RAViT); each branch runs the shared backbone
over one token grid (``resolution / patch_size`` tokens a side), optionally keeps only the
attentive tokens (EViT), optionally re-splits only the informative patches of the branch before
it (CF-ViT), and leaves through one or more exits, each with its own head type (Multi-Exit ViT).
Configs are frozen, hashable and validated on construction; :meth:`SubnetConfig.key` is a
stable hash used as a cache and database key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from exitnas.errors import ConfigError
from exitnas.spaces._parse import from_dict, to_dict

__all__ = ["HEAD_TYPES", "BranchConfig", "ExitConfig", "SubnetConfig"]

# The seven exit heads of Multi-Exit ViT plus the linear baseline.
HEAD_TYPES = ("linear", "mlp", "cnn_ignore", "cnn_add", "cnn_project", "vit", "resmlp", "mixer")


@dataclass(frozen=True)
class ExitConfig:
    """One exit: after backbone block ``layer`` (1-based) through a head of type ``head``."""

    layer: int  # number of shared blocks run before this exit, 1..depth
    head: str  # one of HEAD_TYPES

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ConfigError(f"layer: {self.layer} must be at least 1")
        if self.head not in HEAD_TYPES:
            raise ConfigError(f"head: {self.head!r} is not allowed; allowed values: {HEAD_TYPES}")


@dataclass(frozen=True)
class BranchConfig:
    """One branch of the cascade."""

    resolution: int  # input images are resized to resolution x resolution pixels
    patch_size: int  # square patches; must divide the resolution
    exits: tuple[ExitConfig, ...]  # increasing layers; the branch runs up to the last one
    keep_rate: float = 1.0  # fraction of patch tokens kept at the space's keep layers (EViT)
    # CF-ViT coarse-to-fine: re-split only this fraction of the previous branch's patches (the
    # most attended ones) at this branch's finer grid; None runs the full grid.
    refine_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.resolution < 1 or self.patch_size < 1:
            raise ConfigError(f"resolution/patch_size: must be positive, got {self}")
        if self.resolution % self.patch_size:
            divisors = [p for p in range(1, self.resolution + 1) if self.resolution % p == 0]
            raise ConfigError(
                f"patch_size: {self.patch_size} does not divide resolution {self.resolution}; "
                f"allowed patch sizes for this resolution: {divisors}"
            )
        if not self.exits:
            raise ConfigError("exits: a branch needs at least one exit")
        layers = [e.layer for e in self.exits]
        if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
            raise ConfigError(f"exits: layers must be strictly increasing, got {layers}")
        if not 0.0 < self.keep_rate <= 1.0:
            raise ConfigError(f"keep_rate: {self.keep_rate} must be in (0, 1]")
        if self.refine_fraction is not None and not 0.0 < self.refine_fraction <= 1.0:
            raise ConfigError(f"refine_fraction: {self.refine_fraction} must be in (0, 1] or null")

    @property
    def grid(self) -> int:
        """Tokens per side of this branch's full grid."""
        return self.resolution // self.patch_size

    @property
    def depth(self) -> int:
        """Number of shared blocks this branch runs."""
        return self.exits[-1].layer


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-network of the supernet: a cascade of 1 to 3 branches and their exits."""

    branches: tuple[BranchConfig, ...]
    # RAViT / CF-ViT reuse between consecutive branches: class token, prediction and (for
    # coarse-to-fine branches) patch features of branch k feed branch k+1.
    reuse: bool = True

    def __post_init__(self) -> None:
        if not 1 <= len(self.branches) <= 3:
            raise ConfigError(f"branches: 1 to 3 branches allowed, got {len(self.branches)}")
        for i, (prev, cur) in enumerate(
            zip(self.branches, self.branches[1:], strict=False), start=1
        ):
            if cur.resolution < prev.resolution or cur.grid <= prev.grid:
                raise ConfigError(
                    f"branches[{i}]: resolutions must not decrease and token grids must grow "
                    f"from branch to branch; got {prev.resolution}px/{prev.patch_size} "
                    f"({prev.grid}x{prev.grid}) then {cur.resolution}px/{cur.patch_size} "
                    f"({cur.grid}x{cur.grid})"
                )
            if cur.refine_fraction is not None and cur.grid % prev.grid:
                raise ConfigError(
                    f"branches[{i}].refine_fraction: coarse-to-fine needs a grid that is a "
                    f"multiple of the previous one; {cur.grid} is not a multiple of {prev.grid}"
                )
        if self.branches[0].refine_fraction is not None:
            raise ConfigError("branches[0].refine_fraction: the first branch has nothing to refine")

    @property
    def exits(self) -> tuple[tuple[int, ExitConfig], ...]:
        """Every exit in cascade order, as ``(branch_index, exit)`` pairs."""
        return tuple((b, e) for b, branch in enumerate(self.branches) for e in branch.exits)

    @property
    def num_exits(self) -> int:
        return sum(len(branch.exits) for branch in self.branches)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> SubnetConfig:
        return from_dict(cls, data, where)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        return cls.from_dict(json.loads(text))

    def key(self) -> str:
        """Stable 16-hex-digit hash of this config (cache and database key)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
