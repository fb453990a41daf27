"""Per-architecture knowledge, as data.

Each ``data/<model_type>.json`` says where a model family keeps its transformer layers and which
module plays which *role* (``attn.q``, ``mlp.down``, ``attn.qkv`` ...). ``roles.json`` says which
space each role reads and writes. Cross-architecture mapping is then a join on role. Adding a
family is adding a file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ..errors import BadModelConfigError, UnsupportedError

_DATA = resources.files(__package__)
# transformers' model types: lower-case words joined by _ or - ("gpt_neox", "deberta-v2"); the
# name becomes a file name, so nothing else (no "../", no "/") is accepted
_MODEL_TYPE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
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

    def fused_role_of(self, part: str) -> str | None:
        return next((fused for fused, parts in self.fused.items() if part in parts), None)


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

    def space(self, name: str) -> int:
        return {
            "hidden": self.hidden,
            "q": self.heads * self.head_dim,
            "kv": self.kv_heads * self.head_dim,
            "intermediate": self.intermediate,
            "vocab": self.vocab,
        }[name]


@dataclass(frozen=True)
class Architecture:
    model_type: str
    backbone: str  # attribute holding the bare model inside task models (base_model_prefix)
    layers: str  # path of the layer list inside the backbone
    modules: dict[str, str]  # role -> module path inside one layer
    embeddings: dict[str, str] = field(default_factory=dict)  # role -> module path in backbone
    heads: dict[str, str] = field(default_factory=dict)  # peft task_type -> head module
    fused_layout: dict[str, str] = field(default_factory=dict)  # fused role -> concat | per_head
    conv1d: bool = False  # weights stored (in, out), as transformers' Conv1D
    config: dict[str, str | None] = field(default_factory=dict)  # size -> config attribute

    @property
    def layers_pattern(self) -> str:
        """The name peft's ``layers_pattern`` expects: the layer list's own attribute."""
        return self.layers.rsplit(".", 1)[-1]

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
        kv_heads = read("kv_heads", required=False) or heads
        if heads % kv_heads:
            raise BadModelConfigError(
                f"config.json has {spelled('heads')}={heads} attention heads, which {spelled('kv_heads')}={kv_heads} key/value heads do not divide.",
                "Fix the model's config.json.",
            )
        return Dims(
            layers=read("layers", limit=MAX_LAYERS),
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            # gpt2 leaves n_inner unset and means 4 * hidden
            intermediate=read("intermediate", required=False) or 4 * hidden,
            vocab=read("vocab", limit=MAX_VOCAB),
        )


@cache
def roles() -> Roles:
    raw = json.loads((_DATA / "roles.json").read_text())
    return Roles(
        plain={name: RoleSpec(spec["in"], spec["out"]) for name, spec in raw["roles"].items()},
        fused={name: tuple(parts) for name, parts in raw["fused"].items()},
    )


@cache
def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(p.name[:-5] for p in (_DATA / "data").iterdir() if p.name.endswith(".json")))


def check_model_type(model_type: Any) -> str:
    """``model_type`` if it has the syntax of a transformers model type; it is used as a file name."""
    if not isinstance(model_type, str) or not _MODEL_TYPE.fullmatch(model_type):
        raise BadModelConfigError(
            f"config.json has model_type {model_type!r}, which is not a model type name (lower-case letters, digits, '_' and '-').",
            f"Fix the model's config.json. Supported model types: {', '.join(supported_model_types())}.",
        )
    return model_type


@cache
def get_architecture(model_type: str) -> Architecture:
    path = _DATA / "data" / f"{check_model_type(model_type)}.json"
    if not path.is_file():
        raise UnsupportedError(
            f"Unknown model_type {model_type!r}: adapter-convert has no architecture file for it.",
            f"Supported model types: {', '.join(supported_model_types())}. "
            f"Add one by writing adapter_convert/architectures/data/{model_type}.json.",
        )
    raw = json.loads(path.read_text())
    known_roles = set(roles().plain) | set(roles().fused)
    unknown = set(raw["modules"]) - known_roles
    if unknown:
        raise UnsupportedError(f"{path.name} names unknown roles {sorted(unknown)}.", f"Known roles: {sorted(known_roles)}.")
    return Architecture(**raw)


def role_shape(role: str, dims: Dims) -> tuple[int, int]:
    """(in_features, out_features) of the module playing ``role``; a fused role stacks its parts' outputs."""
    parts = roles().parts(role)
    specs = [roles().plain[p] for p in parts]
    return dims.space(specs[0].in_space), sum(dims.space(s.out_space) for s in specs)


def part_sizes(role: str, dims: Dims) -> list[int]:
    return [dims.space(roles().plain[p].out_space) for p in roles().parts(role)]
