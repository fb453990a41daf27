"""End-to-end coverage check of one model type: does a real adapter convert exactly?

For a model type of the installed transformers: build a tiny random model (4 layers, the
probe widths of ``derive.py``), put a LoRA on every module with a role, convert it with the
real pipeline (``prepare`` / ``execute``, ``--align none``) onto the same type with 2 layers
(auto: SKIP, target layer i <- source layer 2i, unless it moves a layer to one of its own type) and onto llama of equal widths, load each result
with peft and compare every module's delta weight ``scaling * B @ A`` with the source module
it came from. A fused module is split by plain slicing (concat) or per head, independently of
the product's own transform code. An encoder-decoder is built as a seq2seq LM with a LoRA on both
layer stacks (the decoder's cross-attention too), each stack going from 4 layers to 2.

Used by ``tests/test_coverage.py`` and ``scripts/coverage_table.py`` (``docs/coverage.md``).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapter_convert.architectures import get_architecture, roles
from adapter_convert.architectures.derive import probe_config, size_keys, task_classes
from adapter_convert.errors import AdapterConvertError, VerificationError
from helpers import delta_weight

SOURCE_LAYERS, TARGET_LAYERS = 4, 2
TASK_ORDER = ("TOKEN_CLS", "CAUSAL_LM", "SEQ_CLS")


@dataclass
class Outcome:
    model_type: str
    status: str  # converts | refused | unbuildable | failed
    origin: str = ""  # derived | derived + data/<type>.json
    reason: str = ""  # why refused / unbuildable / failed
    task: str = ""
    roles: list[str] = field(default_factory=list)
    modules_compared: int = 0
    onto_llama: str = ""  # exact | n/a (why) | refused: ... | failed: ...
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def candidate_model_types() -> list[str]:
    """Model types with a token-classification, causal-LM or sequence-classification head."""
    from transformers.models.auto import modeling_auto as m

    names = (m.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
             m.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    return sorted(set().union(*names))


def tiny_config(model_type: str, layers: int, base=None, **overrides):
    """The probe-width config of ``model_type`` with ``layers`` layers (per-layer lists cut to match)."""
    probe, _ = probe_config(model_type, base)
    raw = probe.to_dict()
    layer_key = size_keys(probe)["layers"][0]
    stored = getattr(probe, "attribute_map", {}).get(layer_key, layer_key)
    old = raw.get(stored)
    if stored in raw or not raw.get("is_encoder_decoder"):  # prophetnet's is read-only: its stacks are set below
        raw[stored] = layers
    for key, value in list(raw.items()):  # layer_types and other per-layer lists follow the depth
        if isinstance(value, list) and isinstance(old, int) and len(value) == old and old != layers:
            raw[key] = (value * layers)[:layers]
    if raw.get("is_encoder_decoder"):  # every stack to the same depth (t5's num_decoder_layers, bart's decoder_layers)
        for key, value in list(raw.items()):
            if key.endswith("layers") and isinstance(value, int) and not isinstance(value, bool) and value > 0:
                raw[key] = layers
    raw.update(overrides)
    raw.setdefault("num_labels", 5)
    return type(probe).from_dict(raw)


def _composite(model_type: str) -> str:
    """The sub-configs (vision, audio ...) of a composite model's config, if any."""
    from transformers import AutoConfig

    try:
        sub = getattr(AutoConfig.for_model(model_type), "sub_configs", None) or {}
    except Exception:  # noqa: BLE001
        return ""
    # attn_config / ffn_config (mpt, dbrx) are parts of a text model; vision, audio, text towers are not
    return ", ".join(sorted(k for k in sub if re.search(r"vision|audio|text|speech|image|video|encoder|decoder|vq|projector", k)))


def _task_model(model_type: str, config):
    from transformers.models.auto import modeling_auto as m

    mappings = {"TOKEN_CLS": m.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, "CAUSAL_LM": m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                "SEQ_CLS": m.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES}
    errors = []
    if getattr(config, "is_encoder_decoder", False) and model_type in m.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        # an encoder-decoder as a seq2seq LM: both stacks (its causal LM, where it has one, is the decoder alone)
        torch.manual_seed(0)
        return "SEQ_2_SEQ_LM", _model_class("SEQ_2_SEQ_LM").from_config(copy.deepcopy(config))
    for task in TASK_ORDER:
        if model_type not in mappings[task]:
            continue
        try:
            torch.manual_seed(0)
            return task, task_classes()[task].from_config(copy.deepcopy(config))  # some task models edit their config
        except Exception as err:  # noqa: BLE001
            errors.append(f"{task}: {type(err).__name__}: {' '.join(str(err).split())[:120]}")
    raise RuntimeError("; ".join(errors) or "no task model")


def _model_class(task: str):
    from transformers import AutoModelForSeq2SeqLM

    return (task_classes() | {"SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM})[task]


def _parts(arch, role: str, dims, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """A fused module's delta rows per plain part: plain slicing or per head (independent of transform.py)."""
    parts = roles().parts(role)
    if len(parts) == 1:
        return {role: delta}
    space = {"q": dims.heads * dims.head_dim, "kv": dims.kv_heads * dims.head_dim, "intermediate": dims.intermediate}
    sizes = [space[roles().plain[p].out_space] for p in parts]
    if arch.layout(role) == "per_head":
        per_head = delta.reshape(dims.heads, len(parts), dims.head_dim, -1)
        return {p: per_head[:, i].reshape(-1, delta.shape[1]) for i, p in enumerate(parts)}
    return dict(zip(parts, torch.split(delta, sizes)))


def _stack_views(arch, dims) -> list[tuple[str, object, object]]:
    """(stack name, one-stack architecture, its dims) per layer stack; ("", arch, dims) for a single stack."""
    if not arch.stacks:
        return [("", arch, dims)]
    return [(stack.name, arch.stack(stack.name), dims.stack(stack.name)) for stack in arch.stacks]


def _effects(peft_model, arch, dims) -> dict[tuple[str, int, str], torch.Tensor]:
    """(stack, layer, plain role) -> the delta weight of the module playing it."""
    from peft.tuners.lora import LoraLayer

    model = peft_model.base_model.model
    backbone = model.get_submodule(arch.backbone) if arch.backbone and hasattr(model, arch.backbone) else model
    out = {}
    with torch.no_grad():
        for stack, view, view_dims in _stack_views(arch, dims):
            try:
                layers = backbone.get_submodule(view.layers)
            except AttributeError:  # a task model without this stack (bart's causal LM has its decoder only)
                continue
            for index, layer in enumerate(layers):
                for role, path in view.modules.items():
                    if not view.has_role(role, index):  # a hybrid model's role only some layers have
                        continue
                    module = layer.get_submodule(path)
                    if isinstance(module, LoraLayer) and "default" in module.lora_A:
                        for part, delta in _parts(view, role, view_dims, delta_weight(module)).items():
                            out[(stack, index, part)] = delta
    return out


def _has_submodule(module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _adapted_module_count(peft_model) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(1 for _, m in peft_model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A)


def _convert_and_compare(folder: Path, source_dir: Path, source_peft, source_arch, source_dims, target_config, task: str) -> int:
    """Convert the adapter in ``folder / 'adapter'`` onto ``target_config``; compare every delta. Returns modules compared."""
    from peft import PeftModel

    from adapter_convert.pipeline import ConversionRequest, execute, prepare

    target_dir, out = folder / "target", folder / "out"
    target_config.save_pretrained(target_dir)
    prepared = prepare(ConversionRequest(adapter=str(folder / "adapter"), target=str(target_dir), out=out, layer_map="auto", align="none"))
    execute(prepared)
    plan = prepared.plan
    model_class = _model_class(task)
    torch.manual_seed(1)
    target_model = model_class.from_config(target_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target_peft = PeftModel.from_pretrained(target_model, out)
    source_fx = _effects(source_peft, source_arch, source_dims)
    target_fx = _effects(target_peft, plan.target_arch, plan.target_dims)
    if not target_fx:
        raise AssertionError("the converted adapter adapts nothing")
    maps = dict(plan.layer_map.stacks) or {"": plan.layer_map}  # per layer stack, or the one map
    compared = 0
    for (stack, layer, part), value in target_fx.items():
        (source_layer,) = maps[stack].sources[layer]
        expected = source_fx.get((stack, source_layer, part))
        if expected is None:  # a part of a fused target the source did not adapt: must stay zero
            if value.abs().max() > 1e-6:
                raise AssertionError(f"layer {layer} {part}: adapted although the source is not")
            continue
        if value.shape != expected.shape or not torch.allclose(value, expected, atol=1e-6, rtol=1e-5):
            raise AssertionError(f"layer {layer} {part}: delta weight differs from source layer {source_layer}")
        compared += 1
    wanted = {(st, t, p) for st, m in maps.items() for t, (s,) in m.sources.items() for (sst, sl, p) in source_fx if (sst, sl) == (st, s)}
    got = {key for key in target_fx if key in wanted}
    if got != wanted:
        raise AssertionError(f"modules lost: {sorted(wanted - got)[:4]}")
    # heads (modules_to_save) carried over unchanged
    for source_head, target_head in plan.heads.items():
        src = dict(source_peft.base_model.model.get_submodule(source_head).modules_to_save["default"].named_parameters())
        tgt = dict(target_peft.base_model.model.get_submodule(target_head).modules_to_save["default"].named_parameters())
        for name, param in src.items():
            if not torch.equal(param, tgt[name]):
                raise AssertionError(f"task head {target_head}.{name} differs")
    return compared


def check_model_type(model_type: str, workdir: Path | None = None, *, onto_llama: bool = True) -> Outcome:
    """Convert a LoRA on every role of a tiny ``model_type`` and compare; never raises."""
    start = time.perf_counter()
    outcome = Outcome(model_type, "failed")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _check(model_type, Path(tmp), outcome, onto_llama)
        except Exception as err:  # noqa: BLE001 - recorded, the test fails on it
            outcome.status, outcome.reason = "failed", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    outcome.seconds = round(time.perf_counter() - start, 2)
    return outcome


def _check(model_type: str, tmp: Path, outcome: Outcome, onto_llama: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    composite = _composite(model_type)
    if composite:
        outcome.status, outcome.reason = "unbuildable", f"not a text model: its config holds {composite}"
        return
    try:
        source_config = tiny_config(model_type, SOURCE_LAYERS)
        target_config = tiny_config(model_type, TARGET_LAYERS)
        task, source_model = _task_model(model_type, source_config)
    except Exception as err:  # noqa: BLE001
        outcome.status, outcome.reason = "unbuildable", f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        return
    outcome.task = task
    try:
        arch = get_architecture(model_type, source_config)
        dims = arch.dims(source_config)
    except AdapterConvertError as err:
        outcome.status, outcome.reason = "refused", err.problem
        return
    outcome.origin = arch.origin
    outcome.roles = list(dict.fromkeys(role for _, view, _ in _stack_views(arch, dims) for role in view.modules))
    source_dir = tmp / "source"
    source_config.save_pretrained(source_dir)
    # anchored on the layer list: a bare suffix could also select a vision tower's modules
    lists = "|".join(rf"{re.escape(view.layers)}\.\d+\.({'|'.join(re.escape(p) for p in view.modules.values())})"
                     for _, view, _ in _stack_views(arch, dims))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=rf"(.*\.)?({lists})", task_type=task)
    torch.manual_seed(2)
    source_peft = get_peft_model(source_model, lora)
    with torch.no_grad():
        for name, param in source_peft.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.5)
            elif "modules_to_save" in name:
                param.copy_(torch.randn_like(param))
    inner = getattr(source_model, arch.backbone, source_model) if arch.backbone else source_model
    # the stacks the task model has (whisper's causal LM: the decoder alone)
    expected_modules = sum(sum(view.has_role(role, i) for role in view.modules for i in range(view_dims.layers))
                           for _, view, view_dims in _stack_views(arch, dims) if _has_submodule(inner, view.layers))
    if _adapted_module_count(source_peft) != expected_modules:
        raise AssertionError(f"the role paths select {_adapted_module_count(source_peft)} modules, not {expected_modules}: "
                             "a suffix also matches modules outside the roles")
    source_peft.save_pretrained(tmp / "same" / "adapter")
    cfg_path = tmp / "same" / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(source_dir)
    cfg_path.write_text(json.dumps(cfg))
    try:
        outcome.modules_compared = _convert_and_compare(tmp / "same", source_dir, source_peft, arch, dims, target_config, task)
    except VerificationError as err:  # peft refused the written adapter: a wrong mapping, never a reason
        outcome.status, outcome.reason = "failed", err.problem
        return
    except AdapterConvertError as err:
        outcome.status, outcome.reason = "refused", err.problem
        return
    outcome.status = "converts"
    if onto_llama:
        outcome.onto_llama = _onto_llama(tmp, source_dir, source_peft, arch, dims, task)


def _onto_llama(tmp: Path, source_dir: Path, source_peft, arch, dims, task: str) -> str:
    from transformers import AutoConfig

    if arch.model_type == "llama":
        return "n/a (llama itself)"
    llama = AutoConfig.for_model(
        "llama", vocab_size=dims.vocab, hidden_size=dims.hidden, num_hidden_layers=TARGET_LAYERS,
        num_attention_heads=dims.heads, num_key_value_heads=dims.kv_heads, head_dim=dims.head_dim,
        intermediate_size=dims.intermediate, num_labels=source_peft.base_model.model.config.num_labels, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    folder = tmp / "llama"
    (folder / "adapter").mkdir(parents=True)
    for item in (tmp / "same" / "adapter").iterdir():
        (folder / "adapter" / item.name).write_bytes(item.read_bytes())
    try:
        _convert_and_compare(folder, source_dir, source_peft, arch, dims, llama, task)
    except VerificationError as err:  # peft refused the written adapter: a bug, never a reason
        return f"failed: {err.problem}"
    except AdapterConvertError as err:
        return f"refused: {err.problem}"
    except Exception as err:  # noqa: BLE001
        return f"failed: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
    return "exact"


