"""Read an adapter's tensors as (layer, role) slots, then plan how they land on the target.

Planning is pure: it reads configs and tensor shapes, never weights, and never touches files.
The CLI's ``--dry-run`` prints this plan; the run executes the same plan.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .alignment_methods import METHODS
from .architectures import Architecture, Dims, role_shape, roles
from .errors import BadAdapterError, CompatibilityUnknownError, LayerMapError, UnsupportedError, UsageError, WidthMismatchError
from .layer_maps import LayerMap, layer_map_for
from .tasks import WRITES_TEXT

PEFT_PREFIX = "base_model.model."
LORA_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")
EMBEDDING_PARAMS = ("lora_embedding_A", "lora_embedding_B")
IA3_PARAMS = ("ia3_l",)
ADAPTER_PARAMS = LORA_PARAMS + EMBEDDING_PARAMS + IA3_PARAMS


@dataclass
class ParsedAdapter:
    """An adapter's tensors sorted by where they live in the base model."""

    prefix: str  # "<backbone>." when saved from a task model (BertForTokenClassification), else ""
    layers: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)  # (layer, role) -> params
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # role -> params
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {param path: tensor}
    dropped: list[str] = field(default_factory=list)  # keys deliberately not carried over
    # LoRA on the experts' 3-D weights (peft target_parameters): (layer, key after "<layers>.<layer>.") -> tensor
    experts: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    # a model with several layer stacks (encoder, decoder): each stack's layers, parsed on its own;
    # ``layers`` is then empty and embeddings and heads stay here
    stacks: dict[str, ParsedAdapter] = field(default_factory=dict)

    @property
    def roles(self) -> list[str]:
        seen = {role for _, role in self.layers}
        return [r for r in (*roles().plain, *roles().fused) if r in seen]

    @property
    def num_labels(self) -> int | None:
        """Number of labels its classification head was trained with (``labels_of`` its tensors)."""
        return labels_of(t for params in self.heads.values() for t in params.values())


def _key_mismatch(key: str, arch: Architecture, why: str) -> BadAdapterError:
    return BadAdapterError(
        f"Adapter key {key!r} does not match its declared base ({arch.model_type}): {why}.",
        "Check that the adapter was trained on that base, or pass the right one with --source-base.",
    )


def parse_adapter(
    tensors: dict[str, torch.Tensor], *, arch: Architecture, dims: Dims, modules_to_save: list[str] | None
) -> ParsedAdapter:
    if arch.stacks:
        return _parse_stacks(tensors, arch=arch, dims=dims, modules_to_save=modules_to_save)
    layer_re = re.compile(rf"^{re.escape(arch.layers)}\.(\d+)\.(.+)$")
    embedding_roles = {path: role for role, path in arch.embeddings.items()}
    heads = sorted(set(modules_to_save or []), key=len, reverse=True)
    prefixes: set[str] = set()
    parsed = ParsedAdapter(prefix="")
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise _key_mismatch(key, arch, f"it does not start with {PEFT_PREFIX!r}")
        rest = key[len(PEFT_PREFIX) :]
        head = next((h for h in heads if rest.startswith(h + ".")), None)
        if head is not None:
            parsed.heads.setdefault(head, {})[rest[len(head) + 1 :]] = tensor
            continue
        param = next((p for p in ADAPTER_PARAMS if rest.endswith("." + p)), None)
        if param is None and rest.endswith(".base_layer.weight") and _is_embedding(rest, arch):
            # peft's save_embedding_layers stores the source's own embedding matrix next to an
            # embedding LoRA: base weights, which must not overwrite the target's
            parsed.dropped.append(key)
            continue
        if param is None:
            raise UnsupportedError(
                f"Adapter key {key!r} is not a LoRA, DoRA or IA3 weight (trained biases and other extras are not supported).",
                "Train the adapter with bias='none' and lora_bias=False, or list the module in modules_to_save.",
            )
        module = rest[: -len(param) - 1]
        prefix = arch.backbone + "." if module.startswith(arch.backbone + ".") else ""
        prefixes.add(prefix)
        module = module[len(prefix) :]
        if match := layer_re.match(module):
            layer, path = int(match.group(1)), match.group(2)
            if arch.experts and re.fullmatch(rf"{re.escape(arch.experts)}(\.base_layer)*", path) and param in LORA_PARAMS[:2]:
                # peft nests one wrapper per target parameter: experts.lora_*, experts.base_layer.lora_* ...
                if layer >= dims.layers:
                    raise _key_mismatch(key, arch, f"layer {layer} does not exist, the base has {dims.layers} layers")
                parsed.experts[(layer, f"{path}.{param}")] = tensor
                continue
            role = arch.role_of(path)
            if role is None and path in arch.unsupported:
                raise UnsupportedError(
                    f"Adapter key {key!r}: {arch.model_type}'s {path!r} has no role adapter-convert can map "
                    f"({arch.unsupported[path]}).",
                    "Retrain the adapter without that module, or convert only onto the same model type and depth by hand.",
                )
            if role is None:
                raise _key_mismatch(key, arch, f"{arch.model_type} layers have no module {path!r}")
            if layer >= dims.layers:
                raise _key_mismatch(key, arch, f"layer {layer} does not exist, the base has {dims.layers} layers")
            if not arch.has_role(role, layer):
                raise _key_mismatch(key, arch, f"its layer {layer} has no {path!r} (only layers {_short_list(list(arch.partial[role]))} have it)")
            _check_shape(key, tensor, param, role_shape(role, dims))
            parsed.layers.setdefault((layer, role), {})[param] = tensor
        elif module in embedding_roles:
            _check_shape(key, tensor, param, role_shape(embedding_roles[module], dims))
            parsed.embeddings.setdefault(embedding_roles[module], {})[param] = tensor
        else:
            raise _key_mismatch(key, arch, f"{module!r} is not a known layer module or embedding")
    if len(prefixes) > 1:
        raise BadAdapterError("Adapter keys mix a task-model prefix and a bare-model prefix.", "Re-save the adapter with peft.")
    parsed.prefix = prefixes.pop() if prefixes else ""
    for (layer, role), params in parsed.layers.items():
        has_a, has_b = "lora_A.weight" in params, "lora_B.weight" in params
        if has_a != has_b:
            raise BadAdapterError(f"Layer {layer} {role} has only half of a LoRA pair.", "Re-save the adapter with peft.")
        if has_a and params["lora_A.weight"].shape[0] != params["lora_B.weight"].shape[1]:
            raise BadAdapterError(f"lora_A and lora_B of layer {layer} {role} disagree on the rank.", "Re-save the adapter.")
    return parsed


def _parse_stacks(
    tensors: dict[str, torch.Tensor], *, arch: Architecture, dims: Dims, modules_to_save: list[str] | None
) -> ParsedAdapter:
    """An adapter on a model with several layer stacks: each stack's keys parsed by its one-stack
    view, the rest (embeddings, task heads) by the first stack's."""
    groups: dict[str, dict[str, torch.Tensor]] = {stack.name: {} for stack in arch.stacks}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        module = key.removeprefix(PEFT_PREFIX).removeprefix(arch.backbone + ".")
        stack = next((s.name for s in arch.stacks if module.startswith(s.layers + ".")), None)
        (groups[stack] if stack else rest)[key] = tensor
    first = arch.stacks[0].name
    parsed = parse_adapter(rest, arch=arch.stack(first), dims=dims.stack(first), modules_to_save=modules_to_save)
    parsed.stacks = {name: parse_adapter(group, arch=arch.stack(name), dims=dims.stack(name), modules_to_save=None)
                     for name, group in groups.items()}
    # a part without keys reads as bare: the prefix is the one of the parts that have keys
    prefixes = {part.prefix for part, keys in [(parsed, rest), *((parsed.stacks[n], g) for n, g in groups.items())] if keys}
    if len(prefixes) > 1:
        raise BadAdapterError("Adapter keys mix a task-model prefix and a bare-model prefix.", "Re-save the adapter with peft.")
    prefix = prefixes.pop() if prefixes else ""
    for part in (parsed, *parsed.stacks.values()):
        part.prefix = prefix
    return parsed


def _is_embedding(module_key: str, arch: Architecture) -> bool:
    return any(module_key.endswith(f"{path}.base_layer.weight") for path in arch.embeddings.values())


def _check_shape(key: str, tensor: torch.Tensor, param: str, shape: tuple[int, int]) -> None:
    in_f, out_f = shape
    shape_ok = {
        "lora_A.weight": lambda s: len(s) == 2 and s[1] == in_f,
        "lora_B.weight": lambda s: len(s) == 2 and s[0] == out_f,
        "lora_magnitude_vector": lambda s: tuple(s) == (out_f,),
        "lora_embedding_A": lambda s: len(s) == 2 and s[1] == in_f,
        "lora_embedding_B": lambda s: len(s) == 2 and s[0] == out_f,
        "ia3_l": lambda s: tuple(s) in {(out_f, 1), (1, in_f)},
    }[param]
    if not shape_ok(tensor.shape):
        raise BadAdapterError(
            f"Tensor {key!r} has shape {tuple(tensor.shape)}, which disagrees with the base config "
            f"(that module maps {in_f} -> {out_f} features).",
            "The adapter and its declared base do not belong together: pass the right one with --source-base.",
        )


def labels_of(head_tensors: Iterable[torch.Tensor]) -> int | None:
    """Number of labels a classification head was trained with: the rows of its last weight."""
    weights = [t for t in head_tensors if t.ndim == 2]
    return weights[-1].shape[0] if weights else None


def head_labels(tensors: dict[str, torch.Tensor], heads: list[str] | None) -> int | None:
    """``labels_of`` the head named in ``heads`` (modules_to_save), from an adapter file's tensors."""
    return labels_of(t for k, t in tensors.items() for h in heads or [] if k.startswith(f"{PEFT_PREFIX}{h}."))


def check_source_ranks(config, parsed: ParsedAdapter, arch: Architecture) -> None:
    """Each LoRA's rank must be the one its config gives it (r, or its rank_pattern entry): with
    another, the scaling alpha / r we would carry over is not the one the adapter was trained with."""
    from peft.utils.other import get_pattern_key  # peft loads only when an adapter is read

    if getattr(config, "peft_type", None) != "LORA" and str(getattr(config.peft_type, "value", "")) != "LORA":
        return
    for name, part in parsed.stacks.items():  # several layer stacks: each read by its own view
        check_source_ranks(config, part, arch.stack(name))
    modules = [(f"{parsed.prefix}{arch.layers}.{layer}.{arch.modules[role]}", params.get("lora_A.weight"))
               for (layer, role), params in parsed.layers.items()]
    modules += [(parsed.prefix + arch.embeddings[role], params.get("lora_embedding_A")) for role, params in parsed.embeddings.items()]
    for name, lora_a in modules:
        if lora_a is None:
            continue
        pattern = next((p for p in (config.rank_pattern or {}) if get_pattern_key([p], name) == p), None)
        expected = config.rank_pattern[pattern] if pattern else config.r
        if lora_a.shape[0] != expected:
            source = f"rank_pattern[{pattern!r}]" if pattern else "r"
            raise BadAdapterError(
                f"The adapter config gives {name} rank {expected} ({source}), but its LoRA tensors have rank {lora_a.shape[0]}; "
                "peft would refuse to load it, and its scaling would be wrong.",
                "Fix r (or rank_pattern) in adapter_config.json to the rank the adapter was trained with.",
            )


def choose_layer_map(parsed: ParsedAdapter, spec: str, source_dims: Dims, target_dims: Dims) -> LayerMap:
    """The layer map ``spec`` names for these sizes (layer types compared where both bases name
    them), checked to take the adapter's adapted layers (each stack's, with several stacks)."""
    adapted, per_stack = _adapted_layers(parsed), {name: _adapted_layers(stack) for name, stack in parsed.stacks.items()}
    layer_map = layer_map_for(spec, source_dims, target_dims)
    layer_map.check_covers(adapted, per_stack)
    return layer_map


def _adapted_layers(parsed: ParsedAdapter) -> list[int]:
    return sorted({layer for layer, _ in parsed.layers})


def width_mismatch(plan_modules: tuple[ModuleMapping, ...], embeddings: tuple[str, ...], source: Dims, target: Dims) -> str | None:
    """The first module whose shapes differ between source and target, described; None if all agree."""
    for role in [p for m in plan_modules for r in m.source_roles for p in roles().parts(r)] + list(embeddings):
        src, tgt = role_shape(role, source), role_shape(role, target)
        if src != tgt:
            return (f"{role} maps {src[0]} -> {src[1]} features in the source but {tgt[0]} -> {tgt[1]} in the target "
                    f"(hidden {source.hidden} vs {target.hidden})")
    return None


@dataclass(frozen=True)
class AlignmentPlan:
    method: str | None  # correlation | lstsq | fresh, or None for a direct tensor mapping
    refine: bool  # distill after mapping
    reason: str
    # auto only: skip the distillation when the mapped adapter already agrees this well with the
    # teacher on held-out text (a permuted copy, say): nothing is left to learn, only noise to add
    refine_below: float | None = None

    @property
    def needs_models(self) -> bool:
        return self.method is not None or self.refine


# the fitted methods from alignment_methods.METHODS (the registry); "fresh" starts a new adapter, fitting nothing
FRESH = "fresh"
ALIGN_CHOICES = ("auto", "none", *METHODS, FRESH, "distill")


AUTO_REFINE_BELOW = 0.999


def plan_alignment(align: str, mismatch: str | None, verdict: str | None = None, *, selection_only: bool = False,
                   basis_change: bool = False, generative: bool = False) -> AlignmentPlan:
    """What ``--align`` means for this pair.

    ``auto`` copies tensors only when the shapes agree AND the measured compatibility
    (``verdict``, from the token-embedding probe) says the two bases share a hidden space; other
    widths or unrelated spaces get the best alignment refined by a short distillation; no
    evidence at all is an error, never a silent copy. ``selection_only``: DoRA and IA3 vectors can
    only follow a selection of dimensions, so their best method is ``correlation``, which is also
    best when the probe found the same space in another basis (``basis_change``: a permuted copy).
    ``generative`` (a causal LM, distilled in output space on the teacher's own answers): the best
    start between unrelated bases is a fresh adapter, measured against the folded maps
    (docs/benchmarks.md section 7); a permuted copy still starts from its exact selection.
    """
    if basis_change:
        best = "correlation"
    elif generative:
        best = FRESH
    else:
        best = "correlation" if selection_only else "lstsq"
    if align == "none":
        if mismatch:
            raise WidthMismatchError(
                f"Source and target differ in width: {mismatch}.",
                "A direct tensor mapping needs equal widths: use --align lstsq (or auto, correlation, distill).",
            )
        return AlignmentPlan(None, False, "--align none: direct tensor mapping; compatibility not measured")
    if align == "auto":
        if mismatch:
            return AlignmentPlan(best, True, f"shapes differ ({mismatch}): {_refined(best, generative)}",
                                 refine_below=AUTO_REFINE_BELOW)
        if verdict == "compatible":
            return AlignmentPlan(None, False, "shapes agree and the bases share a hidden space (measured): direct tensor mapping")
        if verdict == "incompatible":
            space = "the same space in another basis" if basis_change else "hidden spaces that differ"
            return AlignmentPlan(best, True, f"shapes agree but the bases have {space} (measured): {_refined(best, generative)}",
                                 refine_below=AUTO_REFINE_BELOW)
        raise CompatibilityUnknownError(
            "--align auto copies tensors only between bases measured to share a hidden space, and this could not be "
            "measured: neither base's token embeddings could be read (weights not cached, offline, or not safetensors).",
            "Pass --align none to copy tensors anyway (valid for a fine-tune or a student cut from the source), or "
            "--align lstsq, correlation or distill to align the two models on calibration text.",
        )
    if align == "distill":  # the best start, refined: a copy only between bases measured compatible
        if mismatch is None and verdict == "compatible":
            return AlignmentPlan(None, True, "shapes agree and the bases share a hidden space (measured): direct tensor "
                                             "mapping, refined by distillation")
        why = f"shapes differ ({mismatch})" if mismatch else f"shapes agree, compatibility {verdict or 'not measured'}"
        return AlignmentPlan(best, True, f"{why}: {_refined(best, generative)}")
    if align in METHODS:
        return AlignmentPlan(align, False, f"--align {align} requested" + (f"; shapes differ ({mismatch})" if mismatch else ""))
    if align == FRESH:  # a new adapter is only worth its distillation
        return AlignmentPlan(FRESH, True, "--align fresh requested: a new adapter on the target, trained by distillation")
    raise UsageError(f"Unknown alignment {align!r}.", f"Use one of {', '.join(ALIGN_CHOICES)}.")


def _refined(start: str, generative: bool) -> str:
    """How a start is refined, in the plan's words."""
    how = "distillation on the teacher's own answers" if generative else "distillation"
    return f"a fresh adapter trained by {how}" if start == FRESH else f"{start} alignment refined by {how}"


@dataclass(frozen=True)
class ModuleMapping:
    """How one target role is built from source roles in a mapped layer."""

    target_role: str
    operation: str  # copy | fuse | split | relayout
    source_roles: tuple[str, ...]


@dataclass(frozen=True)
class ConversionPlan:
    peft_type: str
    source_arch: Architecture
    target_arch: Architecture
    source_dims: Dims
    target_dims: Dims
    layer_map: LayerMap
    modules: tuple[ModuleMapping, ...]
    embeddings: tuple[str, ...]
    heads: dict[str, str]  # source head module -> target head module
    source_prefix: str
    target_prefix: str
    task_type: str | None = None
    alignment: AlignmentPlan = AlignmentPlan(None, False, "shapes agree: direct tensor mapping")
    dropped: tuple[str, ...] = ()
    # expert LoRAs (peft target_parameters), copied between equal expert layouts: (source layer, key in it, target key)
    expert_tensors: tuple[tuple[int, str, str], ...] = ()
    # a model with several layer stacks (encoder, decoder): one plan per stack, each over its own
    # layers (``stack`` names it); this plan then holds only the embeddings and heads
    stacks: tuple[ConversionPlan, ...] = ()
    stack: str = ""
    # target head -> its parameters the source head lacks, written as zeros (a bias: the same logits)
    head_zeros: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def fetches_weights(self) -> bool:
        """Whether the conversion reads the bases' weights (alignment runs both models), beyond what
        planning read of each (config, tokenizer, shard index, and the probe's embedding rows)."""
        return self.alignment.needs_models

    @property
    def aligned_roles(self) -> tuple[str, ...]:
        """The plain roles a fitted alignment maps: each mapped role, a fused one by its parts (q, k
        and v of qkv), whichever side fuses them: split, aligned part by part, fused again."""
        return tuple(dict.fromkeys(part for m in self.modules for part in roles().parts(m.target_role)))

    def module_path(self, role: str, layer: int, *, target: bool) -> str:
        """The module's name inside the base model, e.g. ``bert.encoder.layer.0.attention.self.query``."""
        arch, prefix = (self.target_arch, self.target_prefix) if target else (self.source_arch, self.source_prefix)
        return f"{prefix}{arch.layers}.{layer}.{arch.modules[role]}"


def map_roles(source_roles: list[str], source: Architecture, target: Architecture) -> tuple[ModuleMapping, ...]:
    """Join source and target on role: copy, fuse parts, split a fused module, or re-order one."""
    all_roles = roles()
    mappings, used = [], set()
    for target_role in target.modules:
        target_parts = set(all_roles.parts(target_role))
        sources = tuple(r for r in source_roles if target_parts & set(all_roles.parts(r)))
        if not sources:
            continue
        fused_target = len(target_parts) > 1
        if sources == (target_role,):
            same_layout = not fused_target or source.layout(target_role) == target.layout(target_role)
            operation = "copy" if same_layout else "relayout"
        elif fused_target and all(len(all_roles.parts(r)) == 1 for r in sources):
            operation = "fuse"
        elif len(sources) == 1 and not fused_target:
            operation = "split"
        else:
            raise UnsupportedError(
                f"Cannot build {target.model_type} {target_role} from {source.model_type} {', '.join(sources)}.",
                "Convert onto an architecture whose projections are fused the same way.",
            )
        if operation != "copy":
            _check_layouts_known(operation, target_role, sources, source, target)
        mappings.append(ModuleMapping(target_role, operation, sources))
        used |= {p for r in sources for p in all_roles.parts(r) if p in target_parts}
    lost = [p for r in source_roles for p in all_roles.parts(r) if p not in used]
    if lost:
        raise UnsupportedError(
            f"The adapter adapts {', '.join(sorted(set(lost)))} of {source.model_type}, which {target.model_type} "
            f"has no module for (its roles: {', '.join(target.modules)}).",
            "Pick a target architecture with those modules, or retrain the adapter without them.",
        )
    return tuple(mappings)


def _check_layouts_known(operation: str, target_role: str, sources: tuple[str, ...], source: Architecture, target: Architecture) -> None:
    """Fusing, splitting or re-ordering a fused module needs its row order, which a derived
    architecture knows only from a data file: without one it copies onto its own type only."""
    fused = [(target, target_role)] if operation in ("fuse", "relayout") else []
    fused += [(source, r) for r in sources if r in roles().fused]
    for arch, role in fused:
        if role in roles().fused and not arch.known_layout(role):
            raise UnsupportedError(
                f"{arch.model_type}'s fused {role} module {arch.modules[role]!r} has rows of q, k and v (or gate and up) "
                f"in an order its module tree does not tell, so it cannot be "
                f"{ {'fuse': 'fused', 'split': 'split', 'relayout': 're-ordered'}.get(operation, operation)}"
                + (f" for {target.model_type}" if arch is source else f" from {source.model_type}") + ".",
                f"Convert between models of the same type, or state the order in adapter_convert/architectures/data/"
                f"{arch.model_type}.json (\"fused_layout\": {{\"{role}\": \"concat\" or \"per_head\"}}) after checking its code.",
            )


def plan_conversion(
    parsed: ParsedAdapter,
    *,
    peft_type: str,
    task_type: str | None,
    source_arch: Architecture,
    target_arch: Architecture,
    source_dims: Dims,
    target_dims: Dims,
    layer_map: LayerMap,
    align: str = "auto",
    verdict: str | None = None,
    basis_change: bool = False,
) -> ConversionPlan:
    """``verdict``: the measured compatibility of the two bases (None: not measured)."""
    if source_arch.stacks or target_arch.stacks:
        return _plan_stacks(parsed, peft_type=peft_type, task_type=task_type, source_arch=source_arch, target_arch=target_arch,
                            source_dims=source_dims, target_dims=target_dims, layer_map=layer_map, align=align, verdict=verdict,
                            basis_change=basis_change)
    # only the roles of the source layers the map takes: a hybrid target may lack a role altogether
    # (no full-attention layer among its few) when the source layers that have it are not mapped
    mapped = {s for sources in layer_map.sources.values() for s in sources}
    modules = map_roles([r for r in parsed.roles if any((s, r) in parsed.layers for s in mapped)], source_arch, target_arch)
    for role in parsed.embeddings:
        if role not in target_arch.embeddings:
            raise UnsupportedError(f"{target_arch.model_type} has no {role} module to carry the adapted embedding to.")
    embeddings = tuple(parsed.embeddings)
    selection_only = peft_type == "IA3" or any("lora_magnitude_vector" in params for params in parsed.layers.values())
    alignment = plan_alignment(align, width_mismatch(modules, embeddings, source_dims, target_dims), verdict,
                               selection_only=selection_only, basis_change=basis_change, generative=task_type in WRITES_TEXT)
    check_partial_roles(parsed, modules, source_arch, target_arch, layer_map)
    if alignment.method is not None:
        _check_alignable(embeddings, layer_map, fresh=alignment.method == FRESH)
    if alignment.method == FRESH and parsed.heads:
        raise UnsupportedError(
            f"A fresh adapter has no task head to start from, and this adapter trains {', '.join(parsed.heads)}.",
            "Use --align lstsq or distill: they carry the head over through the hidden-state map.",
        )
    partial = sorted({r for m in modules for r in (m.target_role, *m.source_roles) if r in source_arch.partial or r in target_arch.partial})
    if alignment.needs_models and partial:
        raise UnsupportedError(
            f"{alignment.reason[0].upper()}{alignment.reason[1:]}, but the adapted {', '.join(partial)} are in only some layers "
            f"of {source_arch.model_type if any(r in source_arch.partial for r in partial) else target_arch.model_type} (a hybrid "
            "model), and alignment captures every role in every mapped layer.",
            "Pass --align none to copy the tensors (valid between bases that share their hidden spaces: a fine-tune, a student "
            "cut from the source's layers), or retrain the adapter without those modules.",
        )
    heads, head_zeros = {}, {}
    for head, params in parsed.heads.items():
        target_head = target_arch.heads.get(task_type or "") if head == source_arch.heads.get(task_type or "") else head
        weight = params.get("weight")
        if alignment.method is None and weight is not None and weight.ndim == 2 and weight.shape[1] != target_dims.hidden:
            raise WidthMismatchError(
                f"Task head {head!r} reads {weight.shape[1]} features but the target's hidden size is {target_dims.hidden}.",
                "Heads carry over only between models of the same hidden size.",
            )
        heads[head] = target_head or head
        if head == source_arch.heads.get(task_type or "") and task_type in target_arch.head_params:
            zeros = check_head_params(head, params, target_arch, task_type)
            if zeros:
                head_zeros[heads[head]] = zeros
    expert_tensors = plan_experts(parsed, source_arch, target_arch, source_dims, target_dims, layer_map, alignment)
    return ConversionPlan(
        peft_type=peft_type,
        source_arch=source_arch,
        target_arch=target_arch,
        source_dims=source_dims,
        target_dims=target_dims,
        layer_map=layer_map,
        modules=modules,
        embeddings=embeddings,
        heads=heads,
        source_prefix=parsed.prefix,
        target_prefix=target_arch.backbone + "." if parsed.prefix and target_arch.backbone else "",
        task_type=task_type,
        alignment=alignment,
        dropped=tuple(parsed.dropped),
        expert_tensors=expert_tensors,
        head_zeros=head_zeros,
    )


def _plan_stacks(parsed: ParsedAdapter, *, peft_type: str, task_type: str | None, source_arch: Architecture,
                 target_arch: Architecture, source_dims: Dims, target_dims: Dims, layer_map: LayerMap, align: str,
                 verdict: str | None, basis_change: bool) -> ConversionPlan:
    """An adapter on a model with several layer stacks (an encoder-decoder): each stack planned as a
    one-stack conversion of its own (encoder layers onto encoder layers, decoder onto decoder), the
    embeddings and task heads once. Its tensors are copied, or, for a seq2seq LM, replaced by a
    fresh adapter distilled on the teacher's answers: fitted maps capture the activations of one
    stack of layers, not of two joined by cross-attention."""
    names = [stack.name for stack in source_arch.stacks]
    if names != [stack.name for stack in target_arch.stacks]:
        raise UnsupportedError(
            f"{_stacks_described(source_arch)}, but {_stacks_described(target_arch)}: an adapter's layers convert only onto "
            "the same layer stacks (encoder layers onto encoder layers, decoder onto decoder, cross-attention onto cross-attention).",
            "Convert an encoder-decoder adapter onto an encoder-decoder model (the same type with fewer layers, or one with "
            "the same roles and widths), and a single-stack adapter onto a single-stack model.",
        )
    mismatch = None
    for name in names:
        modules = map_roles(parsed.stacks[name].roles, source_arch.stack(name), target_arch.stack(name))
        mismatch = mismatch or width_mismatch(modules, (), source_dims.stack(name), target_dims.stack(name))
    mismatch = mismatch or width_mismatch((), tuple(parsed.embeddings), source_dims, target_dims)
    selection_only = peft_type == "IA3" or any("lora_magnitude_vector" in params for part in parsed.stacks.values()
                                               for params in part.layers.values())
    # a seq2seq LM writes text: a fresh adapter distilled on the teacher's answers reads no source tensor,
    # so neither the widths nor the stacks' cross-attention matter to it; fitted maps capture one stack only
    generative = task_type in WRITES_TEXT
    if mismatch and not (generative and align != "none"):
        raise WidthMismatchError(
            f"Source and target differ in width: {mismatch}.",
            "An encoder-decoder adapter is only copied, which needs equal widths: convert onto a model of the same widths"
            + (", or pass --align fresh (or auto) to distil a new adapter on the source adapter's own answers." if generative else
               " (alignment across widths is defined for single-stack models and for seq2seq LMs, by distillation)."),
        )
    # a permuted copy's exact start (correlation) is a fitted map: a seq2seq LM starts fresh there too
    alignment = plan_alignment(align, mismatch, verdict, selection_only=selection_only, basis_change=basis_change and not generative,
                               generative=generative)
    fresh = alignment.method == FRESH
    # output distillation starts from a fresh adapter or from the copied tensors (--align distill between compatible bases)
    if alignment.needs_models and not (generative and alignment.method in (FRESH, None)):
        raise UnsupportedError(
            f"{alignment.reason[0].upper()}{alignment.reason[1:]}, but fitted alignment maps are defined for single-stack "
            f"models, not yet for {source_arch.model_type}'s {' and '.join(names)} joined by cross-attention.",
            " ".join(fix for fix, applies in (
                ("Pass --align none to copy the tensors (valid between bases that share their hidden spaces: a fine-tune, a "
                 "student cut from the source's layers).", not mismatch),  # a copy needs equal widths
                ("Pass --align fresh (or auto) to distil a new adapter on the source adapter's own answers.", generative)) if applies),
        )
    # a seq2seq adapter was saved from the task model even where its keys carry no backbone (t5's
    # seq2seq model keeps its stacks at its top): the target's keys go under the target's backbone
    task_model = bool(parsed.prefix) or task_type == "SEQ_2_SEQ_LM"
    target_prefix = target_arch.backbone + "." if task_model and target_arch.backbone else ""
    common = dict(peft_type=peft_type, task_type=task_type, align=FRESH if fresh else "none")
    stacks = tuple(
        dataclasses.replace(plan_conversion(parsed.stacks[name], source_arch=source_arch.stack(name), target_arch=target_arch.stack(name),
                                            source_dims=source_dims.stack(name), target_dims=target_dims.stack(name),
                                            layer_map=dict(layer_map.stacks)[name], **common), stack=name, target_prefix=target_prefix)
        for name in names
    )
    # embeddings and heads: planned once, with the first stack's view (they lie outside every stack)
    outside = plan_conversion(parsed, source_arch=source_arch.stack(names[0]), target_arch=target_arch.stack(names[0]),
                              source_dims=source_dims.stack(names[0]), target_dims=target_dims.stack(names[0]), layer_map=layer_map, **common)
    return dataclasses.replace(outside, source_arch=source_arch, target_arch=target_arch, source_dims=source_dims, target_dims=target_dims,
                               alignment=alignment, stacks=stacks, target_prefix=target_prefix)


def _stacks_described(arch: Architecture) -> str:
    if arch.stacks:
        return f"{arch.model_type} has {len(arch.stacks)} layer stacks, " + " and ".join(f"{s.name} ({s.layers})" for s in arch.stacks)
    return f"{arch.model_type} has one stack of layers ({arch.layers})"


def plan_experts(parsed: ParsedAdapter, source_arch: Architecture, target_arch: Architecture, source_dims: Dims,
                 target_dims: Dims, layer_map: LayerMap, alignment: AlignmentPlan) -> tuple[tuple[int, str, str], ...]:
    """Expert LoRAs (peft ``target_parameters``: one LoRA per 3-D expert weight, its rank times the
    number of experts) carry over only as they are: onto layers whose experts have the same names,
    number and shapes, one source layer per target layer, without alignment. Returns what to copy:
    (source layer, key inside it, target key)."""
    if not parsed.experts:
        return ()
    adapted = sorted({layer for layer, _ in parsed.experts})

    def refuse(why: str) -> UnsupportedError:
        return UnsupportedError(
            f"The adapter has LoRAs on the experts' weights (peft target_parameters, {source_arch.model_type} layers "
            f"{_short_list(adapted)}), which carry over only between the same expert layout: {why}.",
            "Convert onto a model with the same experts (number and shapes) in every mapped layer, with --align none "
            "and a one-to-one layer map; or retrain the adapter without target_parameters (attention and shared-expert "
            "modules convert between any widths).",
        )

    if target_arch.experts == source_arch.experts and None in (target_dims.expert_shapes, source_dims.expert_shapes):
        raise refuse("the experts' shapes could not be read from the models' configs (transformers cannot build them)")
    if target_arch.experts != source_arch.experts:
        raise refuse(f"{target_arch.model_type} has no experts module at {source_arch.experts!r}"
                             + (f" (its experts are at {target_arch.experts!r})" if target_arch.experts else ""))
    if alignment.method is not None or alignment.refine:
        raise refuse(f"this conversion aligns or distils ({alignment.reason}), and expert weights are copied only")
    suffixes = sorted({suffix for _, suffix in parsed.experts})
    pairs = []
    for target, sources in layer_map.rows():
        target_experts = target_dims.expert_shapes[target]
        carried = [s for s in sources if s in adapted]
        if not carried:
            if target_experts and adapted:
                raise refuse(f"target layer {target} has experts but takes source layer(s) {list(sources)}, whose "
                                     "experts carry no LoRA (peft's target_parameters adapts the experts of every layer)")
            continue
        if len(sources) > 1:
            raise refuse(f"target layer {target} averages source layers {list(sources)}")
        (source,) = sources
        if target_experts != source_dims.expert_shapes[source]:
            raise refuse(f"source layer {source} has experts {_describe_experts(source_dims.expert_shapes[source])}, "
                                 f"target layer {target} {_describe_experts(target_experts)}")
        for suffix in suffixes:
            if (source, suffix) in parsed.experts:
                pairs.append((source, suffix, f"{PEFT_PREFIX}{target_arch.backbone + '.' if parsed.prefix else ''}"
                                              f"{target_arch.layers}.{target}.{suffix}"))
    return tuple(pairs)


def check_partial_roles(parsed: ParsedAdapter, modules: tuple[ModuleMapping, ...], source_arch: Architecture,
                        target_arch: Architecture, layer_map: LayerMap) -> None:
    """In a hybrid target some roles are only in some layers: an adapted module may land only on a
    target layer that has its role. One sent onto a layer without it is refused, never dropped."""
    for target, sources in layer_map.rows():
        for mapping in modules:
            if target_arch.has_role(mapping.target_role, target):
                continue
            carried = [s for s in sources if any((s, r) in parsed.layers for r in mapping.source_roles)]
            if not carried:
                continue
            role = mapping.target_role
            having = target_arch.partial[role]
            # an explicit map that keeps every adapted module on a layer with its role, where one exists
            pairs = []
            for t, (current, *_) in layer_map.rows():
                fits = [s for s in {s for s, _ in parsed.layers} if all(target_arch.has_role(m.target_role, t) for m in modules
                                                                        if any((s, r) in parsed.layers for r in m.source_roles))]
                if fits:
                    pairs.append(f"{min(fits, key=lambda s: (abs(s - current), s))}:{t}")
            example = f", e.g. --layer-map {','.join(pairs)!r}" if pairs else ""
            raise LayerMapError(
                f"The layer map sends source layer {', '.join(map(str, carried))} (its {role} adapted, "
                f"{source_arch.model_type}'s {source_arch.modules[mapping.source_roles[0]]!r}) onto target layer {target}, "
                f"which has no {role}: {target_arch.model_type} has {target_arch.modules[role]!r} only in layers "
                f"{_short_list(list(having))}. The adapted module would be dropped.",
                f"Map the adapted source layers onto target layers that have {role} with an explicit layer map{example}; "
                "target layers left out get no adapter.",
            )


def _short_list(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")


def _describe_experts(shapes) -> str:
    if not shapes:
        return "none (a dense layer)"
    return ", ".join(f"{name} {shape[0]} x {' x '.join(map(str, shape[1:]))}" for name, shape in shapes)


def check_head_params(head: str, params: dict[str, torch.Tensor], target: Architecture, task_type: str) -> tuple[str, ...]:
    """The task head carries over only onto a head with the same parameters. A trained bias is
    never dropped: every logit would lose its class's offset, so the head would no longer compute
    what was trained (peft would also refuse the unexpected key at write time, exit 7). A head
    without a bias onto one with a bias gets a zero bias: the same logits, exactly. Returns the
    target's parameters to write as zeros."""
    target_head, wanted = target.heads[task_type], set(target.head_params[task_type])
    extra, missing = sorted(set(params) - wanted), sorted(wanted - set(params))
    if not extra and not missing:
        return ()
    if missing == ["bias"] and not extra and params.get("weight") is not None and params["weight"].ndim == 2:
        return ("bias",)
    where = f"{target.model_type}'s {task_type} head {target_head!r}"
    if extra == ["bias"] and not missing:
        bias = params["bias"]
        if not bias.any():  # exact without it, but the file is the user's to change
            raise UnsupportedError(
                f"The adapter's task head {head!r} has a bias, which {where} lacks; the bias is all zeros, so the head "
                "computes the same without it.",
                f"Delete the tensor '{PEFT_PREFIX}{head}.bias' from the adapter's weights file and convert again.",
            )
        raise UnsupportedError(
            f"The adapter's task head {head!r} has a trained bias ({bias.numel()} values, largest |b| = "
            f"{bias.abs().max().item():.3g}), but {where} has none: dropping it would shift the logits, so the head "
            "would not compute what it was trained to.",
            f"Convert onto a target whose {task_type} head has a bias, or train the source head without one; or remove "
            f"{head!r} from modules_to_save (and its tensors) and train a new head on the target.",
        )
    raise UnsupportedError(
        f"The adapter's task head {head!r} has parameters {', '.join(sorted(params))}, but {where} has "
        f"{', '.join(sorted(wanted)) or 'none'}: the heads are built differently.",
        f"Convert onto a target whose {task_type} head has the same parameters, or remove {head!r} from modules_to_save "
        "(and its tensors) and train a new head on the target.",
    )


def _check_alignable(embeddings: tuple[str, ...], layer_map: LayerMap, *, fresh: bool = False) -> None:
    """What a fitted alignment cannot map. A fresh adapter reads no source tensor: several source
    layers per target layer do not matter to it. Fused projections align part by part
    (``ConversionPlan.aligned_roles``)."""
    if embeddings:
        raise UnsupportedError("An adapted embedding cannot be aligned across widths.", "Retrain the adapter without the embedding LoRA.")
    if fresh:
        return
    if any(len(sources) > 1 for sources in layer_map.sources.values()):
        raise UnsupportedError("Alignment needs one source layer per target layer; AVG maps several.", "Use --layer-map skip or uniform.")
