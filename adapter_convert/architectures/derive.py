"""Architecture data derived from the model itself.

The model is built on the meta device (no memory, no weights) from its config with small,
pairwise distinct widths, so a module's shape tells which space it reads and writes:

* the backbone is the task model's ``base_model_prefix`` attribute;
* the layer list is the ``ModuleList`` inside it whose length is the config's layer count; an
  encoder-decoder has two, its encoder's and its decoder's, each with its own layer-count
  attribute (found by giving each candidate its own count), and the decoder's cross-attention
  plays the ``cross.*`` roles;
* each layer's ``Linear`` / ``Conv1D`` modules get a role from a name vocabulary (``q_proj``,
  ``query``, ``c_attn``, ``dense_h_to_4h`` ...), accepted only when the module's shape is the
  one the config gives that role (an attention role must also sit under an attention module);
* the size keys (``n_inner``, ``ffn_dim``, ``hidden_dim`` ...) are found the same way: each
  candidate config attribute gets its own probe value, and the one the module's shape shows is
  the one the model reads;
* task heads are the ``classifier`` / ``score`` / ``lm_head`` / ``qa_outputs`` children of each
  task model that keeps the same backbone.

What a module tree cannot tell (the row order inside a fused projection) comes from an override
file, ``data/<model_type>.json`` (see ``__init__``). Nothing here depends on the real sizes: the
probe widths are fixed, only the config's structural settings are kept.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .meta import build as _build

# probe widths: pairwise distinct where the config lets them be (q = heads * head_dim = hidden is
# how most models define it; kv is narrower when the model has grouped key/value heads)
PROBE = {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "vocab": 160}
# every config attribute that may hold the MLP width gets its own probe value: the one the
# module's shape shows is the attribute the model reads
INTERMEDIATE_PROBES = (96, 112, 80, 144, 176, 208, 240, 272, 304)

SIZE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv"),
    "head_dim": ("head_dim", "d_kv", "attention_head_size", "kv_channels"),
    "intermediate": (
        "intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim", "ffn_hidden_size", "inner_hidden_size",
        "mlp_dim", "shared_expert_intermediate_size", "ffn_size", "encoder_ffn_dim", "decoder_ffn_dim",
    ),
    "vocab": ("vocab_size", "padded_vocab_size"),
}
DEFAULT_KEYS = {name: keys[0] for name, keys in SIZE_CANDIDATES.items()}

# leaf module name -> roles it may play; the shape (and attention context) decides among them
_NAMES: dict[str, tuple[str, ...]] = {}
for _role, _names in {
    "attn.q": "q_proj query q_lin query_proj q wq q_linear to_q linear_q",
    "attn.k": "k_proj key k_lin key_proj k wk k_linear to_k linear_k",
    "attn.v": "v_proj value v_lin value_proj v wv v_linear to_v linear_v",
    "attn.o": "o_proj out_proj dense out_lin c_proj o wo out proj linear_out to_out attn_out",
    "attn.qkv": "qkv_proj query_key_value c_attn wqkv qkv w_pack att_proj qkv_linear",
    "mlp.gate": "gate_proj w1 wi_0 gate linear_gate",
    "mlp.up": "up_proj fc1 fc_in dense_h_to_4h c_fc dense lin1 w3 wi_1 wi up linear_1 w1",
    "mlp.down": "down_proj fc2 fc_out dense_4h_to_h c_proj dense lin2 w2 wo down linear_2",
    "mlp.gate_up": "gate_up_proj fc1 dense_h_to_4h ff_proj wi w1 c_fc",
}.items():
    for _name in _names.split():
        _NAMES.setdefault(_name, ())
        _NAMES[_name] += (_role,)

HEAD_NAMES = ("classifier", "score", "qa_outputs", "lm_head")
_CROSS = re.compile(r"cross|encoder_attn|encdec", re.IGNORECASE)
_ATTENTION = re.compile(r"att", re.IGNORECASE)


class DerivationError(Exception):
    """Why a model type's architecture cannot be derived (names the module or setting)."""


@dataclass
class Derived:
    backbone: str
    layers: str
    modules: dict[str, str]
    embeddings: dict[str, str] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)
    head_params: dict[str, tuple[str, ...]] = field(default_factory=dict)  # peft task_type -> the head's parameter names
    conv1d: bool = False
    config: dict[str, str | None] = field(default_factory=dict)
    fused: tuple[str, ...] = ()  # fused roles found: their row layout must come from an override
    unsupported: dict[str, str] = field(default_factory=dict)  # in-layer module path -> why it has no role
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> (in, out) at the probe widths
    layer_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer 0's projections -> (in, out)
    probe_dims: Any = None
    outside: tuple[str, ...] = ()  # projection and embedding modules outside the layers (for unambiguous peft names)
    fixed: dict[str, int] = field(default_factory=dict)  # config attribute the model ignores -> the value it builds with
    experts: str | None = None  # the in-layer module holding the experts' 3-D weights (peft target_parameters)
    mlp_types: tuple[str, ...] = ()  # per layer: moe (holds experts) or dense; empty when no layer holds experts
    stacks: tuple = ()  # an encoder-decoder's layer stacks (model.LayerStack); layers and modules are then the first one's
    partial: dict[str, tuple[int, ...]] = field(default_factory=dict)  # role -> the layers that have it, if not all do


def task_classes() -> dict[str, Any]:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    return {
        "TOKEN_CLS": AutoModelForTokenClassification,
        "SEQ_CLS": AutoModelForSequenceClassification,
        "CAUSAL_LM": AutoModelForCausalLM,
        "QUESTION_ANS": AutoModelForQuestionAnswering,
    }


def _has(config, key: str) -> bool:
    try:
        value = getattr(config, key)
    except Exception:  # noqa: BLE001 - a property that cannot compute counts as absent
        return False
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def size_keys(config) -> dict[str, list[str]]:
    """Per size, the candidate attributes this config has (in order of preference)."""
    return {name: [k for k in keys if _has(config, k)] for name, keys in SIZE_CANDIDATES.items()}


def probe_config(model_type: str, config=None):
    """``config`` (or the type's default) with the probe widths; the structure (flags, layer
    count, layer types) is kept. Returns (probe config, {intermediate probe value: key})."""
    from transformers import AutoConfig

    from .model import MAX_LAYERS

    base = copy.deepcopy(config) if config is not None else None
    if base is not None:
        layer_key = next(iter(size_keys(base)["layers"]), None)
        layers = getattr(base, layer_key, None) if layer_key else None
        if isinstance(layers, bool) or not isinstance(layers, int) or not 0 < layers <= MAX_LAYERS:
            base = None  # an insane layer count is reported by dims(); the structure comes from the default config
    if base is None:
        base = AutoConfig.for_model(model_type)
    raw = base.to_dict()
    keys = size_keys(base)
    overrides: dict[str, Any] = {}

    def put(key: str, value: int) -> None:
        # through attribute_map, the name the config stores
        stored = getattr(base, "attribute_map", {}).get(key, key)
        if stored in raw:
            overrides[stored] = value

    for key in keys["hidden"][:1]:
        put(key, PROBE["hidden"])
    # the first, and an encoder-decoder's decoder's own (plbart's 12 heads do not divide the probe width)
    for key in keys["heads"][:1] + [k for k in keys["heads"][1:] if k.startswith("decoder_")]:
        put(key, PROBE["heads"])
    for key in keys["kv_heads"]:
        if key != "multi_query_group_num" or raw.get("multi_query_group_num") is not None:
            put(key, PROBE["kv_heads"])
    for key in keys["head_dim"][:1]:
        put(key, PROBE["head_dim"])
    for key in keys["vocab"]:
        put(key, PROBE["vocab"])
    intermediates: dict[int, str] = {}
    for key, value in zip(keys["intermediate"], INTERMEDIATE_PROBES):
        stored = getattr(base, "attribute_map", {}).get(key, key)
        if stored in raw:
            overrides[stored] = value
            intermediates[value] = key
    for key, value in raw.items():  # token ids must stay inside the probe vocabulary
        if key.endswith("token_id") and isinstance(value, int) and value >= PROBE["vocab"]:
            overrides[key] = 0
    probe = type(base).from_dict({**raw, **overrides})
    return probe, intermediates




def _layer_list(probe, bare, layers_key: str) -> tuple[str, Any]:
    """(path, module) of the one ModuleList of ``layers_key`` layers: a single-stack model's layers."""
    layer_count = getattr(probe, layers_key)
    if not isinstance(layer_count, int) or layer_count < 1:
        raise DerivationError(f"its config sets {layers_key} to {layer_count!r}")
    lists = [(name, module) for name, module in bare.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) == layer_count and name]
    top = [(n, m) for n, m in lists if not any(n.startswith(o + ".") for o, _ in lists if o != n)]
    if not top:
        raise DerivationError(f"no list of {layers_key}={layer_count} layers in {type(bare).__name__}")
    if len(top) > 1:
        raise DerivationError(
            f"it has {len(top)} lists of {layers_key}={layer_count} modules ({', '.join(n for n, _ in top)}), "
            "not one list of layers"
        )
    return top[0]


# distinct layer counts given to every candidate config attribute of an encoder-decoder, above the
# length of any list inside a layer (t5's 2 or 3 sub-layers): a stack's length names its attribute
_STACK_PROBE_COUNTS = range(5, 100, 2)


def _encoder_decoder_stacks(probe, bare) -> list[tuple[str, str, str, Any]]:
    """(name, path, layer-count attribute, module list) of an encoder-decoder's encoder and decoder.

    Every integer config attribute with "layers" in its name gets its own layer count, and the model
    is built again: the attribute whose count a stack's layer list shows is the one it reads (t5:
    num_layers and num_decoder_layers; bart: encoder_layers and decoder_layers)."""
    from transformers import AutoModel

    raw = probe.to_dict()
    candidates = [k for k, v in raw.items() if "layers" in k and isinstance(v, int) and not isinstance(v, bool) and v > 0]
    counts = dict(zip(candidates, _STACK_PROBE_COUNTS))
    try:
        recounted = _build(AutoModel, type(probe).from_dict({**raw, **counts}))
    except Exception as err:  # noqa: BLE001
        raise DerivationError(f"it is an encoder-decoder model whose layer counts cannot be told apart ({_short(err)})") from None
    by_count = {count: key for key, count in counts.items()}
    stacks = []
    for name in ("encoder", "decoder"):
        lists = [(path, module) for path, module in recounted.named_modules()
                 if path.startswith(name + ".") and isinstance(module, torch.nn.ModuleList) and len(module) in by_count]
        top = [(p, m) for p, m in lists if not any(p.startswith(o + ".") for o, _ in lists if o != p)]
        if len(top) != 1:
            found = ", ".join(p for p, _ in top) or "none"
            raise DerivationError(f"it is an encoder-decoder model, and its {name} has not one list of layers whose length a "
                                  f"config attribute sets (found: {found})")
        path, module = top[0]
        key = by_count[len(module)]
        stacks.append((name, path, key, bare.get_submodule(path)))
    return stacks


def _holds(model_type: str, probe, attribute: str) -> bool:
    """Whether the seq2seq model of an encoder-decoder holds its bare model under ``attribute``."""
    from transformers import AutoModelForSeq2SeqLM
    from transformers.models.auto import modeling_auto

    if model_type not in modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return True
    try:
        return hasattr(_build(AutoModelForSeq2SeqLM, probe), attribute)
    except Exception:  # noqa: BLE001 - not buildable: keep what the bare model says
        return True


def _linear_shape(module) -> tuple[int, int] | None:
    """(in, out) of a Linear or transformers Conv1D, else None."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight"):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def derive(model_type: str, config=None) -> Derived:
    """The architecture of ``model_type`` (structure taken from ``config`` when given)."""
    import warnings

    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # building task models on meta warns about things irrelevant here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _derive(model_type, config)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _derive(model_type: str, config=None) -> Derived:
    from transformers import AutoModel
    from transformers.models.auto import modeling_auto

    from .model import Architecture, LayerStack, role_shape
    from .model import roles as all_roles

    try:
        probe, intermediates = probe_config(model_type, config)
        bare = _build(AutoModel, probe)
    except Exception as err:  # noqa: BLE001 - transformers raises anything; the reason is reported
        # some configs do not accept small widths (their sizes are tied together): the
        # structure is the same at the real sizes, which cost nothing on the meta device
        try:
            from transformers import AutoConfig

            probe, intermediates = AutoConfig.for_model(model_type) if config is None else copy.deepcopy(config), {}
            bare = _build(AutoModel, probe)
        except Exception:  # noqa: BLE001
            raise DerivationError(f"transformers cannot build it from its config ({type(err).__name__}: {_short(err)})") from None

    # which attribute holds each size: the first candidate the config has; the MLP width's by its probe value
    keys = size_keys(probe)
    chosen: dict[str, str | None] = {}
    for name in ("layers", "hidden", "heads", "vocab"):
        if not keys[name]:
            raise DerivationError(f"its config has no {SIZE_CANDIDATES[name][0]} (nor {', '.join(SIZE_CANDIDATES[name][1:])})")
        chosen[name] = keys[name][0]
    chosen["kv_heads"] = keys["kv_heads"][0] if keys["kv_heads"] else None
    chosen["head_dim"] = keys["head_dim"][0] if keys["head_dim"] else None

    if getattr(probe, "is_encoder_decoder", False):
        # an encoder and a decoder: one layer list each, with its own layer count
        stack_lists = _encoder_decoder_stacks(probe, bare)
        chosen["layers"] = stack_lists[0][2]
    else:
        path, layer_list = _layer_list(probe, bare, chosen["layers"])
        stack_lists = [("", path, chosen["layers"], layer_list)]
    layers_path = stack_lists[0][1]

    # collect each layer's projection modules, per stack
    stack_layers: list[list[dict[str, tuple[int, int]]]] = []
    conv1d_seen: set[bool] = set()
    experts: str | None = None  # a mixture-of-experts module: 3-D expert weights
    has_experts: list[bool] = []
    for _, _, _, stack_list in stack_lists:
        stack_layers.append([])
        for layer in stack_list:
            found = {}
            has_experts.append(False)
            for path, module in layer.named_modules():
                # experts: 3-D weights outside a convolution (a Conv1d's weight is 3-D too)
                if not isinstance(module, torch.nn.modules.conv._ConvNd) and any(p.ndim == 3 for p in module.parameters(recurse=False)):
                    experts = experts or path
                    has_experts[-1] = True
                shape = _linear_shape(module)
                if shape is not None and path:
                    found[path] = shape
                    conv1d_seen.add(type(module).__name__ == "Conv1D")
            stack_layers[-1].append(found)
    if experts is not None and len(stack_lists) > 1:
        raise DerivationError(f"it is an encoder-decoder model with experts ({experts!r}), which only single-stack models may have yet")
    per_layer = stack_layers[0]

    # the MLP width's attribute: the candidate whose probe value a module shows (per stack: bart's
    # encoder reads encoder_ffn_dim, its decoder decoder_ffn_dim)
    stack_widths = [{w for found in layers for shape in found.values() for w in shape} for layers in stack_layers]
    stack_intermediate = [next((key for value, key in intermediates.items() if value in widths), None) for widths in stack_widths]
    chosen["intermediate"] = stack_intermediate[0]
    if chosen["intermediate"] is None and intermediates:
        chosen["intermediate"] = next(iter(intermediates.values()))
    ratio_key, fixed_ratios = None, {}
    if chosen["intermediate"] is None:  # no width attribute: maybe a ratio to the hidden size (mpt's expansion_ratio)
        ratio_key, fixed_ratios = _ratio_setting(model_type, probe, per_layer[0])

    arch_keys = {name: chosen[name] for name in DEFAULT_KEYS} | {"intermediate_ratio": ratio_key}
    probe_arch = Architecture(model_type=model_type, backbone="", layers=layers_path, modules={}, config=arch_keys)
    try:
        dims = probe_arch.dims(probe)
    except Exception as err:  # noqa: BLE001
        raise DerivationError(f"its sizes cannot be read ({_short(err)})") from None

    stacks = []
    for (name, path, count_key, _), layers, intermediate in zip(stack_lists, stack_layers, stack_intermediate):
        own = {"layers": count_key} | ({"intermediate": intermediate} if intermediate not in (None, chosen["intermediate"]) else {})
        stack_dims = dims if len(stack_lists) == 1 else replace(probe_arch, config=arch_keys | own).dims(probe)
        modules, unsupported, partial = _stack_roles(model_type, layers, stack_dims, experts, cross=name == "decoder")
        stacks.append(LayerStack(name=name, layers=path, modules=modules, config=own, unsupported=unsupported, partial=partial))
    for stack, layers in zip(stacks, stack_layers):
        if stack.modules:
            continue
        where = f" of its {stack.name} ({stack.layers})" if stack.name else ""
        partial = next((f"{path}: {why}" for path, why in stack.unsupported.items() if "layers" in why), None)
        if partial:
            raise DerivationError(f"no role is played by the same module in every layer{where} (layer types differ; {partial})")
        sample = ", ".join(list(layers[0])[:4]) or "none"
        raise DerivationError(f"no attention or MLP projection in its layers{where} matches a known role (layer 0 has: {sample})")
    modules, unsupported, partial = stacks[0].modules, stacks[0].unsupported, stacks[0].partial
    conv1d = conv1d_seen == {True}
    if len(conv1d_seen) > 1:
        raise DerivationError("its layers mix Linear and Conv1D projections")

    embeddings = {}
    try:
        embedding = bare.get_input_embeddings()
        name = next((n for n, m in bare.named_modules() if m is embedding and n), None)
        if name is not None and isinstance(embedding, torch.nn.Embedding):
            embeddings["embed.tokens"] = name
    except Exception:  # noqa: BLE001 - a model without input embeddings (or not reporting them)
        pass

    in_layers = {path for stack in stacks for path in (*stack.unsupported, *stack.modules.values())}
    outside = sorted({name for name, module in bare.named_modules()
                      if name and not any(name.startswith(stack.layers + ".") for stack in stacks) and not list(module.children())
                      and (_linear_shape(module) is not None or isinstance(module, torch.nn.Embedding))} - in_layers)
    backbone = getattr(bare, "base_model_prefix", "") or ""
    if len(stacks) > 1 and backbone and not _holds(model_type, probe, backbone):
        backbone = ""  # t5's seq2seq model keeps its stacks at its top, not under base_model_prefix ("transformer")
    heads: dict[str, str] = {}
    head_params: dict[str, tuple[str, ...]] = {}  # a head without bias (llama's score) must not receive one
    for task, model_class in task_classes().items():
        mapping = {"TOKEN_CLS": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
                   "SEQ_CLS": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                   "CAUSAL_LM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                   "QUESTION_ANS": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES}[task]
        if model_type not in mapping:
            continue
        try:
            task_model = _build(model_class, probe)
        except Exception:  # noqa: BLE001 - that task model cannot be built: no head for it
            continue
        inner = getattr(task_model, backbone, None) if backbone else None
        if inner is None or type(inner) is not type(bare):
            continue  # this task model keeps the bare model under another name (llama's QA: transformer)
        children = dict(task_model.named_children())
        head = next((name for name in children if name in HEAD_NAMES), None)
        if head is not None:
            heads[task] = head
            head_params[task] = tuple(name for name, _ in children[head].named_parameters())

    config_keys = {name: key for name, key in chosen.items() if key != DEFAULT_KEYS[name]}
    if ratio_key:
        config_keys["intermediate_ratio"] = ratio_key
    for name, default in DEFAULT_KEYS.items():  # a default attribute the config does not have reads as nothing
        if name not in config_keys and not _has(probe, default):
            config_keys[name] = None
    fused = tuple(dict.fromkeys(r for stack in stacks for r in stack.modules if r in all_roles().fused))
    return Derived(
        backbone=backbone,
        layers=layers_path,
        modules=modules,
        embeddings=embeddings,
        heads=heads,
        head_params=head_params,
        fixed=fixed_ratios,
        conv1d=conv1d,
        config=config_keys,
        fused=fused,
        unsupported=dict(sorted(unsupported.items())),
        partial=partial,
        shapes={role: role_shape(role, dims) for role in modules},
        layer_shapes=dict(per_layer[0]),
        outside=tuple(_dedupe_indices(outside)),
        probe_dims=dims,
        mlp_types=tuple("moe" if e else "dense" for e in has_experts) if any(has_experts) else (),
        experts=experts,
        stacks=tuple(stacks) if len(stacks) > 1 else (),
    )



def _stack_roles(model_type: str, per_layer: list[dict[str, tuple[int, int]]], dims, experts: str | None, *,
                 cross: bool) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[int, ...]]]:
    """(role -> module path, module path -> why it has no role, role -> the layers that have it for
    a role only some layers have) for one list of layers, from each layer's projections and their
    shapes; ``cross``: its cross-attention plays the cross.* roles."""
    from .model import role_shape
    from .model import roles as all_roles

    unsupported: dict[str, str] = {}
    layer_roles: list[dict[str, str]] = []
    for found in per_layer:
        assigned: dict[str, list[str]] = {}
        for path, shape in found.items():
            role = _role(path, shape, dims, role_shape, cross=cross)
            if role is None:
                unsupported.setdefault(path, _why_not(path, shape, dims))
            else:
                assigned.setdefault(role, []).append(path)
        roles_here = {}
        for role, paths in assigned.items():
            if len(paths) == 1:
                roles_here[role] = paths[0]
            else:
                for p in paths:
                    unsupported.setdefault(p, f"{len(paths)} modules of a layer ({', '.join(paths)}) could play {role}")
        # w1 without w3 is a plain up projection (non-gated MLP)
        if "mlp.gate" in roles_here and "mlp.up" not in roles_here and "mlp.gate_up" not in roles_here:
            roles_here["mlp.up"] = roles_here.pop("mlp.gate")
        layer_roles.append(roles_here)

    modules: dict[str, str] = {}
    partial: dict[str, tuple[int, ...]] = {}
    order = {path: i for i, path in enumerate(per_layer[0])}  # the model's own module order
    candidates = sorted({r: p for lr in layer_roles[::-1] for r, p in lr.items()}.items(), key=lambda rp: order.get(rp[1], len(order)))
    for role, _ in candidates:
        paths = {lr.get(role) for lr in layer_roles} - {None}
        present = tuple(i for i, lr in enumerate(layer_roles) if role in lr)
        missing = [i for i in range(len(layer_roles)) if i not in present]
        (path,) = paths if len(paths) == 1 else (None,)
        if path is not None and not missing:
            modules[role] = path
        elif path is not None and not any(path in per_layer[i] for i in missing):
            # a hybrid model (attention in some layers, a dense MLP before the experts ...): the role
            # is played in the layers that have the module, and no module of that name is elsewhere,
            # so a peft suffix selects exactly those layers' modules
            modules[role], partial[role] = path, present
        else:
            for p in paths:
                unsupported[p] = (f"{role} sits at different paths in different layers" if len(paths) > 1
                                  else f"{role} only in some layers (not in layers {_ranges(missing)}), and another module of that name in the others")
    # a mixture-of-experts layer: its experts are 3-D parameters (peft's target_parameters, see
    # plan.parse_expert_parameters), not modules; a shared expert beside them is an MLP of Linear
    # modules and plays the MLP roles
    renamed = _peft_moe_renames(model_type) if experts is not None else set()
    for role in [r for r in modules if r.startswith("mlp.") and experts is not None]:
        if modules[role].startswith(experts + "."):
            unsupported[modules.pop(role)] = f"inside the experts module {experts!r}"
        elif modules[role].rsplit(".", 1)[-1] in renamed:
            unsupported[modules.pop(role)] = (f"peft renames {model_type} targets named {modules[role].rsplit('.', 1)[-1]!r} onto the "
                                              "fused experts (peft.utils.transformers_weight_conversion), so this module cannot be targeted")
    # a fused role beside its own parts (both q_proj and qkv) would be ambiguous: keep the parts
    for fused, parts in all_roles().fused.items():
        if fused in modules and any(p in modules for p in parts):
            unsupported[modules.pop(fused)] = f"fused {fused} beside separate {', '.join(p for p in parts if p in modules)}"
    for path in list(unsupported):
        if path in modules.values():
            del unsupported[path]
    return modules, unsupported, {role: layers for role, layers in partial.items() if role in modules}


def _peft_moe_renames(model_type: str) -> set[str]:
    """Module names that peft turns into expert targets for this model type (transformers v5's fused
    experts): a shared expert's gate_proj named in target_modules would adapt the experts instead."""
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:
        return set()
    pattern = getattr(conversion, "_MODEL_TO_CONVERSION_PATTERN", {}).get(model_type)
    return set(getattr(conversion, "_MOE_TARGET_MODULE_MAPPING", {}).get(pattern, {}))


# attributes that may give the MLP width as a multiple of the hidden size
RATIO_KEYS = ("expansion_ratio",)


def _ratio_setting(model_type: str, probe, layer0: dict[str, tuple[int, int]]) -> tuple[str | None, dict[str, int]]:
    """(the ratio attribute the model reads, {ratio attribute it ignores: the ratio it builds with}).

    The model is built again with the ratio one higher: if layer 0's shapes change, it reads the
    attribute (MLP width = ratio * hidden); if not, the width is fixed whatever the config says
    (transformers' mpt builds 4 * d_model and ignores expansion_ratio), and a config stating
    another ratio describes weights this model cannot hold."""
    from transformers import AutoModel

    hidden = next((getattr(probe, k) for k in SIZE_CANDIDATES["hidden"] if _has(probe, k) and getattr(probe, k)), None)
    for key in RATIO_KEYS:
        value = getattr(probe, key, None)
        if isinstance(value, bool) or not isinstance(value, int) or not hidden:
            continue
        other = copy.deepcopy(probe)
        setattr(other, key, value + 1)
        try:
            layer = next(m for m in _build(AutoModel, other).modules() if isinstance(m, torch.nn.ModuleList) and len(m))[0]
        except Exception:  # noqa: BLE001 - cannot tell: the default 4 * hidden stands
            continue
        shapes = {path: shape for path, m in layer.named_modules() if (shape := _linear_shape(m)) is not None and path}
        if shapes != layer0:
            return key, {}
        mlp = [shape for path, shape in layer0.items() if not _ATTENTION.search(path)
               and any(r.startswith("mlp.") for r in _NAMES.get(path.rsplit(".", 1)[-1].lower(), ()))]
        built = {w // hidden for shape in mlp for w in shape if w % hidden == 0 and w > hidden}
        if len(built) == 1:
            return None, {key: built.pop()}
    return None, {}


def _role(path: str, shape: tuple[int, int], dims, role_shape, *, cross: bool = False) -> str | None:
    """The role ``path`` plays; cross-attention plays the cross.* roles in an encoder-decoder's
    decoder (``cross``) and none elsewhere (gpt2's optional cross-attention has no encoder stack)."""
    is_cross = bool(_CROSS.search(path))
    if is_cross and not cross:
        return None
    leaf = path.rsplit(".", 1)[-1].lower()
    in_attention = bool(_ATTENTION.search(path.rsplit(".", 1)[0])) if "." in path else False
    for role in _NAMES.get(leaf, ()):
        if role.startswith("attn.") != in_attention:
            continue
        if is_cross:
            role = role.replace("attn.", "cross.", 1)
        try:
            if role_shape(role, dims) == shape:
                return role
        except KeyError:
            continue
    return None


def _why_not(path: str, shape: tuple[int, int], dims) -> str:
    if _CROSS.search(path):
        return "cross-attention (encoder-decoder) is not supported"
    leaf = path.rsplit(".", 1)[-1].lower()
    if leaf not in _NAMES:
        return f"no role for a module named {leaf!r} ({shape[0]} -> {shape[1]} at the probe widths)"
    return f"its shape {shape[0]} -> {shape[1]} is not that of {' or '.join(_NAMES[leaf])} at the probe widths"


def _ranges(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:8])) + (" ..." if len(indices) > 8 else "")


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:160] + ("..." if len(text) > 160 else "")


def _dedupe_indices(paths: list[str]) -> list[str]:
    """One path per repeated block (vision towers repeat theirs): indices kept only for the first."""
    seen, out = set(), []
    for path in paths:
        key = re.sub(r"\.\d+\.", ".N.", path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out
