"""The default: identity for equal depth, SKIP when the source depth is a multiple of the
target's, else uniform (and, where both models name layer types, each target layer kept on a
source layer of its own type: ``by_type`` in the package)."""

from __future__ import annotations

from .skip import build as build_skip
from .uniform import build as build_uniform
from .base import LayerMap

NAME = "auto"
HELP = "identity for equal depth, skip when the source depth is a multiple of the target's, else uniform; each target layer on a source layer of its own type where both models name layer types"


def build(source_layers: int, target_layers: int) -> LayerMap:
    if source_layers == target_layers:
        return LayerMap("identity", {i: (i,) for i in range(target_layers)})
    if source_layers % target_layers == 0:
        return build_skip(source_layers, target_layers)
    return build_uniform(source_layers, target_layers)
