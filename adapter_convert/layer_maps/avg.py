"""AVG (Klimaszewski et al., 2024): target layer i takes the parameter mean of source layers i*k .. i*k+k-1."""

from __future__ import annotations

from .base import LayerMap, ratio

NAME = "avg"
HELP = "target layer i takes the mean of source layers i*k .. i*k+k-1"


def build(source_layers: int, target_layers: int) -> LayerMap:
    k = ratio(source_layers, target_layers, NAME)
    return LayerMap(NAME, {i: tuple(range(i * k, i * k + k)) for i in range(target_layers)})
