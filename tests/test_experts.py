"""Mixture-of-experts adapters (tiny qwen3_moe / qwen2_moe): LoRA on the experts' 3-D weights
(peft target_parameters) is copied onto the same expert layout and refused, naming the reason,
onto any other; a shared expert's Linear modules convert like an MLP."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from adapter_convert.architectures import get_architecture
from adapter_convert.architectures.derive import _peft_moe_renames
from architecture_coverage import tiny_config
from adapter_convert.errors import UnsupportedError
from adapter_convert.pipeline import ConversionRequest, execute, prepare

EXPERT_LORA = dict(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])


def _save(folder, model_type: str, layers: int, *, seed: int, experts: int = 4, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, layers, num_experts=experts, num_local_experts=experts, **overrides))
    model.save_pretrained(folder)
    return model


def _adapter(tmp_path, model, lora: dict):
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param))
    peft_model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(tmp_path / "source")}))
    return peft_model


def _lora_params(peft_model, layer: int) -> dict[str, torch.Tensor]:
    experts = peft_model.base_model.model.model.layers[layer].mlp.experts
    return {name: p.detach() for name, p in experts.named_parameters() if "lora_" in name}


def test_expert_loras_copy_onto_the_same_expert_layout(tmp_path):
    source = _save(tmp_path / "source", "qwen3_moe", 4, seed=0)
    _save(tmp_path / "target", "qwen3_moe", 2, seed=5)
    teacher = _adapter(tmp_path, source, EXPERT_LORA)
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                                layer_map="skip", align="none")
    prepared = prepare(request)
    assert len(prepared.parsed.experts) == 4 * 4  # 4 layers x 2 wrapped weights x (A, B)
    execute(prepared)
    student = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "target"), tmp_path / "out")
    assert student.peft_config["default"].target_parameters == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    for target, source_layer in {0: 0, 1: 2}.items():
        got, want = _lora_params(student, target), _lora_params(teacher, source_layer)
        assert got.keys() == want.keys() and len(got) == 4
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    # and so does each wrapped weight's delta, (experts, out, in), as peft computes it
    for target, source_layer in {0: 0, 1: 2}.items():
        s_exp = student.base_model.model.model.layers[target].mlp.experts
        t_exp = teacher.base_model.model.model.layers[source_layer].mlp.experts
        torch.testing.assert_close(s_exp.get_delta_weight("default"), t_exp.get_delta_weight("default"))
        torch.testing.assert_close(s_exp.base_layer.get_delta_weight("default"), t_exp.base_layer.get_delta_weight("default"))


def test_another_expert_layout_is_refused_naming_it(tmp_path):
    source = _save(tmp_path / "source", "qwen3_moe", 4, seed=0)
    _save(tmp_path / "target", "qwen3_moe", 2, seed=5, experts=8)
    _adapter(tmp_path, source, EXPERT_LORA)
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                                layer_map="skip", align="none", dry_run=True)
    with pytest.raises(UnsupportedError, match=r"LoRAs on the experts' weights \(peft target_parameters, qwen3_moe layers 0, 1, 2, 3\).*"
                                               r"source layer 0 has experts gate_up_proj 4 x 1536 x 64, down_proj 4 x 64 x 768, "
                                               r"target layer 0 gate_up_proj 8 x 1536 x 64"):
        prepare(request)


def test_expert_loras_onto_a_model_without_experts_are_refused(tmp_path):
    source = _save(tmp_path / "source", "qwen3_moe", 4, seed=0)
    dims = get_architecture("qwen3_moe", source.config).dims(source.config)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=dims.vocab, hidden_size=dims.hidden, num_hidden_layers=2, num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads, head_dim=dims.head_dim, intermediate_size=dims.intermediate)).save_pretrained(tmp_path / "target")
    _adapter(tmp_path, source, EXPERT_LORA)
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                                layer_map="skip", align="none", dry_run=True)
    with pytest.raises(UnsupportedError, match=r"same expert layout: llama has no experts module at 'mlp.experts'"):
        prepare(request)


def test_shared_expert_modules_play_the_mlp_roles():
    config = tiny_config("qwen2_moe", 2)
    arch = get_architecture("qwen2_moe", config)
    shared = {"mlp.gate": "mlp.shared_expert.gate_proj", "mlp.up": "mlp.shared_expert.up_proj", "mlp.down": "mlp.shared_expert.down_proj"}
    assert arch.experts == "mlp.experts"
    if not _peft_moe_renames("qwen2_moe"):  # peft up to 0.21: a shared expert's projections can be targeted
        assert {role: arch.modules[role] for role in shared} == shared
        return
    # peft 0.22 renames qwen2_moe targets named gate_proj, up_proj and down_proj onto the fused experts: a
    # shared expert's projections cannot be targeted by name, and the architecture says so instead of mapping them
    assert not set(shared) & set(arch.modules)
    assert all("peft renames qwen2_moe targets" in arch.unsupported[path] for path in shared.values())


def test_a_convolution_is_not_taken_for_experts():
    # lfm3's short convolution has a 3-D weight too; its layers hold no experts, and its dense MLP converts
    arch = get_architecture("lfm3", tiny_config("lfm3", 4))
    assert arch.experts is None and arch.mlp_types == ()
    assert arch.modules["mlp.gate"] == "feed_forward.w1"
