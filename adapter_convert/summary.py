"""The summary of a conversion: one typed value, read by the plan and alignment tables, the model
card and ``--json``.

``ConversionSummary.to_json()`` is its one serialization (the ``convert --json`` schema in
docs/ci.md): every field becomes a key of the same name, always present; parts not known yet are
null. A dry run and a real run print the same keys: the alignment's run-time fields (device,
calibration, fits, agreement, distillation) are null in a dry run and in a direct mapping.

Pure values: nothing here reads files, models or the Hub.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# the version of the --json schemas (convert, inspect) documented in docs/ci.md: a field a
# pipeline may rely on is renamed or removed only with a new version; fields may be added
SCHEMA_VERSION = 1


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: summaries by their ``to_json``, tuples as lists."""
    if isinstance(value, _Serialized):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


class _Serialized:
    def to_json(self) -> dict:
        """Every field under its own name, in field order; nested summaries serialized alike."""
        return {field.name: plain(getattr(self, field.name)) for field in dataclasses.fields(self)}  # type: ignore[arg-type]


# ---- what was converted ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AdapterSummary(_Serialized):
    id: str
    revision: str | None  # commit sha; None for a local folder
    bytes: int  # the adapter's tensor bytes
    url: str | None = None  # its Hub page at that commit; None for a local folder
    license: str | None = None  # from its model card's metadata; None when it states none


@dataclass(frozen=True, kw_only=True)
class ArchitectureSummary(_Serialized):
    """The architecture data used for a base (derived from the model, plus a data file where one exists)."""

    origin: str
    layers: str  # the path of the layer list, e.g. "model.layers"
    modules: dict[str, str]  # role -> module name
    fused_layout: dict[str, Any]
    unsupported: dict[str, str]  # module -> why it has no role
    partial: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # role -> its layers, where not every layer has it


@dataclass(frozen=True, kw_only=True)
class BaseModelSummary(_Serialized):
    id: str
    revision: str | None
    model_type: str
    layers: int
    hidden: int
    architecture: ArchitectureSummary

    @property
    def described(self) -> str:
        partial = "; ".join(f"{role} only in layers {', '.join(map(str, layers))}" for role, layers in self.architecture.partial.items())
        return f"{self.model_type} ({self.architecture.origin})" + (f"; {partial}" if partial else "")


@dataclass(frozen=True, kw_only=True)
class ModuleRow(_Serialized):
    """One target module and where its tensors come from."""

    target: str
    role: str
    operation: str  # copy, fuse, split or relayout
    sources: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class OutputSummary(_Serialized):
    path: str
    files: tuple[str, ...]
    tensors: int
    bytes: int


# ---- compatibility --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CompatibilityEvidence(_Serialized):
    """The token-embedding probe's numbers (compatibility.py)."""

    method: str = "token-embedding probe"
    reason: str | None = None
    identity_cosine: float | None = None  # None across widths
    linear_fit: float | None = None
    shared_tokens: int | None = None
    sampled_rows: int | None = None
    token_match: str | None = None
    bytes_read: int | None = None
    thresholds: dict[str, float] | None = None

    @classmethod
    def of(cls, evidence) -> CompatibilityEvidence:
        """The numbers of the probe's ``compatibility.EmbeddingEvidence``."""
        names = [field.name for field in dataclasses.fields(cls) if field.name != "method"]
        return cls(**{name: getattr(evidence, name) for name in names})


@dataclass(frozen=True, kw_only=True)
class CompatibilitySummary(_Serialized):
    verdict: str  # compatible, incompatible, unknown, or "not measured" (--align none: evidence None)
    evidence: CompatibilityEvidence | None

    @classmethod
    def of(cls, evidence) -> CompatibilitySummary:
        """From the probe's ``compatibility.EmbeddingEvidence``, or None when nothing was measured."""
        if evidence is None:
            return cls(verdict="not measured", evidence=None)
        return cls(verdict=evidence.verdict, evidence=CompatibilityEvidence.of(evidence))


# ---- alignment ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CalibrationSummary(_Serialized):
    source: str  # the pinned file or dataset, or "built-in multilingual sample"
    tokens: int  # paired tokens the maps were fitted on (0: nothing fitted)
    prompts: int | None = None  # output-space distillation: the prompts the teacher answered
    dataset: str | None = None  # the Hub dataset repo it came from (pinned in ``source``); None for a file or the built-in sample


@dataclass(frozen=True, kw_only=True)
class AlignedModule(_Serialized):
    """The fits of one mapped module: its input map (P_in) and output map (P_out)."""

    target_layer: int
    source_layer: int
    role: str
    input_fit: float
    output_fit: float
    score: str  # what input_fit and output_fit are: "R^2" or "mean correlation"
    identity_r2: float | None  # R^2 of the teacher's inputs by the student's same-index dimensions; None across widths
    linear_r2: float  # ... by a linear map of the student's


@dataclass(frozen=True, kw_only=True)
class AlignmentMemory(_Serialized):
    passes: int
    statistics_dtype: str
    predicted_alignment_bytes: int
    budget_bytes: int


@dataclass(frozen=True, kw_only=True)
class Agreement(_Serialized):
    """End to end on held-out calibration text: teacher with its adapter vs. student with the converted one."""

    metric: str  # "predicted-label agreement", "cosine of last-hidden-state changes" or GENERATION_AGREEMENT
    value: float
    held_out_tokens: int


@dataclass(frozen=True, kw_only=True)
class Distillation(_Serialized):
    """The refinement by distillation: the steps run, or why none ran (``skipped``; the rest None)."""

    steps: int | None = None
    lr: float | None = None
    seed: int | None = None
    final_loss: float | None = None
    skipped: str | None = None
    max_steps: int | None = None  # the cap; early stopping on held-out fidelity may end before it
    best_step: int | None = None  # the step whose adapter was kept (0: the start)
    cooldown_from: int | None = None  # output distillation that ended early: the step its 10-step cool-down began
    span_weight: float | None = None  # output distillation's span term (--span-weight), when on


@dataclass(frozen=True, kw_only=True)
class GenerationFidelity(_Serialized):
    """A causal or seq2seq LM's output-space fidelity on held-out prompts: the target with the converted
    adapter against the teacher's own answers, beside the target base with no adapter. Bits per
    byte of the teacher's answers (lower is closer), and the token F1 and exact match of greedy
    generations against the teacher's (higher is closer)."""

    prompts: str  # where the prompts came from, said plainly when no task prompts were given
    train_prompts: int
    held_out_prompts: int
    max_new_tokens: int
    stop: tuple[str, ...]  # the stop strings used: --stop's, or a line break the teacher's answers were measured to need
    answer_end: str  # what ended the teacher's answers, and why
    bits_per_byte: dict[str, float]  # "target base", "start", "converted"
    token_f1: dict[str, float]  # "target base", "converted"
    exact_match: dict[str, float]
    held_out_curve: tuple[tuple[int, float], ...]  # (distillation step, held-out bits per byte): the start, the end, any check between
    # (step, bits per byte of the last check window's training answers, each measured before the student learnt from it)
    unseen_curve: tuple[tuple[int, float], ...] = ()
    prompts_cut: int = 0  # prompts longer than the window leaves them: their beginnings were cut, their ends kept
    # what each part computed in: "teacher answers", "training steps", "held-out generations", "bits per byte"
    # ("bfloat16 autocast", or the weights' own dtype)
    computed_in: dict[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class AlignmentSummary(_Serialized):
    """What alignment was planned (``method``, ``reason``: always) and, after a run that loaded the
    models, what it did. Every other field is None in a dry run and for a direct mapping;
    ``calibration`` to ``memory`` also when it only distilled from a copy (nothing fitted)."""

    method: str  # correlation, lstsq, or "direct"
    reason: str
    device: str | None = None
    dtypes: dict[str, str] | None = None  # {"source": ..., "target": ...}, as loaded
    calibration: CalibrationSummary | None = None
    modules: tuple[AlignedModule, ...] | None = None
    head_input_fit: float | None = None
    score: str | None = None
    memory: AlignmentMemory | None = None
    agreement: Agreement | None = None
    agreement_before_distill: Agreement | None = None
    distill: Distillation | None = None
    fidelity: GenerationFidelity | None = None  # causal and seq2seq LMs distilled in output space


@dataclass(frozen=True, kw_only=True)
class ResourcePrediction(_Serialized):
    """align/budget.py's prediction of an alignment's memory, from shapes alone (``resources``)."""

    alignment_bytes: int  # the largest calibration pass: statistics, fit, kept results, one batch of activations
    peak_bytes: int  # that plus both models' weights and a forward's activations
    passes: int
    statistics_dtype: str  # float64 when everything fits one pass, else float32
    budget_bytes: int
    capture_points: int
    model_bytes: int
    within_budget: bool


@dataclass(frozen=True, kw_only=True)
class Measurement(_Serialized):
    """One measured quantity of the converted adapter, on held-out data: a row of the card's
    ``model-index`` and what a CI job gates on (``fidelity`` is the headline one)."""

    name: str  # what it is, in words
    type: str  # a stable identifier, e.g. "token_f1_vs_source_adapter"
    value: float
    data: str  # what it was measured on
    higher_is_better: bool


# the measurements a conversion reports: (type, name, higher is better) per fidelity field
_FIDELITY_MEASURES = (
    ("token_f1", "token_f1_vs_source_adapter", "token F1 of greedy generations vs the source adapter's", True),
    ("exact_match", "exact_match_vs_source_adapter", "exact match of greedy generations vs the source adapter's", True),
    ("bits_per_byte", "bits_per_byte_of_source_adapter_answers", "bits per byte of the source adapter's answers", False),
)


# ---- the conversion -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PushSummary(_Serialized):
    """A push to the Hub (``push --json`` prints it alone)."""

    repo: str
    branch: str
    commit: str | None
    commit_url: str | None
    pr_url: str | None
    changed: bool
    existing_pr: bool
    created: tuple[str, ...]
    files: tuple[str, ...]
    left_out: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ConversionSummary(_Serialized):
    """The account of one conversion: planned (``output`` None) or done."""

    tool_version: str
    command_line: str  # redoes the conversion, every Hub source pinned
    peft_type: str
    task_type: str | None
    source_adapter: AdapterSummary
    source_base: BaseModelSummary
    target_base: BaseModelSummary
    method: str  # "direct tensor mapping" or "<method> alignment", each possibly "+ distillation"
    layer_map: dict[str, Any]  # LayerMap.summary(): {strategy, rows, and with layer types type_mismatches, warning}
    modules: tuple[ModuleRow, ...]
    heads: dict[str, str]  # source head -> target head
    dropped: tuple[str, ...]
    num_labels: int | None
    output: OutputSummary | None = None  # None: nothing written
    alignment: AlignmentSummary
    compatibility: CompatibilitySummary
    resources: ResourcePrediction | None  # None for a direct mapping
    push: PushSummary | None = None

    @property
    def dry_run(self) -> bool:
        return self.output is None

    @property
    def measurements(self) -> tuple[Measurement, ...]:
        """What the run measured of the converted adapter against the source adapter, on held-out
        data; empty for a direct mapping (a copy measures nothing) and in a dry run."""
        alignment = self.alignment
        if alignment.agreement is None:
            return ()
        fidelity = alignment.fidelity
        held_out = (f"{fidelity.held_out_prompts} held-out prompts ({fidelity.prompts})" if fidelity else
                    f"{alignment.agreement.held_out_tokens} held-out calibration tokens"
                    f" ({alignment.calibration.source if alignment.calibration else 'built-in multilingual sample'})")
        if fidelity is not None:  # output distillation: its agreement is the token F1 itself, the first of these
            return tuple(Measurement(name=name, type=kind, value=getattr(fidelity, field)["converted"], data=held_out,
                                     higher_is_better=better) for field, kind, name, better in _FIDELITY_MEASURES)
        return (Measurement(name=alignment.agreement.metric, type="agreement_with_source_adapter", value=alignment.agreement.value,
                            data=held_out, higher_is_better=True),)

    @property
    def fidelity(self) -> Measurement | None:
        """The headline measurement (the first), or None when nothing was measured."""
        return self.measurements[0] if self.measurements else None

    def to_json(self) -> dict:
        """The ``--json`` summary of ``convert`` (docs/ci.md, schema ``SCHEMA_VERSION``): the
        fields, then ``dry_run``, the measurements and ``fidelity``, then ``push``."""
        data = super().to_json()
        push = data.pop("push")
        return {"schema_version": SCHEMA_VERSION} | data | {
            "dry_run": self.dry_run, "measurements": plain(self.measurements), "fidelity": plain(self.fidelity), "push": push}


# ---- an inspection ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Recommendation(_Serialized):
    align: str  # the --align value inspect recommends
    command: str  # the whole convert command
    why: str


@dataclass(frozen=True, kw_only=True)
class DownloadFile(_Serialized):
    repo: str
    file: str
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Downloads(_Serialized):
    files: tuple[DownloadFile, ...]
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Costs(_Serialized):
    """What a conversion would download and the memory it would take (estimates, said in ``note``)."""

    resources: ResourcePrediction | None
    downloads: Downloads
    base_weights_needed: bool
    base_weight_bytes: int
    predicted_peak_bytes: int
    note: str


@dataclass(frozen=True, kw_only=True)
class InspectionReport(_Serialized):
    """``inspect --json`` (docs/ci.md, schema ``SCHEMA_VERSION``): the plan's part of ``convert --json`` under ``plan``."""

    supported: bool
    plan: dict[str, Any]  # keys of ConversionSummary.to_json(), plus width_mismatch
    compatibility: CompatibilitySummary
    recommended: Recommendation
    costs: Costs

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION} | super().to_json()
