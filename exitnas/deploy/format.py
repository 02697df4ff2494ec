"""The one definition of a bundle's on-disk format, shared by the writer and the loader.

A *bundle* is one folder that ``exitnas.load`` runs on its own:

- ``config.json``: the search space, sub-network config, exit rule, normalisation, the point's
  validation accuracy, expected MFLOPs, stage FLOPs and exit fractions;
- ``weights.safetensors``: the extracted sub-network (just the parts its config uses);
- ``policy.skops``: the learned exit policy, only when the rule is ``learned`` (skops, no
  pickle);
- ``manifest.json``: sha256 and size of every other file.
"""

from __future__ import annotations

__all__ = ["BUNDLE_FILES", "BUNDLE_FORMAT", "POLICY_FILE"]

BUNDLE_FORMAT = 1  # version of config.json and manifest.json; the loader reads this one only
BUNDLE_FILES = ("config.json", "weights.safetensors")  # what manifest.json always lists
POLICY_FILE = "policy.skops"  # listed too when the exit rule is the learned policy
