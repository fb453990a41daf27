"""Every listed architecture, tiny and random, with a real PEFT adapter: convert, load, compare.

The comparison is functional: on the same random input, each adapted student module must change
its output exactly as the mapped teacher module does. Fused modules are split into their parts
here with an implementation independent of the product's (plain slicing, gpt_neox per head).
"""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification

from adapter_convert.architectures import get_architecture
from adapter_convert.errors import UnsupportedError, WidthMismatchError
from adapter_convert.pipeline import ConversionRequest, execute, prepare
from helpers import DECODERS, ENCODERS, GQA, HEAD_DIM, HEADS, INTERMEDIATE, KV_HEADS, all_module_names, save_adapter, save_tiny_model

FUSED_PARTS = {"attn.qkv": ["attn.q", "attn.k", "attn.v"], "mlp.gate_up": ["mlp.gate", "mlp.up"]}


def split_fused(model_type: str, role: str, out: torch.Tensor) -> dict[str, torch.Tensor]:
    parts = FUSED_PARTS[role]
    if model_type == "gpt_neox":  # [heads, 3, head_dim]
        per_head = out.view(out.shape[0], HEADS, 3, -1)
        return {p: per_head[:, :, i].reshape(out.shape[0], -1) for i, p in enumerate(parts)}
    if role == "attn.qkv":
        kv = KV_HEADS * HEAD_DIM if model_type in GQA else HEADS * HEAD_DIM
        sizes = [HEADS * HEAD_DIM, kv, kv]
    else:
        sizes = [INTERMEDIATE, INTERMEDIATE]
    return dict(zip(parts, torch.split(out, sizes, dim=-1)))


def part_effects(peft_model, model_type: str, *, full: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, plain role) -> how the adapter changes that module's output on fixed inputs.

    ``full`` compares whole outputs instead (DoRA and IA3 depend on base weights, so only
    meaningful when the bases agree).
    """
    arch = get_architecture(model_type)
    backbone = peft_model.base_model.model.get_submodule(arch.backbone)
    layers = backbone.get_submodule(arch.layers)
    generator = torch.Generator().manual_seed(123)
    inputs = {n: torch.randn(7, n, generator=generator) for n in (32, 64)}
    effects = {}
    with torch.no_grad():
        for index in range(len(layers)):
            for role, path in arch.modules.items():
                module = layers[index].get_submodule(path)
                if not isinstance(module, BaseTunerLayer):
                    continue
                x = inputs[module.in_features]
                out = module(x) if full else module(x) - module.base_layer(x)
                parts = split_fused(model_type, role, out) if role in FUSED_PARTS else {role: out}
                effects |= {(index, part): value for part, value in parts.items()}
    return effects


def assert_same_effects(student, teacher, layer_sources: dict[int, int], *, full: bool = False, student_type, teacher_type):
    student_fx, teacher_fx = part_effects(student, student_type, full=full), part_effects(teacher, teacher_type, full=full)
    assert student_fx, "the converted adapter adapts nothing"
    compared = 0
    for (layer, role), value in student_fx.items():
        expected = teacher_fx.get((layer_sources[layer], role))
        if expected is None:  # a part of a fused module the teacher did not adapt: must be untouched
            torch.testing.assert_close(value, torch.zeros_like(value), atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-4)
            compared += 1
    teacher_roles = {(l, r) for (l, r) in teacher_fx if l in layer_sources.values()}
    assert compared == len(teacher_roles), "some teacher modules did not reach the student"


def convert(tmp_path, teacher_type, student_type, peft_config, *, teacher_layers=4, student_layers=2, layer_map="skip", student_seed=7, align="none"):
    """Independently initialised pairs: the exact tensor mapping is what is tested, so --align none
    (auto would measure them unrelated and align instead; test_compatibility covers that)."""
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    teacher = save_tiny_model(teacher_dir, teacher_type, teacher_layers)
    save_tiny_model(student_dir, student_type, student_layers, seed=student_seed)
    teacher_peft = save_adapter(tmp_path / "adapter", teacher, peft_config, teacher_dir)
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(student_dir), out=tmp_path / "out", layer_map=layer_map, align=align)
    prepared = prepare(request)
    execute(prepared)
    student = PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(student_dir), tmp_path / "out").eval()
    return teacher_peft.eval(), student, prepared.plan


def lora_on_everything(model_type: str, **kwargs) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=all_module_names(model_type), task_type="TOKEN_CLS", **kwargs)


@pytest.mark.parametrize("model_type", ENCODERS + DECODERS)
def test_same_family_skip_every_architecture(tmp_path, model_type):
    teacher, student, plan = convert(tmp_path, model_type, model_type, lora_on_everything(model_type))
    assert plan.layer_map.sources == {0: (0,), 1: (2,)}
    assert_same_effects(student, teacher, {0: 0, 1: 2}, student_type=model_type, teacher_type=model_type)
    # the task head is carried over unchanged
    head = get_architecture(model_type).heads["TOKEN_CLS"]
    for name, param in teacher.base_model.model.get_submodule(head).modules_to_save["default"].named_parameters():
        torch.testing.assert_close(dict(student.base_model.model.get_submodule(head).modules_to_save["default"].named_parameters())[name], param)


CROSS = [
    ("bert", "distilbert"), ("distilbert", "bert"), ("roberta", "bert"), ("xlm-roberta", "roberta"),
    ("bert", "electra"), ("deberta-v2", "bert"), ("llama", "qwen2"), ("mistral", "llama"), ("qwen3", "gemma"),
    ("gemma2", "llama"), ("llama", "phi3"), ("phi3", "llama"), ("bert", "gpt2"), ("gpt2", "bert"),
    ("gpt_neox", "gpt2"), ("bert", "gpt_neox"), ("gpt2", "gpt_neox"), ("phi3", "qwen3"),
]


@pytest.mark.parametrize("teacher_type,student_type", CROSS)
def test_cross_architecture_lora(tmp_path, teacher_type, student_type):
    teacher, student, plan = convert(tmp_path, teacher_type, student_type, lora_on_everything(teacher_type))
    assert_same_effects(student, teacher, {0: 0, 1: 2}, student_type=student_type, teacher_type=teacher_type)


def test_fusing_only_some_parts_keeps_rank_math_exact(tmp_path):
    """q and v only (k unadapted) into gpt2's c_attn: rank 2r block, a zero k block, scaling kept."""
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], task_type="TOKEN_CLS")
    teacher, student, plan = convert(tmp_path, "bert", "gpt2", config)
    assert [m.operation for m in plan.modules] == ["fuse"]
    assert_same_effects(student, teacher, {0: 0, 1: 2}, student_type="gpt2", teacher_type="bert")
    c_attn = student.base_model.model.transformer.h[0].attn.c_attn
    assert c_attn.r["default"] == 8 and c_attn.fan_in_fan_out


def test_rslora_alpha_and_rank_patterns_survive_fusion(tmp_path):
    config = LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, target_modules=all_module_names("llama"), task_type="TOKEN_CLS",
        rank_pattern={"layers.0.self_attn.k_proj": 2}, alpha_pattern={"layers.2.self_attn.v_proj": 3},
    )
    teacher, student, _ = convert(tmp_path, "llama", "phi3", config)
    assert_same_effects(student, teacher, {0: 0, 1: 2}, student_type="phi3", teacher_type="llama")


@pytest.mark.parametrize("teacher_type,student_type", [("bert", "bert"), ("bert", "distilbert"), ("phi3", "llama"), ("llama", "phi3")])
def test_dora_and_ia3_reproduce_full_outputs_on_shared_base_weights(tmp_path, teacher_type, student_type):
    """With the student's base weights copied from the teacher's mapped layers, DoRA and IA3
    modules must reproduce the teacher's full outputs, not only the LoRA delta."""

    for kind, config in {
        "dora": lora_on_everything(teacher_type, use_dora=True),
        "ia3": IA3Config(
            target_modules=all_module_names(teacher_type),
            feedforward_modules=[get_architecture(teacher_type).modules["mlp.down"]],
            task_type="TOKEN_CLS",
        ),
    }.items():
        folder = tmp_path / kind
        teacher, student, _ = convert(folder, teacher_type, student_type, config)
        copy_base_weights(teacher.base_model.model, student.base_model.model, teacher_type, student_type, {0: 0, 1: 2})
        assert_same_effects(student, teacher, {0: 0, 1: 2}, full=True, student_type=student_type, teacher_type=teacher_type)


def copy_base_weights(teacher, student, teacher_type, student_type, layer_sources):
    """Give each adapted student module the base weight its teacher module(s) had."""
    t_arch, s_arch = get_architecture(teacher_type), get_architecture(student_type)
    t_layers = teacher.get_submodule(t_arch.backbone).get_submodule(t_arch.layers)
    s_layers = student.get_submodule(s_arch.backbone).get_submodule(s_arch.layers)
    with torch.no_grad():
        for s_index, t_index in layer_sources.items():
            for role, path in s_arch.modules.items():
                target = s_layers[s_index].get_submodule(path).base_layer
                if role in t_arch.modules:
                    source = t_layers[t_index].get_submodule(t_arch.modules[role]).base_layer.weight
                elif role in FUSED_PARTS:  # fuse teacher parts (concat layout, as phi3)
                    source = torch.cat([t_layers[t_index].get_submodule(t_arch.modules[p]).base_layer.weight for p in FUSED_PARTS[role]])
                else:  # split a fused teacher module
                    fused_role = next(f for f, parts in FUSED_PARTS.items() if role in parts)
                    fused = t_layers[t_index].get_submodule(t_arch.modules[fused_role]).base_layer.weight
                    source = split_fused(teacher_type, fused_role, fused.T)[role].T
                target.weight.copy_(source)


def test_averaging_takes_the_parameter_mean(tmp_path):
    teacher, student, plan = convert(tmp_path, "bert", "bert", lora_on_everything("bert"), layer_map="avg")
    assert plan.layer_map.sources == {0: (0, 1), 1: (2, 3)}
    t_layers = teacher.base_model.model.bert.encoder.layer
    s_layers = student.base_model.model.bert.encoder.layer
    for which in ("lora_A", "lora_B"):
        expected = (getattr(t_layers[2].attention.self.query, which)["default"].weight + getattr(t_layers[3].attention.self.query, which)["default"].weight) / 2
        torch.testing.assert_close(getattr(s_layers[1].attention.self.query, which)["default"].weight, expected)


def test_fuse_then_split_round_trip_is_exact(tmp_path):
    """bert q/k/v -> gpt2 c_attn -> bert again: every delta weight is unchanged."""
    teacher, gpt2_student, _ = convert(tmp_path / "a", "bert", "gpt2", lora_on_everything("bert"), student_layers=4, layer_map="auto")
    request = ConversionRequest(adapter=str(tmp_path / "a" / "out"), target=str(tmp_path / "a" / "teacher"), out=tmp_path / "back", align="none")
    execute(prepare(request, ))
    back = PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(tmp_path / "a" / "teacher"), tmp_path / "back").eval()
    identity = {i: i for i in range(4)}
    assert_same_effects(back, teacher, identity, student_type="bert", teacher_type="bert")


def test_explicit_layer_map_with_gaps_adapts_only_mapped_layers(tmp_path):
    teacher, student, _ = convert(tmp_path, "llama", "llama", lora_on_everything("llama"), student_layers=3, layer_map="3:0,1:2")
    effects = part_effects(student, "llama")
    assert {layer for layer, _ in effects} == {0, 2}
    assert_same_effects(student, teacher, {0: 3, 2: 1}, student_type="llama", teacher_type="llama")


def test_gqa_width_mismatch_is_refused(tmp_path):
    """llama's grouped k/v heads (2 of 4) are narrower than bert's: no direct mapping exists."""
    config = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], task_type="TOKEN_CLS")
    with pytest.raises(WidthMismatchError, match="attn.k maps 32 -> 16 features in the source but 32 -> 32"):
        convert(tmp_path, "llama", "bert", config, align="none")


def test_alignment_without_a_tokenizer_says_what_is_missing(tmp_path):
    """auto aligns other widths, which needs tokenizers; these tiny models ship none."""
    config = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], task_type="TOKEN_CLS")
    with pytest.raises(UnsupportedError, match="has no usable tokenizer"):
        convert(tmp_path, "llama", "bert", config, align="auto")


def test_role_without_counterpart_is_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="mlp.gate"):
        convert(tmp_path, "llama", "gpt2", lora_on_everything("llama"))


@pytest.mark.parametrize("teacher_type,student_type", [("bert", "distilbert"), ("llama", "qwen2"), ("gpt2", "bert")])
def test_adapted_token_embeddings_carry_over(tmp_path, teacher_type, student_type):
    embedding = get_architecture(teacher_type).embeddings["embed.tokens"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=[embedding, *all_module_names(teacher_type)[:1]], task_type="TOKEN_CLS")
    teacher, student, plan = convert(tmp_path, teacher_type, student_type, config)
    assert plan.embeddings == ("embed.tokens",)
    # a saved copy of the source's embedding matrix is base weight: never carried onto the target
    assert all("base_layer" not in key for key in load_file(tmp_path / "out" / "adapter_model.safetensors"))
    ids = torch.tensor([[3, 5, 7, 11]])
    t_emb = teacher.base_model.model.get_submodule(get_architecture(teacher_type).backbone).get_submodule(embedding)
    s_arch = get_architecture(student_type)
    s_emb = student.base_model.model.get_submodule(s_arch.backbone).get_submodule(s_arch.embeddings["embed.tokens"])
    with torch.no_grad():
        torch.testing.assert_close(s_emb(ids) - s_emb.base_layer(ids), t_emb(ids) - t_emb.base_layer(ids))


def test_an_adapter_trained_on_some_layers_lands_on_their_mapped_layers(tmp_path):
    """layers_to_transform on the source: only teacher layers 0 and 2 are adapted; SKIP maps them to
    student layers 0 and 1, and the target config selects exactly those modules."""
    config = LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[0, 2], layers_pattern="layer", task_type="TOKEN_CLS")
    teacher, student, _ = convert(tmp_path, "bert", "distilbert", config)
    assert {layer for layer, _ in part_effects(student, "distilbert")} == {0, 1}
    assert_same_effects(student, teacher, {0: 0, 1: 2}, student_type="distilbert", teacher_type="bert")
    config = LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[2], layers_pattern="layer", task_type="TOKEN_CLS")
    teacher, student, _ = convert(tmp_path / "one", "bert", "distilbert", config)
    assert {layer for layer, _ in part_effects(student, "distilbert")} == {1}
    import json

    target_modules = json.loads((tmp_path / "one" / "out" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(target_modules) == ["transformer.layer.1.attention.q_lin", "transformer.layer.1.attention.v_lin"]
