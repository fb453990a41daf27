"""An explicit list of ``source:target`` pairs, each target layer taking one source layer."""

from __future__ import annotations

from ..errors import LayerMapError
from .base import LayerMap

NAME = "explicit"
HELP = "source:target pairs such as '0:0,2:1,4:2'"


def matches(spec: str) -> bool:
    return ":" in spec


def build(spec: str, source_layers: int, target_layers: int) -> LayerMap:
    sources: dict[int, tuple[int, ...]] = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        try:
            src, tgt = (int(x) for x in pair.split(":"))
        except ValueError:
            raise LayerMapError(
                f"Cannot read {pair!r} in the layer map {spec!r}.", "Write pairs of integers, source:target, such as '0:0,2:1'."
            ) from None
        if not 0 <= src < source_layers:
            raise LayerMapError(
                f"Source layer {src} in the layer map is out of range: the source has layers 0..{source_layers - 1}.",
                "Pick source layers inside that range.",
            )
        if not 0 <= tgt < target_layers:
            raise LayerMapError(
                f"Target layer {tgt} in the layer map is out of range: the target has layers 0..{target_layers - 1}.",
                "Pick target layers inside that range.",
            )
        if tgt in sources:
            raise LayerMapError(
                f"Target layer {tgt} appears twice in the layer map {spec!r}.", "Give each target layer one source layer."
            )
        sources[tgt] = (src,)
    return LayerMap("explicit", sources)
