"""Fitted alignment across fused projections: split, align part by part, fuse again.

phi3 is llama with q, k and v fused into ``qkv_proj`` and gate and up into ``gate_up_proj``, so a
llama's weights, fused and with the residual stream's dimensions permuted, make a phi3 that
computes the same function in another basis. A LoRA on every projection of one, aligned onto
the other with fitted maps, must then give the same logits as the source with its adapter; a
part read from the wrong rows of a fused output (k's rows taken for q's) would not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from adapter_convert.cli import app
from helpers import bpe_tokenizer, save_adapter, tiny_config

SIZES = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48, max_position_embeddings=64,
             pad_token_id=0, bos_token_id=1, eos_token_id=1, tie_word_embeddings=False, rms_norm_eps=1e-6)
LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def _phi3_of(llama, perm: torch.Tensor) -> torch.nn.Module:
    """The phi3 that computes ``llama``'s function with the residual stream permuted by ``perm``."""
    phi3 = AutoModelForCausalLM.from_config(tiny_config("phi3", 2, vocab_size=llama.config.vocab_size, **SIZES)).eval()
    source, target = llama.model, phi3.model
    with torch.no_grad():
        target.embed_tokens.weight.copy_(source.embed_tokens.weight[:, perm])
        target.norm.weight.copy_(source.norm.weight[perm])
        phi3.lm_head.weight.copy_(llama.lm_head.weight[:, perm])
        for s, t in zip(source.layers, target.layers):
            attn, mlp = s.self_attn, s.mlp
            t.self_attn.qkv_proj.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])[:, perm])
            t.self_attn.o_proj.weight.copy_(attn.o_proj.weight[perm])
            t.mlp.gate_up_proj.weight.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])[:, perm])
            t.mlp.down_proj.weight.copy_(mlp.down_proj.weight[perm])
            t.input_layernorm.weight.copy_(s.input_layernorm.weight[perm])
            t.post_attention_layernorm.weight.copy_(s.post_attention_layernorm.weight[perm])
    return phi3


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    """A random llama; the phi3 of its function in a permuted basis; the phi3 of it in its own basis."""
    root = tmp_path_factory.mktemp("fused")
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    llama = AutoModelForCausalLM.from_config(tiny_config("llama", 2, vocab_size=len(tokenizer), **SIZES)).eval()
    phi3 = _phi3_of(llama, torch.randperm(SIZES["hidden_size"], generator=torch.Generator().manual_seed(3)))
    phi3_same = _phi3_of(llama, torch.arange(SIZES["hidden_size"]))
    ids = torch.randint(2, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(phi3(ids).logits, llama(ids).logits, atol=1e-5, rtol=1e-4)  # one function, two bases
    for name, model in (("llama", llama), ("phi3", phi3), ("phi3-same", phi3_same)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.mark.parametrize("method", ["lstsq", "correlation"])
@pytest.mark.parametrize(("source", "target", "modules"), [("llama", "phi3", LLAMA_MODULES), ("phi3", "llama", PHI3_MODULES),
                                                         ("phi3-same", "phi3", PHI3_MODULES)])
def test_an_adapter_aligns_into_and_out_of_fused_projections_exactly(pair, tmp_path, source, target, modules, method):
    base = AutoModelForCausalLM.from_pretrained(pair / source)
    teacher = save_adapter(tmp_path / "adapter", base, LoraConfig(r=4, lora_alpha=8, target_modules=modules, task_type="CAUSAL_LM"),
                           pair / source)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "adapter"), "--target", str(pair / target), "--out", str(out),
                                      "--align", method, "--calibration-tokens", "2048", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    operations = {row["role"]: row["operation"] for row in summary["modules"]}
    assert set(operations.values()) == {"copy", {"llama": "fuse", "phi3": "split", "phi3-same": "copy"}[source]}, operations
    # fitted part by part: q, k and v (and gate, up) each have their maps
    assert {row["role"] for row in summary["alignment"]["modules"]} >= {"attn.q", "attn.k", "attn.v", "mlp.gate", "mlp.up"}
    converted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pair / target), out).eval()
    ids = torch.randint(2, teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = teacher.eval()(ids).logits, converted(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(pair / target)(ids).logits
    assert (expected - plain).abs().max() > 0.1  # the adapter changes the logits: the test can fail
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)
    # a fused module split and fused again keeps its rank (one A); separate q, k and v add up theirs
    if target == "phi3":
        rank = converted.base_model.model.model.layers[0].self_attn.qkv_proj.lora_A["default"].weight.shape[0]
        assert rank == (4 if source == "phi3-same" else 12)
