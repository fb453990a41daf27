"""Which teacher (source) layers each student (target) layer takes its adapter from.

SKIP and AVG follow "Is Modularity Transferable?" (Klimaszewski et al., 2024): with a teacher of
L layers and a student of L/k, student layer i takes teacher layer i*k (SKIP), or the parameter
mean of teacher layers i*k .. i*k+k-1 (AVG). ``uniform`` spreads any Ls over Lt,
taking teacher layer floor(i * Ls / Lt), which is SKIP when Ls is a multiple of Lt.

Layer types: where both models name a type per layer (``config.layer_types``: sliding_attention,
full_attention ...; dense or moe layers in a model with experts), ``auto`` gives each target layer
the source layer of its own type nearest to the one above, when the source has one. A named
strategy or an explicit list is kept as asked; the map then lists the target layers that get an
adapter from a layer of another type, and the plan and the card show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LayerMapError

if TYPE_CHECKING:
    from .architectures import Dims

STRATEGIES = ("auto", "skip", "avg", "uniform")


@dataclass(frozen=True)
class LayerMap:
    strategy: str
    sources: dict[int, tuple[int, ...]]  # target layer -> source layers it draws from
    # the type of every source and target layer, when both models name them (else None)
    source_types: tuple[str, ...] | None = None
    target_types: tuple[str, ...] | None = None

    def rows(self) -> list[tuple[int, tuple[int, ...]]]:
        return sorted(self.sources.items())

    def mismatches(self) -> list[tuple[int, tuple[int, ...]]]:
        """(target layer, its source layers of another type), for each target layer that has any."""
        if self.source_types is None or self.target_types is None:
            return []
        out = []
        for target, sources in self.rows():
            other = tuple(s for s in sources if self.source_types[s] != self.target_types[target])
            if other:
                out.append((target, other))
        return out

    def warning(self) -> str | None:
        """One sentence naming every target layer whose adapter comes from a layer of another type."""
        mismatches = self.mismatches()
        if not mismatches:
            return None
        assert self.source_types is not None and self.target_types is not None
        pairs = "; ".join(f"{t} ({self.target_types[t]}) <- " + ", ".join(f"{s} ({self.source_types[s]})" for s in sources)
                          for t, sources in mismatches)
        return (f"{len(mismatches)} of {len(self.sources)} target layers get their adapter from a source layer of another "
                f"type: {pairs}")

    def summary(self) -> dict:
        """The map as --json, the plan table and the card show it; types only where both models name them."""
        rows = [{"target": t, "sources": list(s)} for t, s in self.rows()]
        out: dict = {"strategy": self.strategy, "rows": rows}
        if self.source_types is not None and self.target_types is not None:
            for row in rows:
                row["target_type"] = self.target_types[row["target"]]
                row["source_types"] = [self.source_types[s] for s in row["sources"]]
            out["type_mismatches"] = [{"target": t, "sources": list(s)} for t, s in self.mismatches()]
            out["warning"] = self.warning()
        return out


def comparable_types(source: Dims, target: Dims) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """Per-layer types of both models on the axes both name: attention kind (config.layer_types)
    and dense vs moe (models with experts). (None, None) when they share no axis."""
    axes = [(s, t) for s, t in ((source.layer_types, target.layer_types), (source.mlp_types, target.mlp_types)) if s and t]
    if not axes:
        return None, None
    return (tuple(" + ".join(kinds) for kinds in zip(*(s for s, _ in axes))),
            tuple(" + ".join(kinds) for kinds in zip(*(t for _, t in axes))))


def layer_map_for(spec: str, source: Dims, target: Dims) -> LayerMap:
    """``build_layer_map`` for two models, their layer types compared where both name them."""
    source_types, target_types = comparable_types(source, target)
    return build_layer_map(spec, source_layers=source.layers, target_layers=target.layers,
                           source_types=source_types, target_types=target_types)


def build_layer_map(spec: str, *, source_layers: int, target_layers: int,
                    source_types: tuple[str, ...] | None = None, target_types: tuple[str, ...] | None = None) -> LayerMap:
    """Build a layer map from a strategy name or an explicit ``src:tgt,...`` list; with the types of
    both models' layers, ``auto`` keeps each target layer on a source layer of its own type."""
    if source_types is not None and target_types is not None:
        if len(source_types) != source_layers or len(target_types) != target_layers:
            raise ValueError("one layer type per layer")
        chosen = _build(spec, source_layers, target_layers)
        if spec.strip().lower() == "auto":
            chosen = by_type(chosen, source_types, target_types)
        return LayerMap(chosen.strategy, chosen.sources, source_types, target_types)
    return _build(spec, source_layers, target_layers)


def by_type(layer_map: LayerMap, source_types: tuple[str, ...], target_types: tuple[str, ...]) -> LayerMap:
    """Each target layer moved to the source layer of its own type nearest to its current one
    (the higher on a tie); kept where the source has no layer of that type."""
    sources = {}
    for target, (current, *rest) in layer_map.rows():
        same = [s for s in range(len(source_types)) if source_types[s] == target_types[target]]
        if rest or source_types[current] == target_types[target] or not same:
            sources[target] = (current, *rest)
        else:
            # on a tie the higher: the source layers a target layer stands for start at its uniform choice
            sources[target] = (min(same, key=lambda s: (abs(s - current), -s)),)
    moved = sources != layer_map.sources
    return LayerMap(layer_map.strategy + (", by layer type" if moved else ""), sources)


def _build(spec: str, source_layers: int, target_layers: int) -> LayerMap:
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
