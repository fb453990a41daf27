"""The conversion pipeline: resolve, read, plan; then transform, write atomically, verify, card.

``prepare`` reads configs and the adapter and returns the plan; base weights are only fetched
when the plan aligns (activations need them), and never for a dry run. ``execute`` runs the
plan. The CLI's ``--dry-run`` stops after ``prepare``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import __version__
from .adapter_io import CONFIG_NAME, WEIGHTS_NAME, AdapterCheckpoint, all_finite, read_adapter
from .card import build_model_card
from .compatibility import EmbeddingEvidence, cached_embedding_evidence
from .errors import (BadAdapterError, CompatibilityUnknownError, FidelityBelowMinimumError, SourceNotFoundError, UnsupportedError,
                     UsageError, VerificationError)
from .peft_config import build_target_config
from .plan import FRESH, ConversionPlan, ParsedAdapter, check_source_ranks, choose_layer_map, parse_adapter, plan_conversion
from .sources import Base, CalibrationSource, ResolvedSource, read_adapter_source, read_base, read_calibration_data, with_weights
from .summary import (AdapterSummary, AlignmentSummary, ArchitectureSummary, BaseModelSummary, CompatibilitySummary,
                      ConversionSummary, ModuleRow, OutputSummary, ResourcePrediction)
from .transform import convert_tensors
from .verify import verify_adapter_folder
from .reporting import Reporter
from .writer import check_output, write_folder_atomically
from .tasks import WRITES_TEXT

# Stands for --out in the card's reproduce command: the card must not depend on (or reveal) a local path.
OUT_PLACEHOLDER = "./converted-adapter"
MAX_SEED = 2**32 - 1


@dataclass
class ConversionRequest:
    adapter: str
    target: str
    out: Path | None = None
    source_base: str | None = None
    layer_map: str = "auto"
    force: bool = False
    allow_pickle: bool = False
    dry_run: bool = False
    token: str | None = None  # passed to the Hub client only; never printed or stored
    align: str = "auto"
    calibration_data: str | None = None  # a local file, or a Hub dataset id (user/name[@revision])
    calibration_tokens: int = 4096
    ridge: float = 1e-2
    distill_steps: int | None = None  # the most distillation steps; None: its kind's own cap (distill_cap)
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None  # alignment and distillation: cpu, cuda[:N], or auto (accelerate's device_map); None: cuda if available
    dtype: str | None = None  # float32, bfloat16, float16; None: each checkpoint's own
    memory_budget: str | None = None  # alignment working memory, e.g. "4GiB"; None: $ADAPTER_CONVERT_ALIGN_BUDGET or 4 GiB
    # output-space distillation of a causal LM (the teacher writes answers to the calibration prompts)
    max_new_tokens: int | None = None  # the teacher's answer budget per prompt (None: 64, raised for longer answers; align/session.py)
    stop: tuple[str, ...] = ()  # strings that end an answer (kept in it), beside EOS
    batch_size: int = 4  # distillation batch, in prompts
    span_weight: float = 0.0  # a causal LM's span term (ALM): the teacher's likelihood of the spans both tokenizers cut alike
    min_fidelity: float | None = None  # refuse (exit 20) a result whose measured fidelity is below this, before any push


@dataclass
class PreparedConversion:
    """What ``prepare`` read and decided, handed to ``execute``: each input read once."""

    request: ConversionRequest
    adapter_source: ResolvedSource
    adapter: AdapterCheckpoint
    source: Base  # the source base: with its weights fetched when the plan runs the models
    target: Base
    parsed: ParsedAdapter
    plan: ConversionPlan
    calibration: CalibrationSource | None = None  # None: the built-in sample
    compatibility: EmbeddingEvidence | None = None  # None: not measured (--align none)
    undecided: str | None = None  # why --align auto could not decide, where prepare(plan_undecided=True) planned anyway


# the most distillation steps when --distill-steps is not given: a model that writes text distils on
# the teacher's answers and stops when held-out fidelity stops improving, which on SmolLM2 <->
# gemma-3-270m took 170 and 180 steps and kept far more of the teacher's F1 than a cap of 100
# (docs/benchmarks.md section 7); logits and hidden-state distillation run a fixed number of steps
OUTPUT_DISTILL_STEPS, DISTILL_STEPS = 200, 100


def distill_cap(task_type: str | None) -> int:
    return OUTPUT_DISTILL_STEPS if task_type in WRITES_TEXT else DISTILL_STEPS


def check_request(request: ConversionRequest) -> None:
    """Option values that no conversion can use, refused before any work (exit 2)."""

    def bad(option: str, value, allowed: str) -> UsageError:
        return UsageError(f"{option} {value!r} is not allowed: it must be {allowed}.", f"Pass {option} with a value in that range.")

    if not (isinstance(request.lr, (int, float)) and math.isfinite(request.lr) and request.lr > 0):
        raise bad("--lr", request.lr, "a finite number above 0")
    if not 0 <= request.seed <= MAX_SEED:
        raise bad("--seed", request.seed, f"a whole number from 0 to {MAX_SEED}")
    if not (math.isfinite(request.ridge) and request.ridge >= 0):
        raise bad("--ridge", request.ridge, "a finite number of 0 or more")
    if request.calibration_tokens < 16:
        raise bad("--calibration-tokens", request.calibration_tokens, "16 or more")
    if request.distill_steps is not None and request.distill_steps < 0:
        raise bad("--distill-steps", request.distill_steps, "0 or more")
    if request.max_new_tokens is not None and not 1 <= request.max_new_tokens <= 4096:
        raise bad("--max-new-tokens", request.max_new_tokens, "a whole number from 1 to 4096")
    if request.batch_size < 1:
        raise bad("--batch-size", request.batch_size, "1 or more")
    if not (isinstance(request.span_weight, (int, float)) and math.isfinite(request.span_weight) and request.span_weight >= 0):
        raise bad("--span-weight", request.span_weight, "a finite number of 0 or more")
    if any(not s for s in request.stop):
        raise bad("--stop", "", "a non-empty string")
    if request.min_fidelity is not None and not (math.isfinite(request.min_fidelity) and 0 <= request.min_fidelity <= 1):
        raise bad("--min-fidelity", request.min_fidelity, "a number from 0 to 1")
    if request.dtype not in (None, *DTYPES):
        raise bad("--dtype", request.dtype, f"one of {', '.join(DTYPES)}")
    if request.device is not None:
        check_device(request.device)
    if request.memory_budget is not None:
        from .align.budget import parse_bytes

        try:
            if parse_bytes(request.memory_budget) < 2**20:
                raise ValueError("below 1 MiB")
        except ValueError:
            raise bad("--memory-budget", request.memory_budget, "a size of at least 1MiB, such as 4GiB or 512MiB") from None


DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: str) -> None:
    """cpu, auto, mps, or cuda[:N] that this machine has (checked before any work)."""
    import re

    if device in ("cpu", "auto"):
        return
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: this machine has no Apple GPU (MPS).", "Use --device cpu.")
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise UsageError(f"--device {device!r} is not a device.", "Use cpu, cuda, cuda:N, mps or auto (accelerate's device map, with offloading).")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: torch sees no CUDA GPU here ({torch.__version__}).", "Use --device cpu, or install a CUDA build of torch.")
    if match.group(1) and int(match.group(1)) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).", "Pick one that exists.")


def _local_inputs(request: ConversionRequest) -> dict[str, Path]:
    """The inputs named by local paths, known before anything is resolved."""
    named = {"adapter": request.adapter, "source base": request.source_base, "target base": request.target,
             "calibration data": request.calibration_data}
    return {what: Path(ref).expanduser() for what, ref in named.items() if ref and Path(ref).expanduser().exists()}


def prepare(request: ConversionRequest, reporter: Reporter | None = None, *, plan_undecided: bool = False) -> PreparedConversion:
    """Check the request, read the adapter and both bases once, measure their compatibility and plan.
    ``plan_undecided`` (inspect): where ``--align auto`` cannot decide (compatibility not measured),
    plan distillation (or a copy where no alignment is defined) and say why in ``undecided``,
    instead of raising CompatibilityUnknownError."""
    reporter = reporter or Reporter()
    local = _local_inputs(request)
    check_request(request)
    if request.out is not None and not request.dry_run:  # fail before any download, not after
        check_output(request.out, force=request.force, inputs=local)
    reporter.stage(f"Reading adapter {request.adapter}")
    adapter_source, adapter = read_adapter_source(request.adapter, allow_pickle=request.allow_pickle, token=request.token)
    source_ref = request.source_base or adapter.config.base_model_name_or_path
    if not source_ref:
        raise SourceNotFoundError(
            "The adapter config does not name its base model (base_model_name_or_path is empty).",
            "Pass the base it was trained on with --source-base.",
        )
    source = read_base(source_ref, what="source base", named="" if request.source_base else
                       "(the adapter's base_model_name_or_path; override with --source-base)", token=request.token)
    target = read_base(request.target, what="target base", token=request.token)
    parsed = parse_adapter(adapter.tensors, arch=source.arch, dims=source.dims, modules_to_save=adapter.config.modules_to_save)
    check_source_ranks(adapter.config, parsed, source.arch)
    layer_map = choose_layer_map(parsed, request.layer_map, source.dims, target.dims)
    compatibility = None
    if request.align != "none":  # a few MB of embedding rows, never the checkpoint
        reporter.stage("Measuring compatibility: token embeddings of both bases")
        compatibility = cached_embedding_evidence(source.source, target.source, token=request.token)

    def plan_for(align: str) -> ConversionPlan:
        return plan_conversion(parsed, peft_type=_enum_value(adapter.config.peft_type), task_type=_enum_value(adapter.config.task_type),
                               source_arch=source.arch, target_arch=target.arch, source_dims=source.dims, target_dims=target.dims,
                               layer_map=layer_map, align=align, verdict=compatibility.decision if compatibility else None,
                               basis_change=bool(compatibility and compatibility.basis_change))

    undecided = None
    try:
        plan = plan_for(request.align)
    except CompatibilityUnknownError as err:
        if not plan_undecided:
            raise
        # inspect: any alignment still works (distill, the best of them), else a copy is the one conversion left
        undecided = err.problem
        try:
            plan = plan_for("distill")
        except UnsupportedError:
            plan = plan_for("none")
    if request.distill_steps is None:
        request = dataclasses.replace(request, distill_steps=distill_cap(plan.task_type))
    if request.min_fidelity is not None and not plan.alignment.needs_models:  # gate before any work, in a dry run too
        raise FidelityBelowMinimumError(
            f"--min-fidelity {request.min_fidelity} needs a measured fidelity, but this conversion copies tensors "
            f"({_method(plan)}: {plan.alignment.reason}) and measures none.",
            "Drop --min-fidelity for a copy, or pass --align distill to measure the converted adapter against the source.")
    if request.span_weight and plan.task_type != "CAUSAL_LM":  # spans of answers a causal LM writes, before any work
        raise UsageError(f"--span-weight compares the spans of answers a causal LM writes; this adapter's task is {plan.task_type}.",
                         "Leave --span-weight at 0 for this adapter.")
    calibration = None
    if plan.fetches_weights and not request.dry_run:  # activations need base weights
        if request.calibration_data:
            calibration = read_calibration_data(request.calibration_data, token=request.token)  # a bad file fails before the weights download
        source, target = with_weights(source, token=request.token), with_weights(target, token=request.token)
    prepared = PreparedConversion(request, adapter_source, adapter, source, target, parsed, plan, calibration, compatibility, undecided)
    if request.out is not None and not request.dry_run:
        check_output(request.out, force=request.force, inputs=input_paths(prepared))
    return prepared


def input_paths(prepared: PreparedConversion) -> dict[str, Path]:
    """Every local path the conversion reads: --out must not be, hold or lie inside any of them."""
    paths = {"adapter": prepared.adapter_source.path, "source base": prepared.source.path, "target base": prepared.target.path}
    if prepared.calibration is not None:
        paths["calibration data"] = prepared.calibration.file
    return paths


def _enum_value(value) -> str | None:
    """peft stores peft_type and task_type as str enums; plain strings in JSON and the card."""
    return None if value is None else str(getattr(value, "value", value))


def summarize(prepared: PreparedConversion) -> ConversionSummary:
    """The account of a conversion as planned, printed by --dry-run and --json; ``execute`` completes
    it with what was written and measured, and renders it into the card."""
    plan = prepared.plan

    def base(model: Base) -> BaseModelSummary:
        arch, dims = model.arch, model.dims
        # several layer stacks (encoder, decoder): their lists, roles named "<stack>/<role>", layers counted over all
        stacks = arch.stacks or (arch,)
        named = lambda s, role: f"{s.name}/{role}" if arch.stacks else role  # noqa: E731
        architecture = ArchitectureSummary(
            origin=arch.origin, layers=", ".join(f"{arch.backbone}.{s.layers}".lstrip(".") for s in stacks),
            modules={named(s, role): path for s in stacks for role, path in s.modules.items()},
            fused_layout=dict(arch.fused_layout), unsupported=dict(arch.unsupported),
            partial={named(s, role): tuple(layers) for s in stacks for role, layers in s.partial.items()})
        return BaseModelSummary(id=model.id, revision=model.revision, model_type=arch.model_type,
                                layers=sum(d.layers for _, d in dims.stacks) or dims.layers, hidden=dims.hidden, architecture=architecture)

    def in_stack(stack, arch, path: str) -> str:  # a module of a layer stack, named with the stack's layer list
        return f"{arch.layers}.*.{path}" if stack.stack else path

    modules = [ModuleRow(target=in_stack(p, p.target_arch, p.target_arch.modules[m.target_role]), role=m.target_role, operation=m.operation,
                         sources=tuple(in_stack(p, p.source_arch, p.source_arch.modules[r]) for r in m.source_roles))
               for p in (plan.stacks or (plan,)) for m in p.modules]
    modules += [ModuleRow(target=plan.target_arch.embeddings[role], role=role, operation="copy", sources=(plan.source_arch.embeddings[role],))
                for role in plan.embeddings]
    return ConversionSummary(
        tool_version=__version__,
        command_line=reproduce_command(prepared),
        peft_type=plan.peft_type,
        task_type=_enum_value(prepared.adapter.config.task_type),
        source_adapter=AdapterSummary(id=prepared.adapter_source.id, revision=prepared.adapter_source.revision, bytes=prepared.adapter.nbytes,
                                      url=hub_url(prepared.adapter_source), license=prepared.adapter.license),
        source_base=base(prepared.source),
        target_base=base(prepared.target),
        method=_method(plan),
        layer_map=plan.layer_map.summary(),
        modules=tuple(modules),
        heads=dict(plan.heads),
        dropped=tuple(plan.dropped),
        num_labels=prepared.parsed.num_labels,
        alignment=AlignmentSummary(method=plan.alignment.method or "direct", reason=plan.alignment.reason),
        compatibility=CompatibilitySummary.of(prepared.compatibility),
        resources=alignment_resources(plan, prepared.request, prepared.source, prepared.target, prepared.adapter),  # None unless it aligns
    )


def hub_url(source: ResolvedSource) -> str | None:
    """The Hub page of a source at its pinned commit; None for a local folder."""
    if source.repo_id is None:
        return None
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{source.repo_id}/tree/{source.revision}"


def alignment_resources(plan: ConversionPlan, request: ConversionRequest, source: Base, target: Base,
                        adapter: AdapterCheckpoint) -> ResourcePrediction | None:
    """The predicted alignment memory (align/budget.py), or None for a direct mapping."""
    from .align.budget import for_plan  # the alignment package loads only when asked
    from .align.placement import resolve_device

    # on the CPU the bases load in float32 where it fits (align/placement.py): predicted as float32
    dtype = request.dtype or ("float32" if resolve_device(request.device) == "cpu" else None)
    return for_plan(plan, source_config=source.config, target_config=target.config, adapter_tensors=adapter.tensors, dtype=dtype,
                    memory_budget=request.memory_budget)


def _method(plan: ConversionPlan) -> str:
    alignment = plan.alignment
    base = "fresh adapter" if alignment.method == FRESH else f"{alignment.method} alignment" if alignment.method else "direct tensor mapping"
    return base + (" + distillation" if alignment.refine else "")


def reproduce_command(prepared: PreparedConversion) -> str:
    """The command that redoes this conversion, with every Hub source pinned to its commit."""
    request = prepared.request
    words = ["adapter-convert", "convert", prepared.adapter_source.pinned, "--target", prepared.target.pinned,
             "--out", OUT_PLACEHOLDER, "--layer-map", request.layer_map]
    if request.source_base or prepared.source.source.repo_id:
        words += ["--source-base", prepared.source.pinned]
    if request.align != "auto":
        words += ["--align", request.align]
    if prepared.plan.alignment.needs_models:
        if prepared.calibration or request.calibration_data:
            words += ["--calibration-data", prepared.calibration.argument if prepared.calibration else str(request.calibration_data)]
        words += ["--calibration-tokens", str(request.calibration_tokens), "--seed", str(request.seed)]
        if prepared.plan.alignment.refine:
            words += ["--distill-steps", str(request.distill_steps), "--lr", str(request.lr)]
            if prepared.plan.task_type in WRITES_TEXT:  # output-space distillation: what the teacher writes
                words += ["--max-new-tokens", str(request.max_new_tokens)] if request.max_new_tokens else []  # else chosen again alike
                words += ["--batch-size", str(request.batch_size)]
                words += ["--span-weight", str(request.span_weight)] if request.span_weight else []
                words += [w for stop in request.stop for w in ("--stop", stop)]
        if request.dtype:  # the device changes speed, not the result's meaning; the dtype can change numbers
            words += ["--dtype", request.dtype]
    return shlex.join(words)


def execute(prepared: PreparedConversion, reporter: Reporter | None = None, *, planned: ConversionSummary | None = None) -> ConversionSummary:
    """Convert, write to a temporary folder, verify with peft, add the card, move into place; the
    summary returned holds what was written and, when the models were loaded, the alignment's report.
    ``planned``: the plan's summary (``summarize(prepared)``) when the caller has it, completed here
    instead of made again."""
    reporter = reporter or Reporter()
    request, plan = prepared.request, prepared.plan
    if request.out is None:
        raise ValueError("execute() needs request.out")
    inputs = input_paths(prepared)  # --out must not be, hold or lie inside any of them
    planned = planned if planned is not None else summarize(prepared)
    session = fitted = None
    if plan.alignment.needs_models:
        from .align.session import AlignmentSession

        session = AlignmentSession(plan, source=prepared.source, target=prepared.target, adapter=prepared.adapter, parsed=prepared.parsed,
                                   calibration=prepared.calibration, options=request, reporter=reporter)
        if plan.alignment.method == FRESH:  # a new adapter: nothing to calibrate
            fitted = session.fresh()
        elif plan.alignment.method:
            fitted = session.fit()
    total = sum(len(p.layer_map.sources) * len(p.modules) for p in (plan.stacks or (plan,)))
    aligned_heads = fitted.heads if fitted else None
    with reporter.progress("Converting modules", total) as advance:
        converted = convert_tensors(plan, prepared.parsed, prepared.adapter.config, on_module=advance,
                                    aligned_modules=fitted.modules if fitted else None, aligned_heads=aligned_heads)
    config = build_target_config(prepared.adapter.config, plan, converted, target_base=prepared.target.id, target_revision=prepared.target.revision)
    alignment_report = None
    if session is not None:
        converted.tensors, evaluation = session.refine(converted.tensors, config, fitted)
        alignment_report = session.report(fitted, evaluation)
    # the source was checked finite when read, and a direct mapping only copies, slices and
    # averages it: only a fitted or distilled adapter can hold new NaN or Inf values
    broken = [key for key, tensor in converted.tensors.items() if not all_finite(tensor)] if session is not None else []
    if broken:
        raise VerificationError(
            f"The converted adapter holds NaN or Inf values ({len(broken)} tensors, first {broken[0]!r}); nothing was written.",
            "If --align distill diverged, lower --lr or --distill-steps; otherwise please report it.",
        )
    out = Path(request.out)
    written = OutputSummary(path=str(out), files=(CONFIG_NAME, WEIGHTS_NAME, "README.md"), tensors=len(converted.tensors),
                            bytes=sum(t.numel() * t.element_size() for t in converted.tensors.values()))
    summary = dataclasses.replace(planned, output=written)
    if alignment_report is not None:
        summary = dataclasses.replace(summary, alignment=alignment_report)

    def fill(folder: Path) -> None:
        config.save_pretrained(str(folder))
        canonicalize_config_file(folder / CONFIG_NAME)
        save_file(converted.tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        reporter.stage("Verifying: loading the result with peft onto an empty target model")
        # peft's seq2seq model needs the generation model, even where its keys look bare (t5 keeps its stacks at the top)
        bare = not plan.target_prefix and plan.task_type != "SEQ_2_SEQ_LM"
        verify_adapter_folder(folder, prepared.target.config, bare=bare, written=converted.tensors)
        build_model_card(summary).save(folder / "README.md")

    reporter.stage(f"Writing {out}")
    write_folder_atomically(out, fill, force=request.force, inputs=inputs)
    return summary


def canonicalize_config_file(path: Path) -> None:
    """Rewrite adapter_config.json byte-stably: peft keeps target_modules as a set, whose order
    follows Python's hash seed, so the same conversion would otherwise differ from run to run."""
    data = json.loads(path.read_text())
    for key in ("target_modules", "feedforward_modules", "modules_to_save", "exclude_modules"):
        if isinstance(data.get(key), list):
            data[key] = sorted(data[key])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_fidelity(summary: ConversionSummary, minimum: float | None) -> None:
    """Refuse (exit 20) a conversion whose measured fidelity is below ``minimum``: what a CI job
    gates a push on. Called after the write and before any push."""
    if minimum is None:
        return
    fidelity = summary.fidelity
    if fidelity is None:
        raise FidelityBelowMinimumError(f"--min-fidelity {minimum} needs a measured fidelity, and this conversion measured none "
                                        f"({summary.method}); nothing was pushed.",
                                        "Drop --min-fidelity, or pass --align distill to measure.")
    if fidelity.value < minimum:
        raise FidelityBelowMinimumError(
            f"Measured fidelity {fidelity.value:.4f} ({fidelity.name}, on {fidelity.data}) is below --min-fidelity {minimum}; "
            f"nothing was pushed (the converted adapter is in {summary.output.path if summary.output else 'no folder'} for inspection).",
            "Give more or better --calibration-data (the task's own prompts), raise --distill-steps, or lower --min-fidelity.")


def check_publishable(folder: Path) -> None:
    """Refuse to publish a folder that is not a complete, readable adapter with its card."""
    folder = Path(folder)
    adapter = read_adapter(folder)  # config parses, weights load, no NaN/Inf
    if not (folder / "README.md").is_file():
        raise BadAdapterError(
            f"{str(folder)!r} has no README.md model card.", "Publish folders written by 'adapter-convert convert', which adds one."
        )
    if not adapter.config.base_model_name_or_path:
        raise BadAdapterError(f"{str(folder)!r}'s adapter_config.json names no base model.", "Re-run the conversion.")
