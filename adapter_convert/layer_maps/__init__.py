"""Which teacher (source) layers each student (target) layer takes its adapter from.

SKIP and AVG follow "Is Modularity Transferable?" (Klimaszewski et al., 2024): with a teacher of
L layers and a student of L/k, student layer i takes teacher layer i*k (SKIP), or the parameter
mean of teacher layers i*k .. i*k+k-1 (AVG). ``uniform`` spreads any Ls over Lt,
taking teacher layer floor(i * Ls / Lt), which is SKIP when Ls is a multiple of Lt.

Layer types: where both models name a type per layer (``config.layer_types``: sliding_attention,
full_attention ...; dense or moe layers in a model with experts; in a hybrid model, the roles
only some layers have), ``auto`` gives each target layer
the source layer of its own type nearest to the one above, when the source has one. A named
strategy or an explicit list is kept as asked; the map then lists the target layers that get an
adapter from a layer of another type, and the plan and the card show it.

Each strategy is one module here (``NAME``, ``HELP``, ``build``) listed in ``STRATEGIES``;
``explicit`` reads a list of pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LayerMapError
from . import auto, avg, explicit, skip, uniform
from .base import LayerMap

if TYPE_CHECKING:
    from ..architectures import Dims

# One file per strategy (NAME, HELP, build): --layer-map's choices and help read this registry.
STRATEGIES = {strategy.NAME: strategy for strategy in (auto, skip, avg, uniform)}


def comparable_types(source: Dims, target: Dims) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """Per-layer types of both models on the axes both name: attention kind (config.layer_types)
    and dense vs moe (models with experts), and in a hybrid model which partial roles a layer has
    (attention only in some layers). (None, None) when they share no axis."""
    axes = [(s, t) for s, t in ((source.layer_types, target.layer_types), (source.mlp_types, target.mlp_types),
                                (source.role_types, target.role_types)) if s and t]
    if not axes:
        return None, None
    return (tuple(" + ".join(kinds) for kinds in zip(*(s for s, _ in axes))),
            tuple(" + ".join(kinds) for kinds in zip(*(t for _, t in axes))))


def layer_map_for(spec: str, source: Dims, target: Dims) -> LayerMap:
    """``build_layer_map`` for two models, their layer types compared where both name them. Two
    models with the same layer stacks (encoder, decoder) get one map per stack, built from the same
    ``spec``: encoder layers map onto encoder layers, decoder layers onto decoder layers."""
    if source.stacks and [name for name, _ in source.stacks] == [name for name, _ in target.stacks]:
        return LayerMap.per_stack(tuple((name, _stack_map(spec, name, dims, target.stack(name))) for name, dims in source.stacks))
    source_types, target_types = comparable_types(source, target)
    return build_layer_map(spec, source_layers=source.layers, target_layers=target.layers,
                           source_types=source_types, target_types=target_types)


def _stack_map(spec: str, name: str, source: Dims, target: Dims) -> LayerMap:
    """One stack's map; its errors name the stack (the same spec is applied to every stack)."""
    try:
        return layer_map_for(spec, source, target)
    except LayerMapError as err:
        raise LayerMapError(f"In the {name} stack ({source.layers} -> {target.layers} layers): {err.problem}",
                            f"{err.fix} An explicit layer map applies to every stack, so it must fit each of them."
                            if err.fix else None) from None


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
    if spec in STRATEGIES:
        return STRATEGIES[spec].build(source_layers, target_layers)
    if explicit.matches(spec):
        return explicit.build(spec, source_layers, target_layers)
    raise LayerMapError(
        f"Unknown layer map {spec!r}.",
        f"Use one of {', '.join(STRATEGIES)}, or an explicit list of source:target pairs such as '0:0,2:1,4:2'.",
    )
