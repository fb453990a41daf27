"""Hybrid models, whose layers differ: a role played by one module in only some layers (jamba's
attention only in its attention layers and its dense MLP only between the expert layers;
kimi_linear's dense MLP only before the experts). Each such role is derived with the layers that
have it; an adapted module converts onto a target layer that has its role, and a layer map that
sends it onto one without is refused, naming the role, the layers and an explicit map."""

from __future__ import annotations


import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from adapter_convert.architectures import get_architecture
from adapter_convert.cli import app
from adapter_convert.errors import LayerMapError, UnsupportedError
from adapter_convert.pipeline import ConversionRequest, execute, prepare
from architecture_coverage import tiny_config
from helpers import delta_weight, save_adapter

# jamba: attention in layers 1 and 3 (mamba in 0 and 2), experts in 1 and 3 (a dense MLP in 0 and 2)
JAMBA = dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, use_mamba_kernels=False)
CASES = {"jamba": JAMBA, "kimi_linear": {}}


def _tiny(model_type: str, layers: int):
    return tiny_config(model_type, layers, **CASES[model_type])


def _save(folder, model_type: str, layers: int, *, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny(model_type, layers))
    model.save_pretrained(folder)
    return model


def _adapter(tmp_path, model_type: str):
    """A LoRA on every module with a role, in every layer that has it, with random A and B."""
    source = _save(tmp_path / "source", model_type, 4, seed=0)
    _save(tmp_path / "target", model_type, 2, seed=5)
    arch = get_architecture(model_type, source.config)
    paths = "|".join(arch.modules.values()).replace(".", r"\.")
    teacher = save_adapter(tmp_path / "adapter", source, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                                                     target_modules=rf".*\.{arch.layers}\.\d+\.({paths})"),
                           tmp_path / "source")
    return teacher, arch


def _deltas(peft_model, arch) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, role) -> the module's delta weight scaling * B @ A, for every adapted module."""
    layers = peft_model.base_model.model.get_submodule(f"{arch.backbone}.{arch.layers}")
    out = {}
    for index, layer in enumerate(layers):
        for role, path in arch.modules.items():
            if arch.has_role(role, index):
                module = layer.get_submodule(path)
                if "default" in getattr(module, "lora_A", {}):
                    out[(index, role)] = delta_weight(module)
    return out


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_partial_roles_convert_onto_layers_that_have_them(tmp_path, model_type):
    teacher, source_arch = _adapter(tmp_path, model_type)
    assert source_arch.partial, "the tiny model is hybrid: some roles are only in some layers"
    prepared = prepare(ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                                         layer_map="auto", align="none"))
    execute(prepared)
    plan = prepared.plan
    student = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "target"), tmp_path / "out")
    want, got = _deltas(teacher, source_arch), _deltas(student, plan.target_arch)
    expected = {(t, role): want[(s, role)] for t, (s,) in plan.layer_map.rows() for role in plan.target_arch.modules
                if plan.target_arch.has_role(role, t) and (s, role) in want}
    assert got.keys() == expected.keys() and expected
    for key, delta in expected.items():
        torch.testing.assert_close(got[key], delta, rtol=1e-5, atol=1e-6)
    # every adapted partial role landed on a layer of the target that has it
    assert {role for _, role in got} & set(plan.target_arch.partial)


def test_jamba_roles_name_their_layers():
    arch = get_architecture("jamba", _tiny("jamba", 4))
    assert arch.partial["attn.q"] == (1, 3) and arch.partial["mlp.up"] == (0, 2)
    assert arch.modules["attn.q"] == "self_attn.q_proj" and arch.modules["mlp.up"] == "feed_forward.up_proj"
    dims = arch.dims(_tiny("jamba", 4))
    assert dims.role_types == ("no attn, mlp", "attn, no mlp", "no attn, mlp", "attn, no mlp")


def test_a_layer_map_onto_a_layer_without_the_role_is_refused(tmp_path):
    """Source layer 2's dense MLP onto target layer 1 (experts, no dense MLP): refused, never dropped."""
    _adapter(tmp_path, "jamba")
    with pytest.raises(LayerMapError) as caught:
        prepare(ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                                  layer_map="0:0,2:1", align="none"))
    assert "onto target layer 1, which has no mlp." in caught.value.problem and "only in layers 0" in caught.value.problem
    assert "--layer-map '0:0,1:1'" in caught.value.fix  # source layer 1's attention onto target layer 1's
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "adapter"), "--target", str(tmp_path / "target"),
                                      "--out", str(tmp_path / "out"), "--layer-map", "0:0,2:1", "--align", "none"])
    assert result.exit_code == LayerMapError.exit_code, result.output
    assert not (tmp_path / "out").exists()


def test_alignment_on_partial_roles_is_refused_naming_align_none(tmp_path):
    _adapter(tmp_path, "jamba")
    with pytest.raises(UnsupportedError) as caught:
        prepare(ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                                  align="lstsq"))
    assert "in only some layers of jamba" in caught.value.problem and "--align none" in caught.value.fix


def test_the_plan_says_which_layers_have_a_partial_role(tmp_path):
    import json

    _adapter(tmp_path, "jamba")
    args = ["convert", str(tmp_path / "adapter"), "--target", str(tmp_path / "target"), "--out", str(tmp_path / "out"),
            "--align", "none", "--dry-run"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source_base"]["architecture"]["partial"]["attn.q"] == [1, 3]
    assert summary["target_base"]["architecture"]["partial"] == {"attn.q": [1], "attn.k": [1], "attn.v": [1], "attn.o": [1],
                                                                 "mlp.gate": [0], "mlp.up": [0], "mlp.down": [0]}
    table = " ".join(CliRunner().invoke(app, args, env={"COLUMNS": "400"}).output.split())
    assert "attn.q only in layers 1, 3" in table
