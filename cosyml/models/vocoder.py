"""The vocoder of a model directory: :func:`build_hift` picks CosyVoice2's :class:`~cosyml.models.hift.HiFT`
or CosyVoice3's :class:`~cosyml.models.hift_causal.CausalHiFT` from the yaml's class.

Kept apart from both so the import graph is a tree: ``hift_causal`` imports the configs of ``hift``,
and this module imports both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosyml.models.hift import CausalHiFTConfig, HiFT, HiFTConfig, hift_config_from_yaml
from cosyml.models.hift_causal import CausalHiFT
from cosyml.models.yaml_io import Tagged

__all__ = ["build_hift"]


def build_hift(config: Mapping[str, Any] | Tagged | HiFTConfig, path: str | Path = "model yaml") -> HiFT | CausalHiFT:
    """Construct a randomly initialised vocoder from a parsed model yaml (or a config).

    The yaml's class picks it: ``HiFTGenerator`` -> :class:`HiFT` (CosyVoice2), ``CausalHiFTGenerator``
    -> :class:`cosyml.models.hift_causal.CausalHiFT` (CosyVoice3). Load ``hift.pt`` afterwards with
    ``cosyml.models.modeldir.load_strict(model, path, part="hift")``.
    """
    cfg = config if isinstance(config, HiFTConfig) else hift_config_from_yaml(config, path)
    if isinstance(cfg, CausalHiFTConfig):
        return CausalHiFT(cfg)
    return HiFT(cfg)
