"""The layer map value every strategy builds, and what strategies share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import LayerMapError


@dataclass(frozen=True)
class LayerMap:
    strategy: str
    sources: dict[int, tuple[int, ...]]  # target layer -> source layers it draws from
    # the type of every source and target layer, when both models name them (else None)
    source_types: tuple[str, ...] | None = None
    target_types: tuple[str, ...] | None = None
    # a model with several layer stacks (encoder, decoder): one map per stack, each applied to its
    # own layers; ``sources`` is then empty
    stacks: tuple[tuple[str, LayerMap], ...] = ()

    @classmethod
    def per_stack(cls, maps: tuple[tuple[str, LayerMap], ...]) -> LayerMap:
        strategies = list(dict.fromkeys(m.strategy for _, m in maps))
        strategy = strategies[0] if len(strategies) == 1 else "; ".join(f"{name}: {m.strategy}" for name, m in maps)
        return cls(strategy, {}, stacks=maps)

    def check_covers(self, adapted: Sequence[int], stacks: Mapping[str, Sequence[int]] | None = None) -> None:
        """Raise unless the map takes at least one of the ``adapted`` source layers (those the
        adapter trains; ``stacks``: each stack's, for a map per stack), and, if explicit, only
        those: otherwise the output would hold no adapter where the user asked for one."""
        for name, stack_map in self.stacks:
            if stacks and name in stacks:
                stack_map.check_covers(stacks[name])
        if not adapted:
            return  # embeddings or heads only
        mapped = sorted({s for sources in self.sources.values() for s in sources})
        bare = [s for s in mapped if s not in adapted]
        if (self.strategy == "explicit" and bare) or not set(mapped) & set(adapted):
            raise LayerMapError(
                f"The layer map takes source layer(s) {', '.join(map(str, bare))}, which carry no adapter; "
                f"the adapter is trained on source layers {', '.join(map(str, adapted))}.",
                "Map target layers onto those source layers, e.g. "
                + repr(",".join(f"{s}:{t}" for t, s in enumerate(adapted[: len(self.sources) or 1]))) + ".",
            )

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
        if self.stacks:
            warnings = [f"{name}: {w}" for name, m in self.stacks if (w := m.warning())]
            return "; ".join(warnings) or None
        mismatches = self.mismatches()
        if not mismatches:
            return None
        assert self.source_types is not None and self.target_types is not None
        pairs = "; ".join(f"{t} ({self.target_types[t]}) <- " + ", ".join(f"{s} ({self.source_types[s]})" for s in sources)
                          for t, sources in mismatches)
        return (f"{len(mismatches)} of {len(self.sources)} target layers get their adapter from a source layer of another "
                f"type: {pairs}")

    def summary(self) -> dict:
        """The map as --json, the plan table and the card show it; types only where both models name them.
        With several layer stacks, each row names its stack."""
        if self.stacks:
            stacks = {name: m.summary() for name, m in self.stacks}
            rows = [{"stack": name} | row for name, s in stacks.items() for row in s["rows"]]
            out = {"strategy": self.strategy, "rows": rows, "stacks": {name: s["strategy"] for name, s in stacks.items()}}
            if any("warning" in s for s in stacks.values()):
                out["type_mismatches"] = [{"stack": name} | row for name, s in stacks.items() for row in s.get("type_mismatches", [])]
                out["warning"] = self.warning()
            return out
        rows = [{"target": t, "sources": list(s)} for t, s in self.rows()]
        out: dict = {"strategy": self.strategy, "rows": rows}
        if self.source_types is not None and self.target_types is not None:
            for row in rows:
                row["target_type"] = self.target_types[row["target"]]
                row["source_types"] = [self.source_types[s] for s in row["sources"]]
            out["type_mismatches"] = [{"target": t, "sources": list(s)} for t, s in self.mismatches()]
            out["warning"] = self.warning()
        return out


def ratio(source_layers: int, target_layers: int, name: str) -> int:
    """k for the paper's strategies: the source depth must be k times the target's."""
    if target_layers > source_layers or source_layers % target_layers:
        raise LayerMapError(
            f"Layer map {name!r} needs the source's layer count to be a multiple of the target's, "
            f"but the source has {source_layers} layers and the target {target_layers}.",
            "Use --layer-map uniform, or an explicit list such as '0:0,2:1'.",
        )
    return source_layers // target_layers
