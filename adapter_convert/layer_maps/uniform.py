"""Any depths: target layer i takes source layer floor(i * Ls / Lt) (SKIP when Ls is a multiple of Lt)."""

from __future__ import annotations

from .base import LayerMap

NAME = "uniform"
HELP = "target layer i takes source layer floor(i * Ls / Lt), for any two depths"


def build(source_layers: int, target_layers: int) -> LayerMap:
    return LayerMap(NAME, {i: (i * source_layers // target_layers,) for i in range(target_layers)})
