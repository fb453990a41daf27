"""How much memory an alignment needs, and how its capture points are grouped into calibration
passes so that it fits a budget. Pure functions of shapes: the dry run prints the same numbers
the run then follows.

Each capture point (a layer's module input or output, or the last hidden state) costs, while its
statistics are collected, ``e (d_full^2 + d_s d_t)`` bytes (``e`` = 8 for float64, 4 for float32;
``d_full`` the side whose Gram the fit solves against: the student's for inputs, the teacher's for
lstsq outputs, none for correlation outputs) plus float64 vectors. Fitting it adds, one point at a
time, the largest of: the float64 correlation matrix the assignment reads (``8 d_s d_t``), the
float64 Cholesky factor and its right-hand-side blocks (``8 d_x^2 + 40 d_x BLOCK``), and for the
correlation method a dense selection (``8 d_s d_t``). The head's map (``8 d_s d_t``) and the folded
adapter stay until the end.

A pass runs the calibration text through both models once and collects a group of points; after
it, each point is fitted, folded into the adapter and freed. Points are grouped in order (layer by
layer) while the pass fits the budget. Statistics are float64 when everything fits in one pass
(small models: one pass, as always); otherwise float32, with the rows shifted by a reference mean
before they are multiplied (see stats.py; the error against float64 is measured in
docs/benchmarks/alignment_memory.md) and every solve in float64.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..architectures import Dims, roles
from ..summary import ResourcePrediction
from .capture import LAST_HIDDEN, CapturePoint, capture_points
from .lstsq import BLOCK

GiB = 2**30
DEFAULT_BUDGET = 4 * GiB
BUDGET_ENV = "ADAPTER_CONVERT_ALIGN_BUDGET"  # e.g. 4GiB, 512MiB, or bytes
BATCH_TOKENS = 512  # padded tokens of one calibration batch (8 texts of calibration text)
VECTORS = 3  # float64 vectors per side kept with the statistics: shift, sum, diagonal


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 4GiB, 512MiB, 1000000)")
    unit = (match.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit])


def budget_bytes(asked: str | None = None) -> int:
    """The alignment's memory budget: ``--memory-budget`` (``asked``), else
    ``$ADAPTER_CONVERT_ALIGN_BUDGET``, else 4 GiB."""
    value = asked or os.environ.get(BUDGET_ENV)
    return parse_bytes(value) if value else DEFAULT_BUDGET


@dataclass(frozen=True)
class PointShape:
    point: CapturePoint
    kind: str  # in | out | head
    d_s: int
    d_t: int

    def full(self, method: str) -> tuple[str, ...]:
        """Which Gram the fit needs whole: inputs and the head solve against the student's (the
        correlation method too, for the linear R^2 it reports), lstsq outputs against the teacher's."""
        if self.kind in ("in", "head"):
            return ("s",)
        return ("t",) if method == "lstsq" else ()

    def stats_bytes(self, method: str, element: int) -> int:
        d_full = sum({"s": self.d_s, "t": self.d_t}[side] ** 2 for side in self.full(method))
        return element * (d_full + self.d_s * self.d_t) + 8 * VECTORS * (self.d_s + self.d_t)

    def fit_bytes(self, method: str) -> int:
        """What fitting adds, at its peak, beyond the point's statistics."""
        cross = 8 * self.d_s * self.d_t
        solves = [8 * d * d + 40 * d * BLOCK for d in ([self.d_s] if self.kind != "out" else [self.d_t] if method == "lstsq" else [])]
        extra = max([cross, *solves])  # assignment matrix, selection, factor: one after the other
        return extra + (cross if self.kind == "head" else 0)  # the head's map is kept

    def kept_bytes(self, rank: int) -> int:
        """The folded adapter tensors this point leaves (float32 upper estimate), and the head's map."""
        if self.kind == "head":
            return 8 * self.d_s * self.d_t
        return 4 * rank * self.d_s


def point_shapes(role_names: list[str], layer_pairs: list[tuple[int, int]], source: Dims, target: Dims) -> list[PointShape]:
    """Every capture point of an alignment, in capture order, with its student and teacher widths."""
    shapes = []
    for p in capture_points(role_names, layer_pairs, head=True):
        if p.point == LAST_HIDDEN:
            shapes.append(PointShape(p, "head", target.hidden, source.hidden))
            continue
        name, _, side = p.point.rpartition(":")
        if side == "in":  # "attn:hidden:in": the space is named in the point
            space = name.split(":")[1]
        else:  # "attn.q:out"
            space = roles().plain[name].out_space
        shapes.append(PointShape(p, "in" if side == "in" else "out", target.space(space), source.space(space)))
    return shapes


@dataclass(frozen=True)
class Schedule:
    passes: list[list[PointShape]]
    element: int  # bytes per statistics element: 8 (float64) or 4 (float32)
    peak: int  # bytes: the largest pass, statistics + fit + kept results + one batch of activations
    budget: int

    @property
    def dtype_name(self) -> str:
        return "float64" if self.element == 8 else "float32"


def _pass_bytes(group: list[PointShape], method: str, element: int, kept: int, activation_bytes: int) -> int:
    stats = sum(p.stats_bytes(method, element) for p in group)
    fit = max(p.fit_bytes(method) for p in group)
    # one batch of every point's activations held by the hooks, and one point's rows converted at a time
    batch = BATCH_TOKENS * (sum(p.d_s + p.d_t for p in group) * activation_bytes + max(p.d_s + p.d_t for p in group) * (8 + element))
    return kept + stats + fit + batch


def schedule(shapes: list[PointShape], *, method: str, budget: int, rank: int, activation_bytes: int = 4,
             element: int | None = None) -> Schedule:
    """Group the points into passes that fit ``budget``; ``element`` forces the statistics' dtype."""
    kept = sum(p.kept_bytes(rank) for p in shapes)
    if element is None:
        one_pass = _pass_bytes(shapes, method, 8, kept, activation_bytes)
        element = 8 if one_pass <= budget else 4
    passes: list[list[PointShape]] = []
    for shape in shapes:
        if passes and _pass_bytes(passes[-1] + [shape], method, element, kept, activation_bytes) <= budget:
            passes[-1].append(shape)
        else:
            passes.append([shape])  # a point that alone exceeds the budget still gets its own pass
    peak = max(_pass_bytes(group, method, element, kept, activation_bytes) for group in passes)
    return Schedule(passes, element, peak, budget)


def model_bytes(dims: Dims, element: int, *, tied: bool = True) -> int:
    """Weights of a decoder or encoder with these sizes (norms and biases left out)."""
    hidden, q, kv, inter = dims.hidden, dims.space("q"), dims.space("kv"), dims.intermediate
    per_layer = 2 * hidden * q + 2 * hidden * kv + 3 * hidden * inter
    return element * (dims.vocab * hidden * (1 if tied else 2) + dims.layers * per_layer)


def forward_bytes(dims: Dims, activation_bytes: int) -> int:
    """A no-grad forward of one calibration batch: a few hidden-wide and intermediate-wide tensors."""
    return BATCH_TOKENS * (6 * dims.hidden + 3 * dims.intermediate) * activation_bytes


def predict(source: Dims, target: Dims, role_names: list[str], layer_pairs: list[tuple[int, int]], *, method: str,
            rank: int, budget: int = DEFAULT_BUDGET, element: int | None = None, model_element: tuple[int, int] = (4, 4),
            tied: tuple[bool, bool] = (True, True)) -> ResourcePrediction:
    """The prediction ``convert --dry-run --json`` prints as ``resources``: ``alignment_bytes`` (the
    largest pass: statistics, fit, kept results, one batch of captured activations), ``peak_bytes``
    (that plus both models' weights and a forward's activations), ``passes``."""
    shapes = point_shapes(role_names, layer_pairs, source, target)
    plan = schedule(shapes, method=method, budget=budget, rank=rank, activation_bytes=max(model_element), element=element)
    models = model_bytes(source, model_element[0], tied=tied[0]) + model_bytes(target, model_element[1], tied=tied[1])
    forward = max(forward_bytes(source, model_element[0]), forward_bytes(target, model_element[1]))
    return ResourcePrediction(alignment_bytes=plan.peak, peak_bytes=plan.peak + models + forward, passes=len(plan.passes),
                              statistics_dtype=plan.dtype_name, budget_bytes=budget, capture_points=len(shapes),
                              model_bytes=models, within_budget=plan.peak <= budget)


def _dtype_bytes(config, asked: str | None) -> int:
    name = asked or str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or "float32")
    return 2 if any(half in name for half in ("float16", "bfloat16")) else 8 if "float64" in name else 4


def for_plan(plan, *, source_config, target_config, adapter_tensors, dtype: str | None, memory_budget: str | None) -> ResourcePrediction | None:
    """``resources`` for a conversion plan: None unless it fits maps (a copy or a fresh start runs no calibration pass)."""
    from ..alignment_methods import METHODS

    if plan.alignment.method not in METHODS:
        return None
    ranks = [t.shape[0] for key, t in adapter_tensors.items() if "lora_A" in key and t.ndim == 2] or [1]
    return predict(plan.source_dims, plan.target_dims, list(plan.aligned_roles),
                   [(t, s[0]) for t, s in plan.layer_map.rows()], method=plan.alignment.method, rank=max(ranks),
                   budget=budget_bytes(memory_budget),
                   model_element=(_dtype_bytes(source_config, dtype), _dtype_bytes(target_config, dtype)),
                   tied=(bool(getattr(source_config, "tie_word_embeddings", True)), bool(getattr(target_config, "tie_word_embeddings", True))))
