"""Per-architecture knowledge: derived from the model itself, completed by data files.

``get_architecture(model_type, config)`` builds the model on the meta device and reads from its
module tree where the transformer layers are and which module plays which *role* (``attn.q``,
``mlp.down``, ``attn.qkv`` ...; ``derive.py``). ``roles.json`` says which space each role reads
and writes. Cross-architecture mapping is then a join on role.

``data/<model_type>.json`` holds only what a module tree cannot tell, each entry checked against
the derived shapes: the row order of a fused projection (``fused_layout``: ``concat`` or
``per_head``), or a correction of a derived field. A fused projection without a stated layout
is copied only onto the same model type.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from ..errors import BadModelConfigError, UnsupportedError
from .model import (  # noqa: F401  (the package's public names)
    _DATA,
    FUSED_LAYOUTS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    Architecture,
    Dims,
    LayerStack,
    Roles,
    RoleSpec,
    part_sizes,
    role_shape,
    roles,
)

# transformers' model types: lower-case words joined by _ or - ("gpt_neox", "deberta-v2"); the
# name becomes a file name, so nothing else (no "../", no "/") is accepted
_MODEL_TYPE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


# the families tested module by module in tests/test_architectures.py; docs/coverage.md lists
# every model type of the installed transformers that converts (tests/test_coverage.py)
TESTED_FAMILIES = ("bert", "deberta-v2", "distilbert", "electra", "gemma", "gemma2", "gpt2", "gpt_neox", "llama",
                   "mistral", "phi3", "qwen2", "qwen3", "roberta", "xlm-roberta")
_OVERRIDE_FIELDS = ("backbone", "layers", "modules", "embeddings", "heads", "fused_layout", "conv1d", "config")


def supported_model_types() -> tuple[str, ...]:
    return TESTED_FAMILIES


def _supported_hint(model_type: str) -> str:
    return (f"Model types tested to convert include {', '.join(TESTED_FAMILIES)}; docs/coverage.md lists all of them "
            f"(with the reason for each refused one). A derivation can be completed by "
            f"adapter_convert/architectures/data/{model_type}.json.")


def check_model_type(model_type: Any) -> str:
    """``model_type`` if it has the syntax of a transformers model type; it is used as a file name."""
    if not isinstance(model_type, str) or not _MODEL_TYPE.fullmatch(model_type):
        raise BadModelConfigError(
            f"config.json has model_type {model_type!r}, which is not a model type name (lower-case letters, digits, '_' and '-').",
            f"Fix the model's config.json. Supported model types: {', '.join(supported_model_types())}.",
        )
    return model_type


def check_known_model_type(model_type: Any) -> str:
    """``model_type`` if the installed transformers knows it (syntax checked first)."""
    from transformers import __version__ as transformers_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    check_model_type(model_type)
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UnsupportedError(
            f"Unknown model_type {model_type!r}: transformers {transformers_version} has no such model type, so its "
            "architecture cannot be derived.",
            "Check config.json's model_type, or upgrade transformers if the model is newer. " + _supported_hint(model_type),
        )
    return model_type


# config settings that never change a module tree (names, labels, dtypes)
_NOT_STRUCTURAL = {"model_type", "transformers_version", "architectures", "torch_dtype", "dtype", "name_or_path",
                   "_name_or_path", "id2label", "label2id", "problem_type", "finetuning_task", "tokenizer_class",
                   "prefix", "return_dict", "output_hidden_states", "output_attentions", "use_cache", "chunk_size_feed_forward"}


def structure_signature(config: Any) -> tuple:
    """The config's settings that may change its module tree (flags, names, layer types and
    counts, expert steps): the derived architecture's cache key. Widths are left out: derivation
    replaces them with its probe widths."""
    if config is None:
        return ()
    try:
        raw = config.to_dict()
    except Exception:  # noqa: BLE001
        return ()

    from .derive import SIZE_CANDIDATES

    widths = {k for keys in SIZE_CANDIDATES.values() for k in keys} - set(SIZE_CANDIDATES["layers"])

    def scalar(v: Any) -> bool:
        return v is None or isinstance(v, (bool, str))

    # which width settings a config names counts, though their values do not: a stray one (tapas
    # given num_key_value_heads) changes which heads derivation finds
    items = [("widths named", tuple(sorted(k for k in raw if k in widths)))]
    for key, value in sorted(raw.items()):
        if key in _NOT_STRUCTURAL or key.startswith("_") or key in widths or key.endswith("token_id"):
            continue
        if scalar(value) or isinstance(value, int):  # ints too: layer counts, expert steps, dense-layer counts
            items.append((key, value))
        elif isinstance(value, (list, tuple)) and all(scalar(v) or isinstance(v, int) for v in value):
            items.append((key, tuple(value)))
    return tuple(items)


def get_architecture(model_type: str, config: Any = None) -> Architecture:
    """The architecture of ``model_type``: derived from the model built on the meta device (with
    ``config``'s structure when given, else the type's default config), then completed by
    ``data/<model_type>.json``. Raises UnsupportedError naming the module or setting that blocks it."""
    check_known_model_type(model_type)
    if config is not None and getattr(config, "model_type", model_type) != model_type:
        config = None
    return _architecture(model_type, structure_signature(config), _Held(config))


class _Held:
    """Carries the config into the cached function without being part of its key."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Held)


@cache
def _architecture(model_type: str, signature: tuple, held: _Held) -> Architecture:
    override = load_override(model_type)
    cache_file = _disk_cache_file(model_type, signature, override)
    cached = _read_cached(cache_file)
    if cached is not None:
        return cached
    architecture = _derive_architecture(model_type, held, override)
    _write_cached(cache_file, architecture)
    return architecture


# Deriving builds the model on the meta device: 0.3-0.6 s per type, paid by every process. The
# result depends only on transformers' code for the type, the structure signature, the override
# file and this package's derivation, so it is kept on disk under a key of all four.
_TUPLE_FIELDS = ("outside", "mlp_types")


def _disk_cache_file(model_type: str, signature: tuple, override: dict | None):
    import hashlib
    import os
    from pathlib import Path

    import transformers

    from .. import __version__

    root = os.environ.get("ADAPTER_CONVERT_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "adapter-convert"
    # the derivation's own code is part of the key too: an edited checkout never reads stale data
    code = hashlib.sha256(b"".join((_DATA / name).read_bytes() for name in ("derive.py", "meta.py", "model.py", "roles.json"))).hexdigest()
    key = json.dumps([__version__, code, transformers.__version__, model_type, signature, override], sort_keys=True, default=str)
    return Path(root) / "architectures" / f"{model_type}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _read_cached(path) -> Architecture | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw |= {name: tuple(raw[name]) for name in _TUPLE_FIELDS}
        raw["head_params"] = {task: tuple(names) for task, names in raw["head_params"].items()}
        raw["partial"] = {role: tuple(layers) for role, layers in raw["partial"].items()}
        raw["stacks"] = tuple(LayerStack(**stack | {"partial": {r: tuple(ls) for r, ls in stack["partial"].items()}})
                              for stack in raw["stacks"])
        return Architecture(**raw)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # absent or unreadable: derive again
        return None


def _write_cached(path, architecture: Architecture) -> None:
    import dataclasses
    import os

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(dataclasses.asdict(architecture)), encoding="utf-8")
        os.replace(partial, path)  # readers see the whole file or none
    except OSError:  # a read-only cache only costs the next process the derivation
        pass


def _derive_architecture(model_type: str, held: _Held, override: dict | None) -> Architecture:
    from .derive import DerivationError, derive

    try:
        derived = derive(model_type, held.config)
    except DerivationError as err:
        raise UnsupportedError(f"Unsupported model_type {model_type!r}: {err}.", _supported_hint(model_type)) from None
    raw: dict[str, Any] = {
        "model_type": model_type, "backbone": derived.backbone, "layers": derived.layers, "modules": derived.modules,
        "embeddings": derived.embeddings, "heads": derived.heads, "head_params": derived.head_params, "conv1d": derived.conv1d, "config": derived.config,
        "fused_layout": {role: f"unknown ({model_type})" for role in derived.fused},
        "unsupported": derived.unsupported, "outside": derived.outside, "mlp_types": derived.mlp_types, "fixed": derived.fixed,
        "experts": derived.experts, "stacks": derived.stacks, "partial": derived.partial,
    }
    if override is not None:
        raw = apply_override(raw, override, derived)
    return Architecture(**raw)


def load_override(model_type: str) -> dict | None:
    """``data/<model_type>.json``, checked as it is read: every field known and of its type (a
    wrong file is refused naming the file and the field, never an internal error later)."""
    path = _DATA / "data" / f"{check_model_type(model_type)}.json"
    if not path.is_file():
        return None
    name = f"adapter_convert/architectures/data/{path.name}"

    def bad(problem: str) -> UnsupportedError:
        return UnsupportedError(f"{name} {problem}.", f"Fix {name}; its fields: model_type, _why, {', '.join(_OVERRIDE_FIELDS)}.")

    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise bad(f"is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise bad(f"holds a JSON {type(raw).__name__}, not an object")
    unknown = sorted(set(raw) - set(_OVERRIDE_FIELDS) - {"model_type", "_why"})
    if unknown:
        raise bad(f"sets unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    for key, value in raw.items():
        if key == "conv1d":
            expected, ok = "true or false", isinstance(value, bool)
        elif key in ("model_type", "_why", "backbone", "layers"):
            expected, ok = "a string", isinstance(value, str)
        else:  # name -> module path, layout or config attribute (a config size may be null: the family has none)
            expected = "an object of strings" + (" or nulls" if key == "config" else "")
            ok = isinstance(value, dict) and all(isinstance(v, str) or (key == "config" and v is None) for v in value.values())
        if not ok:
            raise bad(f"sets {key!r} to {value!r}, but it must be {expected}")
    if raw.get("model_type", model_type) != model_type:
        raise bad(f"sets 'model_type' to {raw['model_type']!r}, but the file is for {model_type!r}")
    return raw


def apply_override(raw: dict, override: dict, derived: Any) -> dict:
    """``raw`` (derived) completed by ``override``; every override entry is checked against the
    derived module shapes (a wrong file must not silently misplace an adapter)."""
    model_type = raw["model_type"]
    name = f"data/{model_type}.json"

    def bad(why: str) -> UnsupportedError:
        return UnsupportedError(f"{name} disagrees with the {model_type} model: {why}.", f"Fix {name}.")

    raw = {**raw, "origin": f"derived + {name}"}
    for key in ("backbone", "layers", "conv1d"):
        if key in override:
            raw[key] = override[key]
    known_roles = set(roles().plain) | set(roles().fused)
    for key in ("modules", "embeddings", "heads", "config"):
        if key in override:
            raw[key] = {**raw[key], **override[key]}
    if set(raw["modules"]) - known_roles:
        raise bad(f"unknown roles {sorted(set(raw['modules']) - known_roles)}")
    for role, path in override.get("modules", {}).items():
        if derived.modules.get(role) != path and path not in derived.layer_shapes:
            raise bad(f"{role} names {path!r}, which its layers do not have")
        shape = derived.layer_shapes.get(path)
        if shape is not None and shape != role_shape(role, derived.probe_dims):
            raise bad(f"{role} names {path!r}, which maps {shape[0]} -> {shape[1]}, not {role_shape(role, derived.probe_dims)}")
        raw["unsupported"] = {p: why for p, why in raw["unsupported"].items() if p != path}
    layouts = dict(raw["fused_layout"])
    for role, layout in override.get("fused_layout", {}).items():
        if role not in roles().fused or role not in raw["modules"]:
            raise bad(f"fused_layout names {role}, which is not a fused module of its layers")
        if layout not in FUSED_LAYOUTS:
            raise bad(f"fused_layout {layout!r} for {role}; known: {', '.join(FUSED_LAYOUTS)}")
        if layout == "per_head" and len(set(part_sizes(role, derived.probe_dims))) > 1:
            raise bad(f"per_head needs parts of equal width, but {role}'s parts are {part_sizes(role, derived.probe_dims)}")
        layouts[role] = layout
    raw["fused_layout"] = {role: layout for role, layout in layouts.items() if role in raw["modules"]}
    return raw
