"""Which teacher (source) layers each student (target) layer takes its adapter from.

SKIP and AVG follow "Is Modularity Transferable?" (Klimaszewski et al., 2024): with a teacher of
L layers and a student of L/k, student layer i takes teacher layer i*k (SKIP), or the parameter
mean of teacher layers i*k .. i*k+k-1 (AVG). ``uniform`` spreads any Ls over Lt,
taking teacher layer floor(i * Lt / Ls), which is SKIP when Lt is a multiple of Ls.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LayerMapError

STRATEGIES = ("auto", "skip", "avg", "uniform")


@dataclass(frozen=True)
class LayerMap:
    strategy: str
    sources: dict[int, tuple[int, ...]]  # target layer -> source layers it draws from

    def rows(self) -> list[tuple[int, tuple[int, ...]]]:
        return sorted(self.sources.items())


def build_layer_map(spec: str, *, source_layers: int, target_layers: int) -> LayerMap:
    """Build a layer map from a strategy name or an explicit ``src:tgt,...`` list."""
    spec = spec.strip().lower()
    if spec == "auto":
        if source_layers == target_layers:
            return LayerMap("identity", {i: (i,) for i in range(target_layers)})
        if source_layers % target_layers == 0:
            return _skip(source_layers, target_layers)
        return _uniform(source_layers, target_layers)
    if spec == "skip":
        return _skip(source_layers, target_layers)
    if spec == "avg":
        k = _ratio(source_layers, target_layers, "avg")
        return LayerMap("avg", {i: tuple(range(i * k, i * k + k)) for i in range(target_layers)})
    if spec == "uniform":
        return _uniform(source_layers, target_layers)
    if ":" in spec:
        return _explicit(spec, source_layers, target_layers)
    raise LayerMapError(
        f"Unknown layer map {spec!r}.",
        f"Use one of {', '.join(STRATEGIES)}, or an explicit list of source:target pairs such as '0:0,2:1,4:2'.",
    )


def _ratio(source_layers: int, target_layers: int, name: str) -> int:
    if target_layers > source_layers or source_layers % target_layers:
        raise LayerMapError(
            f"Layer map {name!r} needs the source's layer count to be a multiple of the target's, "
            f"but the source has {source_layers} layers and the target {target_layers}.",
            "Use --layer-map uniform, or an explicit list such as '0:0,2:1'.",
        )
    return source_layers // target_layers


def _skip(source_layers: int, target_layers: int) -> LayerMap:
    k = _ratio(source_layers, target_layers, "skip")
    return LayerMap("skip", {i: (i * k,) for i in range(target_layers)})


def _uniform(source_layers: int, target_layers: int) -> LayerMap:
    return LayerMap("uniform", {i: (i * source_layers // target_layers,) for i in range(target_layers)})


def _explicit(spec: str, source_layers: int, target_layers: int) -> LayerMap:
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
