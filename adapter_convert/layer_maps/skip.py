"""SKIP (Klimaszewski et al., 2024): target layer i takes source layer i*k."""

from __future__ import annotations

from .base import LayerMap, ratio

NAME = "skip"
HELP = "target layer i takes source layer i*k (source depth k times the target's)"


def build(source_layers: int, target_layers: int) -> LayerMap:
    k = ratio(source_layers, target_layers, NAME)
    return LayerMap(NAME, {i: (i * k,) for i in range(target_layers)})
