"""The target adapter's config, built through peft's own config classes."""

from __future__ import annotations

import dataclasses

from peft import PeftConfig

from .architectures import Architecture
from .plan import ConversionPlan
from .transform import ConvertedAdapter, ConvertedModule, Ia3Module, LoraModule, lora_alpha_for

def minimal_suffix(path: str, others: list[str]) -> str | None:
    """The shortest dotted suffix of ``path`` that peft's suffix matching finds in no other module path."""
    parts = path.split(".")
    for n in range(1, len(parts) + 1):
        suffix = ".".join(parts[-n:])
        if not any(o == suffix or o.endswith("." + suffix) for o in others if o != path):
            return suffix
    return None


def target_module_names(modules: list[ConvertedModule], arch: Architecture, num_layers: int, prefix: str) -> list[str]:
    """peft ``target_modules`` entries that select exactly ``modules`` in the target model.

    A role adapted in every layer is named by its shortest unambiguous suffix (``query``); a role
    adapted in some layers only, or with no unambiguous suffix (bert's ``output.dense``), is named
    module by module, so no ``layers_to_transform`` is needed.
    """
    # the layers' other projections too: a suffix must not also select a module without a role
    all_paths = list(arch.modules.values()) + list(arch.embeddings.values()) + arch.other_modules
    names: list[str] = []
    for role in dict.fromkeys(m.role for m in modules):
        chosen = [m for m in modules if m.role == role]
        if chosen[0].layer is None:  # embeddings
            names.append(minimal_suffix(arch.embeddings[role], all_paths) or chosen[0].name[len(prefix) :])
            continue
        suffix = minimal_suffix(arch.modules[role], all_paths)
        # every layer that has the role (a hybrid model's attention only in its attention layers)
        if suffix and {m.layer for m in chosen} == {i for i in range(num_layers) if arch.has_role(role, i)}:
            names.append(suffix)
        else:
            names.extend(m.name[len(prefix) :] for m in chosen)
    return names


def _target_names(plan: ConversionPlan, modules: list[ConvertedModule]) -> list[str]:
    """``target_module_names`` for the whole plan: per layer stack where the model has several (each
    stack's suffixes checked against the other stacks' modules too), the rest with the first's view."""
    arch, prefix = plan.target_arch, plan.target_prefix
    names: list[str] = []
    for stack in plan.stacks:
        layers = f"{prefix}{stack.target_arch.layers}."
        mine = [m for m in modules if m.layer is not None and m.name.startswith(layers)]
        names += target_module_names(mine, stack.target_arch, stack.target_dims.layers, prefix)
        modules = [m for m in modules if not (m.layer is not None and m.name.startswith(layers))]
    return names + target_module_names(modules, arch, plan.target_dims.layers, prefix)


def build_target_config(
    source: PeftConfig, plan: ConversionPlan, converted: ConvertedAdapter, *, target_base: str, target_revision: str | None = None
) -> PeftConfig:
    arch, prefix = plan.target_arch, plan.target_prefix
    modules = converted.modules
    changes: dict = dict(
        base_model_name_or_path=target_base,
        revision=target_revision,  # the target's commit, when it came from the Hub
        target_modules=_target_names(plan, modules),
        layers_to_transform=None,
        layers_pattern=None,
        modules_to_save=list(plan.heads.values()) or None,
        fan_in_fan_out=arch.conv1d,
        exclude_modules=None,
    )
    if plan.peft_type == "IA3":
        input_side = [m for m in modules if isinstance(m.module, Ia3Module) and m.module.scales_inputs]
        changes["feedforward_modules"] = _target_names(plan, input_side)
    else:
        changes["rank_pattern"], changes["alpha_pattern"] = _patterns(source, modules, prefix)
    fields = {f.name for f in dataclasses.fields(source)}
    return dataclasses.replace(source, **{k: v for k, v in changes.items() if k in fields})


def _patterns(source: PeftConfig, modules: list[ConvertedModule], prefix: str) -> tuple[dict, dict]:
    """Per-module rank and alpha wherever they differ from the config's r and lora_alpha."""
    rank_pattern, alpha_pattern = {}, {}
    for m in modules:
        if not isinstance(m.module, LoraModule):
            continue
        key = m.name[len(prefix) :]
        if m.module.rank != source.r:
            rank_pattern[key] = m.module.rank
        alpha = lora_alpha_for(source, m.module.scaling, m.module.rank)
        if alpha != source.lora_alpha:
            alpha_pattern[key] = alpha
    return rank_pattern, alpha_pattern
