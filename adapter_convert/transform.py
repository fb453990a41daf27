"""Pure tensor transforms: turn the source adapter's modules into the target's.

No file or Hub access here. Every operation preserves each module's delta exactly:

* LoRA computes ``delta W = s * B @ A`` with ``A`` (r x in), ``B`` (out x r), scaling ``s``.
  Fusing parts q, k, v (of ranks r_q, r_k, r_v) into one qkv module stacks their A's and places
  their B's block-diagonally, folding each part's scaling into its block::

      A' = [A_q; A_k; A_v]                 ((r_q + r_k + r_v) x in)
      B' = [[B_q s_q/s', 0, 0],
            [0, B_k s_k/s', 0],             (out_qkv x (r_q + r_k + r_v)), rows placed by the layout
            [0, 0, B_v s_v/s']]

  so ``s' B' A' = [s_q B_q A_q; s_k B_k A_k; s_v B_v A_v]``. Splitting takes the part's rows of
  ``B`` and keeps ``A``: same rank, same scaling. A missing part (k not adapted) is a zero block.
  Parts that share one ``A`` and scaling (a split module's, aligned with one input map) fuse back
  at their rank: ``A' = A``, each part's ``B`` in its rows.
* DoRA magnitude vectors are per output row, so they follow the rows of ``B``.
* IA3 vectors scale outputs (``out x 1``, follow the rows) or inputs (``1 x in``, shared by parts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from peft.utils.other import get_pattern_key

from .architectures import part_sizes, roles
from .errors import UnsupportedError
from .plan import PEFT_PREFIX, ConversionPlan, ModuleMapping, ParsedAdapter


@dataclass
class LoraModule:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scaling: float
    magnitude: torch.Tensor | None = None  # DoRA, (out,)

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.B.double() @ self.A.double())


@dataclass
class Ia3Module:
    vector: torch.Tensor  # (out, 1) scales outputs; (1, in) scales inputs ("feedforward" modules)

    @property
    def scales_inputs(self) -> bool:
        return self.vector.shape[0] == 1 and self.vector.shape[1] != 1


AdapterModule = LoraModule | Ia3Module


def fused_rows(layout: str, sizes: list[int], heads: int) -> list[torch.Tensor]:
    """Row indices of each part inside a fused module's output.

    ``concat``: parts one after another (phi3 qkv_proj, gpt2 c_attn). ``per_head``: for each head,
    one head_dim slice of every part in turn (gpt_neox query_key_value is [heads, 3, head_dim]).
    """
    if layout == "concat":
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [torch.arange(start, start + size) for start, size in zip(starts, sizes)]
    if layout == "per_head":
        head_dim = sizes[0] // heads
        if any(size != heads * head_dim for size in sizes):
            raise UnsupportedError(f"A per-head fused layout needs equal part sizes, got {sizes}.")
        base = torch.arange(heads)[:, None] * len(sizes) * head_dim + torch.arange(head_dim)[None, :]
        return [(base + part * head_dim).reshape(-1) for part in range(len(sizes))]
    raise UnsupportedError(f"Unknown fused layout {layout!r}; known: concat, per_head.")


def split_part(module: AdapterModule, rows: torch.Tensor) -> AdapterModule:
    if isinstance(module, Ia3Module):
        return module if module.scales_inputs else Ia3Module(module.vector[rows].clone())
    magnitude = None if module.magnitude is None else module.magnitude[rows].clone()
    return LoraModule(module.A.clone(), module.B[rows].clone(), module.scaling, magnitude)


def fuse_parts(parts: list[AdapterModule | None], rows: list[torch.Tensor], out_total: int) -> AdapterModule:
    present = [(p, r) for p, r in zip(parts, rows) if p is not None]
    first = present[0][0]
    if isinstance(first, Ia3Module):
        if first.scales_inputs:
            if len(present) < len(parts) or any(not torch.equal(p.vector, first.vector) for p, _ in present):
                raise UnsupportedError(
                    "Fusing IA3 input-scaling (feedforward) vectors needs every part present and equal.",
                    "Convert onto an architecture with separate projections.",
                )
            return Ia3Module(first.vector.clone())
        vector = torch.ones(out_total, 1, dtype=first.vector.dtype)
        for part, part_rows in present:
            vector[part_rows] = part.vector
        return Ia3Module(vector)
    scaling = first.scaling
    if len(present) > 1 and all(p.magnitude is None and p.scaling == scaling and torch.equal(p.A, first.A) for p, _ in present):
        B = torch.zeros(out_total, first.rank, dtype=first.B.dtype)  # one A: the rank stays
        for part, part_rows in present:
            B[part_rows] = part.B
        return LoraModule(first.A.clone(), B, scaling)
    A = torch.cat([p.A for p, _ in present])
    B = torch.zeros(out_total, A.shape[0], dtype=first.B.dtype)
    col = 0
    for part, part_rows in present:
        B[part_rows, col : col + part.rank] = part.B * (part.scaling / scaling)
        col += part.rank
    magnitude = None
    if any(p.magnitude is not None for p, _ in present):
        if len(present) < len(parts):
            raise UnsupportedError(
                "Fusing DoRA modules needs every part adapted: the magnitude of an unadapted part comes from base "
                "weights, which a same-width conversion does not read.",
                "Train the DoRA adapter on all of q, k and v (or gate and up), or convert onto separate projections.",
            )
        magnitude = torch.empty(out_total, dtype=first.magnitude.dtype)
        for part, part_rows in present:
            magnitude[part_rows] = part.magnitude
    return LoraModule(A, B, scaling, magnitude)


def relayout(module: AdapterModule, source_rows: list[torch.Tensor], target_rows: list[torch.Tensor]) -> AdapterModule:
    """Move a fused module's rows from one layout to another (gpt_neox per-head -> concat)."""
    order = torch.empty(sum(len(r) for r in target_rows), dtype=torch.long)
    for src, tgt in zip(source_rows, target_rows):
        order[tgt] = src
    return split_part(module, order)


def average(modules: list[AdapterModule]) -> AdapterModule:
    """Parameter mean over layers (the paper's AVG); LoRA scalings are folded into B first."""
    first = modules[0]
    if len(modules) == 1:
        return first
    if isinstance(first, Ia3Module):
        return Ia3Module(torch.stack([m.vector for m in modules]).mean(0))
    if len({m.rank for m in modules}) > 1:
        raise UnsupportedError(
            f"AVG needs equal ranks in the averaged layers, got {sorted({m.rank for m in modules})}.",
            "Use --layer-map skip.",
        )
    mean = lambda ts: torch.stack(ts).mean(0)  # noqa: E731
    magnitude = None if first.magnitude is None else mean([m.magnitude for m in modules])
    B = mean([m.B * (m.scaling / first.scaling) for m in modules])
    return LoraModule(mean([m.A for m in modules]), B, first.scaling, magnitude)


def lora_scaling(config, module_name: str, rank: int) -> float:
    """The scaling peft applies to ``module_name``: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    alpha = config.lora_alpha
    for pattern, value in (config.alpha_pattern or {}).items():
        if _pattern_matches(pattern, module_name):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if config.use_rslora else rank)


def lora_alpha_for(config, scaling: float, rank: int) -> float | int:
    alpha = scaling * (math.sqrt(rank) if config.use_rslora else rank)
    return round(alpha) if abs(alpha - round(alpha)) < 1e-6 else alpha


def _pattern_matches(pattern: str, module_name: str) -> bool:
    # peft's own rule: the pattern matches a dotted suffix of the module name
    return get_pattern_key([pattern], module_name) == pattern


def read_module(params: dict[str, torch.Tensor], config, module_name: str) -> AdapterModule:
    if "ia3_l" in params:
        return Ia3Module(params["ia3_l"])
    A, B = params["lora_A.weight"], params["lora_B.weight"]
    return LoraModule(A, B, lora_scaling(config, module_name, A.shape[0]), params.get("lora_magnitude_vector"))


def module_tensors(module: AdapterModule) -> dict[str, torch.Tensor]:
    if isinstance(module, Ia3Module):
        return {"ia3_l": module.vector.contiguous()}
    out = {"lora_A.weight": module.A.contiguous(), "lora_B.weight": module.B.contiguous()}
    if module.magnitude is not None:
        out["lora_magnitude_vector"] = module.magnitude.contiguous()
    return out


@dataclass
class ConvertedModule:
    name: str  # inside the base model: bert.encoder.layer.0.attention.self.query
    role: str
    layer: int | None
    module: AdapterModule


@dataclass
class ConvertedAdapter:
    modules: list[ConvertedModule]
    tensors: dict[str, torch.Tensor]  # peft state-dict keys, ready to save


def convert_tensors(
    plan: ConversionPlan, parsed: ParsedAdapter, config, on_module=lambda: None, *,
    aligned_modules: Mapping[tuple[int, str], AdapterModule] | None = None, aligned_heads: Mapping[str, dict] | None = None,
) -> ConvertedAdapter:
    """Apply ``plan`` to the parsed adapter. ``on_module`` is called once per target module (progress).
    With an alignment, ``aligned_modules`` (per target layer and role, ``<stack>/<role>`` in a
    model of several stacks) and ``aligned_heads`` (per source head) are the already-folded values,
    used in place of the copies."""
    converted: list[ConvertedModule] = []
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for stack in plan.stacks:  # several layer stacks (encoder, decoder): each by its own plan
        mine = None if aligned_modules is None else {(layer, role.removeprefix(f"{stack.stack}/")): module
                                                     for (layer, role), module in aligned_modules.items() if role.startswith(f"{stack.stack}/")}
        part = convert_tensors(stack, parsed.stacks[stack.stack], config, on_module, aligned_modules=mine)
        converted += part.modules
        tensors |= part.tensors
    for target_layer, source_layers in plan.layer_map.rows():
        for mapping in plan.modules:
            per_layer = [m for layer in source_layers if (m := _build(plan, parsed, config, mapping, layer)) is not None]
            on_module()
            if not per_layer:
                continue
            if len(per_layer) < len(source_layers):
                raise UnsupportedError(
                    f"Target layer {target_layer} averages source layers {list(source_layers)}, but only some of them "
                    f"adapt {mapping.target_role}.",
                    "Use --layer-map skip or an explicit map.",
                )
            module = average(per_layer) if aligned_modules is None else aligned_modules[(target_layer, mapping.target_role)]
            name = plan.module_path(mapping.target_role, target_layer, target=True)
            converted.append(ConvertedModule(name, mapping.target_role, target_layer, module))
            for key, value in module_tensors(module).items():
                # a source layer feeding several target layers (a deeper target) must give each its
                # own copy: safetensors refuses to save tensors that share memory
                if value.untyped_storage().data_ptr() in storages:
                    value = value.clone()
                storages.add(value.untyped_storage().data_ptr())
                tensors[f"{PEFT_PREFIX}{name}.{key}"] = value
    for role in plan.embeddings:  # same vocabulary and width: copied as they are
        params = parsed.embeddings[role]
        A, B = params["lora_embedding_A"], params["lora_embedding_B"]
        source_name = plan.source_prefix + plan.source_arch.embeddings[role]
        name = plan.target_prefix + plan.target_arch.embeddings[role]
        module = LoraModule(A, B, lora_scaling(config, source_name, A.shape[0]))
        converted.append(ConvertedModule(name, role, None, module))
        tensors |= {f"{PEFT_PREFIX}{name}.{k}": v.clone() for k, v in params.items()}
    for source_layer, key, target_key in plan.expert_tensors:  # expert LoRAs: equal layouts, copied (plan.plan_experts)
        tensors[target_key] = parsed.experts[(source_layer, key)].clone()
    for source_head, target_head in plan.heads.items():
        params = (aligned_heads or parsed.heads)[source_head]
        tensors |= {f"{PEFT_PREFIX}{target_head}.{k}": v.clone() for k, v in params.items()}
        for name in plan.head_zeros.get(target_head, ()):  # a bias the source head did not have: zero, the same logits
            tensors[f"{PEFT_PREFIX}{target_head}.{name}"] = params["weight"].new_zeros(params["weight"].shape[0])
    return ConvertedAdapter(converted, tensors)


def _build(plan: ConversionPlan, parsed: ParsedAdapter, config, mapping: ModuleMapping, layer: int) -> AdapterModule | None:
    """The target module for ``mapping`` from source layer ``layer``, or None if nothing is adapted there."""

    def source(role: str) -> AdapterModule | None:
        params = parsed.layers.get((layer, role))
        return None if params is None else read_module(params, config, plan.module_path(role, layer, target=False))

    target_role = mapping.target_role
    if mapping.operation == "copy":
        return source(target_role)
    if mapping.operation == "split":
        (source_role,) = mapping.source_roles
        module = source(source_role)
        if module is None:
            return None
        part_index = roles().parts(source_role).index(target_role)
        return split_part(module, _rows(plan, source_role, target=False)[part_index])
    if mapping.operation == "relayout":
        module = source(target_role)
        if module is None:
            return None
        return relayout(module, _rows(plan, target_role, target=False), _rows(plan, target_role, target=True))
    # fuse: each part comes from a plain source role, or is missing
    parts = [source(part) for part in roles().parts(target_role)]
    if all(p is None for p in parts):
        return None
    rows = _rows(plan, target_role, target=True)
    return fuse_parts(parts, rows, sum(len(r) for r in rows))


def source_part(plan: ConversionPlan, parsed: ParsedAdapter, config, layer: int, part: str) -> AdapterModule | None:
    """Source layer ``layer``'s module for the plain role ``part``: its own, or its rows of the
    fused module that holds it (q of qkv); None where it is not adapted."""
    params = parsed.layers.get((layer, part))
    if params is not None:
        return read_module(params, config, plan.module_path(part, layer, target=False))
    for fused in roles().fused:
        if part in roles().parts(fused) and (layer, fused) in parsed.layers:
            module = read_module(parsed.layers[(layer, fused)], config, plan.module_path(fused, layer, target=False))
            return split_part(module, _rows(plan, fused, target=False)[roles().parts(fused).index(part)])
    return None


def fuse_aligned(plan: ConversionPlan, parts: Mapping[tuple[int, str], AdapterModule]) -> dict[tuple[int, str], AdapterModule]:
    """Aligned modules per (target layer, plain role) as the target's modules: a fused target
    role's parts fused again in its layout (``fuse_parts``), a plain one as it is."""
    modules = {}
    for target_layer, _ in plan.layer_map.rows():
        for mapping in plan.modules:
            role = mapping.target_role
            if role not in roles().fused:
                if (target_layer, role) in parts:
                    modules[(target_layer, role)] = parts[(target_layer, role)]
                continue
            pieces = [parts.get((target_layer, part)) for part in roles().parts(role)]
            if any(p is not None for p in pieces):
                rows = _rows(plan, role, target=True)
                modules[(target_layer, role)] = fuse_parts(pieces, rows, sum(len(r) for r in rows))
    return modules


def _rows(plan: ConversionPlan, fused_role: str, *, target: bool) -> list[torch.Tensor]:
    arch, dims = (plan.target_arch, plan.target_dims) if target else (plan.source_arch, plan.source_dims)
    return fused_rows(arch.layout(fused_role), part_sizes(fused_role, dims), dims.heads)
