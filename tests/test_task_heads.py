"""A task head carries over only onto a head with the same parameters; otherwise the plan refuses,
naming both heads, before anything is written (it used to fail at write time with exit 7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForSequenceClassification
from typer.testing import CliRunner

from adapter_convert.architectures import get_architecture
from architecture_coverage import tiny_config
from adapter_convert.cli import app
from adapter_convert.errors import UnsupportedError
from adapter_convert.pipeline import ConversionRequest, prepare
from helpers import save_adapter


def _pair(tmp_path, source_type: str, target_type: str, *, bias: float | None = 0.25):
    """A tiny SEQ_CLS source with a LoRA and its head in modules_to_save, and a target of equal widths."""
    source_config = tiny_config(source_type, 4)
    dims = get_architecture(source_type, source_config).dims(source_config)
    target_config = AutoConfig.for_model(
        target_type, vocab_size=dims.vocab, hidden_size=dims.hidden, num_hidden_layers=2, num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads, head_dim=dims.head_dim, intermediate_size=dims.intermediate, num_labels=5, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(source_config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.bias.fill_(bias)
    model.save_pretrained(tmp_path / "source")
    AutoModelForSequenceClassification.from_config(target_config).save_pretrained(tmp_path / "target")
    query = get_architecture(source_type, source_config).modules["attn.q"]
    save_adapter(tmp_path / "adapter", model, LoraConfig(r=4, target_modules=[query], task_type="SEQ_CLS"), tmp_path / "source")
    return ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out",
                             align="none", layer_map="skip", dry_run=True)


def test_a_trained_bias_onto_a_head_without_one_is_refused_at_plan_time(tmp_path):
    request = _pair(tmp_path, "tapas", "llama")
    with pytest.raises(UnsupportedError, match=r"task head 'classifier' has a trained bias \(5 values, largest \|b\| = 0.25\), "
                                               r"but llama's SEQ_CLS head 'score' has none"):
        prepare(request)
    # the CLI: exit 4 on a dry run, nothing written
    result = CliRunner().invoke(app, ["convert", request.adapter, "--target", request.target, "--out", str(request.out),
                                      "--align", "none", "--dry-run"], env={"COLUMNS": "300"})
    assert result.exit_code == 4 and "train a new head on the target" in " ".join(result.output.split())
    assert not request.out.exists()


def test_an_all_zero_bias_is_named_with_the_tensor_to_delete(tmp_path):
    request = _pair(tmp_path, "tapas", "llama", bias=0.0)
    with pytest.raises(UnsupportedError, match=r"the bias is all zeros.*Delete the tensor 'base_model.model.classifier.bias'"):
        prepare(request)


def test_heads_built_differently_are_refused(tmp_path):
    # roberta's classification head is two layers (dense, out_proj); llama's score is one matrix
    request = _pair(tmp_path, "roberta", "llama", bias=None)
    with pytest.raises(UnsupportedError, match=r"'classifier' has parameters dense.bias, dense.weight, out_proj.bias, "
                                               r"out_proj.weight, but llama's SEQ_CLS head 'score' has weight"):
        prepare(request)


def test_heads_with_the_same_parameters_still_carry_over(tmp_path):
    request = _pair(tmp_path, "tapas", "tapas")
    plan = prepare(request).plan
    assert plan.heads == {"classifier": "classifier"}
    assert get_architecture("llama").head_params["SEQ_CLS"] == ("weight",)


def test_a_head_without_a_bias_gets_a_zero_bias_on_a_head_with_one(tmp_path):
    """llama's score (no bias) onto tapas's classifier (with one): the weight carries over and the
    bias is written as zeros, so the head computes the same logits; the result loads with peft."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from adapter_convert.pipeline import execute

    request = _pair(tmp_path, "llama", "tapas", bias=None)
    prepared = prepare(request)
    assert prepared.plan.heads == {"score": "classifier"} and prepared.plan.head_zeros == {"classifier": ("bias",)}
    execute(prepare(dataclasses.replace(request, dry_run=False)))
    written = load_file(tmp_path / "out" / "adapter_model.safetensors")
    source = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    torch.testing.assert_close(written["base_model.model.classifier.weight"], source["base_model.model.score.weight"], rtol=0, atol=0)
    assert torch.equal(written["base_model.model.classifier.bias"], torch.zeros(5))
    target = AutoModelForSequenceClassification.from_pretrained(tmp_path / "target")
    head = PeftModel.from_pretrained(target, tmp_path / "out").base_model.model.classifier.modules_to_save["default"]
    hidden = torch.randn(3, head.in_features)
    torch.testing.assert_close(head(hidden), hidden @ source["base_model.model.score.weight"].T)
