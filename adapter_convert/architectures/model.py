"""The architecture value and what it is made of: roles (roles.json), a model's sizes (Dims) and
the per-family data (Architecture). Derivation (derive.py) builds these; the package reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

from ..errors import BadModelConfigError

_DATA = resources.files(__package__)
# sanity bounds, checked before anything is built from a size (a layer map of 10^9 rows would not fit)
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 20
MAX_VOCAB = 1 << 24

# Config attribute read for each size; a family overrides only what differs.
_DEFAULT_CONFIG_KEYS = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate": "intermediate_size",
    "intermediate_ratio": None,  # MLP width as a multiple of the hidden size, when no width is given
    "vocab": "vocab_size",
}


@dataclass(frozen=True)
class RoleSpec:
    in_space: str
    out_space: str


@dataclass(frozen=True)
class Roles:
    plain: dict[str, RoleSpec]
    fused: dict[str, tuple[str, ...]]

    def parts(self, role: str) -> tuple[str, ...]:
        """The plain roles a role stands for: itself, or the parts of a fused role."""
        return self.fused.get(role, (role,))


@dataclass(frozen=True)
class Dims:
    """The sizes of one model, read from its config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    # per layer, when the model names them: its attention kind (config.layer_types: full_attention,
    # sliding_attention ...) and, in a model with experts, whether it is a moe or a dense layer
    layer_types: tuple[str, ...] | None = None
    mlp_types: tuple[str, ...] | None = None
    # per layer, the experts' 3-D weights and their shapes ((name, (experts, out, in)), ...); () in a
    # dense layer; None in a model without experts
    expert_shapes: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...] | None = None
    # per layer, in a hybrid model whose roles only some layers have: which of those role families
    # it has ("attn, no mlp"), so a layer map can keep adapted modules on layers that have them
    role_types: tuple[str, ...] | None = None
    # a model with several layer stacks: (name, its sizes) per stack (its own layer count, and MLP
    # width where it reads its own); the fields above are then the first stack's
    stacks: tuple[tuple[str, Dims], ...] = ()

    def stack(self, name: str) -> Dims:
        return dict(self.stacks)[name]

    def space(self, name: str) -> int:
        return {
            "hidden": self.hidden,
            "q": self.heads * self.head_dim,
            "kv": self.kv_heads * self.head_dim,
            "intermediate": self.intermediate,
            "vocab": self.vocab,
        }[name]


@dataclass(frozen=True)
class LayerStack:
    """One of a model's layer lists, when it has several (an encoder-decoder's encoder and decoder)."""

    name: str  # encoder | decoder
    layers: str  # path of its layer list inside the backbone
    modules: dict[str, str]  # role -> module path inside one of its layers
    config: dict[str, str]  # size -> config attribute, where the stack reads its own (layers always; bart's ffn widths)
    unsupported: dict[str, str] = field(default_factory=dict)  # in-layer module path -> why it has no role
    partial: dict[str, tuple[int, ...]] = field(default_factory=dict)  # role -> the layers that have it, if not all do


@dataclass(frozen=True)
class Architecture:
    model_type: str
    backbone: str  # attribute holding the bare model inside task models (base_model_prefix)
    layers: str  # path of the layer list inside the backbone
    modules: dict[str, str]  # role -> module path inside one layer
    embeddings: dict[str, str] = field(default_factory=dict)  # role -> module path in backbone
    heads: dict[str, str] = field(default_factory=dict)  # peft task_type -> head module
    head_params: dict[str, tuple[str, ...]] = field(default_factory=dict)  # peft task_type -> its head's parameter names
    fused_layout: dict[str, str] = field(default_factory=dict)  # fused role -> concat | per_head
    conv1d: bool = False  # weights stored (in, out), as transformers' Conv1D
    config: dict[str, str | None] = field(default_factory=dict)  # size -> config attribute
    origin: str = "derived"  # derived | derived + data/<model_type>.json
    unsupported: dict[str, str] = field(default_factory=dict)  # in-layer module path -> why it has no role
    outside: tuple[str, ...] = ()  # projections and embeddings outside the layers (a peft suffix must not select them)
    mlp_types: tuple[str, ...] = ()  # per layer of the derived model, moe or dense, when any layer holds experts
    fixed: dict[str, int] = field(default_factory=dict)  # config attribute the model ignores -> the value it builds with
    experts: str | None = None  # in-layer module holding the experts' 3-D weights (peft adapts them through target_parameters)
    # several layer lists (an encoder-decoder's encoder and decoder), each converted on its own
    # through its one-stack view (``stack``); layers, modules and unsupported are then the first one's
    stacks: tuple[LayerStack, ...] = ()
    # a hybrid model's roles that only some layers have (attention only in its attention layers, a
    # dense MLP only before the experts): role -> those layers, of the model derived from its config;
    # a role absent here is in every layer
    partial: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def stack(self, name: str) -> Architecture:
        """The one-stack view of layer stack ``name``: its layer list, roles and layer count, with
        the other stacks' modules counted as outside (a peft suffix must not select them too)."""
        stack = next(s for s in self.stacks if s.name == name)
        others = tuple(f"{s.layers}.0.{path}" for s in self.stacks if s is not stack for path in (*s.modules.values(), *s.unsupported))
        return replace(self, layers=stack.layers, modules=stack.modules, unsupported=stack.unsupported, partial=stack.partial,
                       config={**self.config, **stack.config}, outside=self.outside + others, stacks=())

    @property
    def other_modules(self) -> list[str]:
        """Module paths without a role, in the layers and outside: target_modules must not select them."""
        return list(self.unsupported) + list(self.outside)

    def known_layout(self, fused_role: str) -> bool:
        """Whether the row order inside this fused module is known (else it only copies onto its own type)."""
        return self.layout(fused_role) in FUSED_LAYOUTS

    def has_role(self, role: str, layer: int) -> bool:
        """Whether layer ``layer`` has a module playing ``role`` (a hybrid model's layers differ)."""
        return role in self.modules and layer in self.partial.get(role, (layer,))

    def role_of(self, module_path: str) -> str | None:
        return next((role for role, path in self.modules.items() if path == module_path), None)

    def layout(self, fused_role: str) -> str:
        return self.fused_layout.get(fused_role, "concat")

    def dims(self, model_config: Any) -> Dims:
        """The model's sizes, each checked to be a positive integer in a sane range (raises
        BadModelConfigError naming the config attribute and its value)."""
        # a family maps a size to null when it has no such setting (bert has no grouped-query heads),
        # so a stray attribute in its config is never read
        keys = {**_DEFAULT_CONFIG_KEYS, **self.config}
        # messages use the name config.json spells (distilbert's "dim" for hidden_size)
        spelled = lambda name: getattr(model_config, "attribute_map", {}).get(keys[name], keys[name]) or name  # noqa: E731

        def read(name: str, *, required: bool = True, limit: int = MAX_WIDTH) -> int | None:
            key = keys[name]
            value = None if key is None else getattr(model_config, key, None)
            if value is None and not required:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                raise BadModelConfigError(
                    f"config.json sets {spelled(name)} to {value!r}; it must be a whole number from 1 to {limit}.",
                    "Fix the model's config.json (or point at the right model folder).",
                )
            return value

        hidden, heads = read("hidden"), read("heads")
        head_dim = read("head_dim", required=False)
        if head_dim is None:
            if hidden % heads:
                raise BadModelConfigError(
                    f"config.json has {spelled('hidden')}={hidden}, which {spelled('heads')}={heads} does not divide, and no head_dim.",
                    "Fix the model's config.json: the hidden size must be a multiple of the number of heads.",
                )
            head_dim = hidden // heads
        for key, built in self.fixed.items():
            stated = getattr(model_config, key, built)
            if stated != built:
                from transformers import __version__ as transformers_version

                raise BadModelConfigError(
                    f"config.json sets {key}={stated!r}, but transformers {transformers_version}'s {self.model_type} ignores "
                    f"{key} and builds its layers with {key}={built}: weights made with {stated!r} do not fit it.",
                    f"Use a checkpoint whose config has {key}={built}, or a transformers version whose {self.model_type} reads {key}.",
                )
        ratio = read("intermediate_ratio", required=False, limit=64)
        kv_heads = read("kv_heads", required=False) or heads
        if heads % kv_heads:
            raise BadModelConfigError(
                f"config.json has {spelled('heads')}={heads} attention heads, which {spelled('kv_heads')}={kv_heads} key/value heads do not divide.",
                "Fix the model's config.json.",
            )
        layers = read("layers", limit=MAX_LAYERS)
        return Dims(
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            # gpt2 leaves n_inner unset and means 4 * hidden
            intermediate=read("intermediate", required=False) or (ratio or 4) * hidden,
            vocab=read("vocab", limit=MAX_VOCAB),
            layer_types=_layer_types(model_config, layers),
            mlp_types=self.mlp_types if len(self.mlp_types) == layers else None,
            expert_shapes=self._expert_shapes(model_config),
            role_types=self._role_types(layers),
            stacks=tuple((stack.name, self.stack(stack.name).dims(model_config)) for stack in self.stacks),
        )

    def _role_types(self, layers: int) -> tuple[str, ...] | None:
        """Per layer, the families of the partial roles (attn, mlp) it has or lacks; None when every
        layer has every role, or when the config's layer count is not the derived model's."""
        if not self.partial or any(layer >= layers for present in self.partial.values() for layer in present):
            return None
        families = sorted({role.split(".")[0] for role in self.partial})
        return tuple(", ".join(family if any(self.has_role(r, i) for r in self.partial if r.startswith(family + ".")) else f"no {family}"
                               for family in families) for i in range(layers))

    def _expert_shapes(self, model_config: Any):
        if self.experts is None or not hasattr(model_config, "to_json_string"):
            return None
        from .meta import expert_shapes

        try:
            return expert_shapes(model_config, self.layers, self.experts)
        except Exception:  # noqa: BLE001 - not buildable from this config: expert adapters are then refused
            return None


def _layer_types(model_config: Any, layers: int) -> tuple[str, ...] | None:
    """config.layer_types when it names one kind per layer (gemma2: sliding_attention, full_attention)."""
    value = getattr(model_config, "layer_types", None)
    if isinstance(value, (list, tuple)) and len(value) == layers and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


@cache
def roles() -> Roles:
    raw = json.loads((_DATA / "roles.json").read_text())
    return Roles(
        plain={name: RoleSpec(spec["in"], spec["out"]) for name, spec in raw["roles"].items()},
        fused={name: tuple(parts) for name, parts in raw["fused"].items()},
    )


FUSED_LAYOUTS = ("concat", "per_head")


def role_shape(role: str, dims: Dims) -> tuple[int, int]:
    """(in_features, out_features) of the module playing ``role``; a fused role stacks its parts' outputs."""
    parts = roles().parts(role)
    specs = [roles().plain[p] for p in parts]
    return dims.space(specs[0].in_space), sum(dims.space(s.out_space) for s in specs)


def part_sizes(role: str, dims: Dims) -> list[int]:
    return [dims.space(roles().plain[p].out_space) for p in roles().parts(role)]
