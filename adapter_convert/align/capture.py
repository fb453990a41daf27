"""Run source and target base models over paired calibration tokens and accumulate, per mapped
layer and adapted module, the statistics of their inputs and outputs (and of the last hidden
state, which task heads read). Activations live one batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..architectures import Architecture, Dims, part_sizes, roles
from ..calibration import PairedBatch
from ..transform import fused_rows
from .stats import PairStats

LAST_HIDDEN = "last_hidden"


def input_point(role: str) -> str:
    """Roles reading the same tensor share one capture point (q, k and v read the attention input)."""
    spec = roles().plain[role]
    return f"{role.split('.')[0]}:{spec.in_space}:in"


def output_point(role: str) -> str:
    return f"{role}:out"


@dataclass(frozen=True)
class CapturePoint:
    point: str  # e.g. "attn:hidden:in", "attn.q:out", LAST_HIDDEN
    teacher_layer: int | None
    student_layer: int | None


def capture_points(role_names: list[str], layer_pairs: list[tuple[int, int]], *, head: bool) -> list[CapturePoint]:
    points = []
    for target_layer, source_layer in layer_pairs:
        for name in dict.fromkeys(p for role in role_names for p in (input_point(role), output_point(role))):
            points.append(CapturePoint(name, source_layer, target_layer))
    if head:
        points.append(CapturePoint(LAST_HIDDEN, None, None))
    return points


class _StopForward(Exception):
    """Raised once the last layer a pass records has run: the layers above it would be computed
    for nothing (the sequential-calibration trick of GPTQ-style quantizers)."""


class _Recorder:
    """Forward hooks that keep one batch of module inputs and outputs; with ``stop_early``, a
    hook on the last wanted layer ends the forward there (its modules' hooks have run by then).
    A part of a fused module (q of qkv) reads the module's input, and its rows of the output
    (``fused_rows``, from the model's ``dims``)."""

    def __init__(self, model, arch: Architecture, wanted: dict[int, set[str]], *, dims: Dims | None = None, stop_early: bool = False):
        self.seen: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = []
        layers = model.get_submodule(arch.layers)
        if stop_early and wanted:
            self.handles.append(layers[max(wanted)].register_forward_hook(self._stop))
        for layer, points in wanted.items():
            for role, path in arch.modules.items():
                parts = roles().parts(role)
                if not any(p in roles().plain and {input_point(p), output_point(p)} & points for p in parts):
                    continue
                module = layers[layer].get_submodule(path)
                rows = [None] if len(parts) == 1 else fused_rows(arch.layout(role), part_sizes(role, dims), dims.heads)
                for part, part_rows in zip(parts, rows):
                    if input_point(part) in points:
                        self.handles.append(module.register_forward_hook(self._hook(layer, input_point(part), use_input=True)))
                    if output_point(part) in points:
                        self.handles.append(module.register_forward_hook(self._hook(layer, output_point(part), use_input=False,
                                                                                    rows=part_rows)))

    @staticmethod
    def _stop(_module, _inputs, _output):
        raise _StopForward

    def run(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """One forward; its last hidden state, or None when it stopped after the last wanted layer."""
        try:
            return model(**inputs).last_hidden_state
        except _StopForward:
            return None

    def _hook(self, layer: int, point: str, *, use_input: bool, rows: torch.Tensor | None = None):
        def hook(_module, inputs, output):
            value = inputs[0] if use_input else output
            if rows is not None:
                value = value.index_select(-1, rows.to(value.device))
            self.seen.setdefault((layer, point), value.detach())

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def collect_statistics(
    teacher, student, teacher_arch: Architecture, student_arch: Architecture, points: list[CapturePoint],
    batches: Iterable[PairedBatch], on_batch: Callable[[int], None] = lambda tokens: None, *,
    dtype: torch.dtype = torch.float64, full: Callable[[CapturePoint], tuple[str, ...]] = lambda point: ("s", "t"),
    dims: tuple[Dims, Dims] | None = None,
) -> dict[tuple[int | None, str], PairStats]:
    """Statistics keyed by (student layer, point); the models are bare backbones (AutoModel).
    One pass over ``batches``: only the given points are recorded (a pass of a larger schedule);
    ``dtype`` and ``full`` (which Grams each point keeps whole) shape their ``PairStats``.
    ``dims`` (teacher's, student's): where a point is a part of a fused module, its rows."""
    teacher_wanted: dict[int, set[str]] = {}
    student_wanted: dict[int, set[str]] = {}
    for p in points:
        if p.teacher_layer is not None:
            teacher_wanted.setdefault(p.teacher_layer, set()).add(p.point)
            student_wanted.setdefault(p.student_layer, set()).add(p.point)
    stats: dict[tuple[int | None, str], PairStats] = {}
    # a pass without the last hidden state needs no layer above its last wanted one
    stop_early = all(p.point != LAST_HIDDEN for p in points)
    teacher_dims, student_dims = dims or (None, None)
    teacher_rec = _Recorder(teacher, teacher_arch, teacher_wanted, dims=teacher_dims, stop_early=stop_early)
    student_rec = _Recorder(student, student_arch, student_wanted, dims=student_dims, stop_early=stop_early)
    try:
        with torch.no_grad():
            for batch in batches:
                teacher_rec.seen.clear()
                student_rec.seen.clear()
                teacher_out = teacher_rec.run(teacher, on_device(batch.teacher_inputs, teacher))
                student_out = student_rec.run(student, on_device(batch.student_inputs, student))
                for p in points:
                    if p.point == LAST_HIDDEN:
                        t, s = teacher_out, student_out
                    else:
                        t, s = teacher_rec.seen[(p.teacher_layer, p.point)], student_rec.seen[(p.student_layer, p.point)]
                    x_t, x_s = t[index_on(batch.teacher_index, t)], s[index_on(batch.student_index, s)]
                    key = (p.student_layer, p.point)
                    if key not in stats:
                        stats[key] = PairStats(x_s.shape[-1], x_t.shape[-1], dtype=dtype, full=full(p), device=x_s.device)
                    stats[key].update(x_s, x_t)
                on_batch(batch.tokens)
    finally:
        teacher_rec.close()
        student_rec.close()
    return stats


def on_device(inputs: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Token ids and masks where the model's first layer is (accelerate's device map included)."""
    return {key: value.to(model.device) for key, value in inputs.items()}


def index_on(index: tuple[torch.Tensor, torch.Tensor], tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(i.to(tensor.device) for i in index)
