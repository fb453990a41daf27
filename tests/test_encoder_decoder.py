"""Encoder-decoder models (t5, bart): two layer stacks, each converted on its own.

A LoRA on every linear module of both stacks (self-attention, the decoder's cross-attention, the
MLP) converts with ``--align none`` onto the same model type with fewer layers: the layer map is
built per stack (encoder layers onto encoder layers, decoder onto decoder), and every converted
module's delta weight ``scaling * B @ A`` equals the one of the source module it came from, read
back through peft. Onto a single-stack model, or with fitted alignment maps, it is refused with a
typed error; a seq2seq LM's adapter distils in output space (test_seq2seq_distillation.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapter_convert.architectures import get_architecture
from adapter_convert.cli import app
from adapter_convert.errors import UnsupportedError, UsageError, WidthMismatchError
from adapter_convert.pipeline import ConversionRequest, execute, prepare
from helpers import delta_weights, save_adapter

T5 = dict(model_type="t5", d_model=32, d_ff=48, d_kv=8, num_heads=4, vocab_size=64, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1)
T5_GATED = T5 | {"feed_forward_proj": "gated-gelu"}
BART = dict(model_type="bart", d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
            decoder_ffn_dim=40, vocab_size=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, forced_eos_token_id=2)
LAYER_KEYS = {"t5": ("num_layers", "num_decoder_layers"), "bart": ("encoder_layers", "decoder_layers")}


def _config(spec: dict, encoder: int, decoder: int):
    from transformers import AutoConfig

    spec = dict(spec)
    model_type = spec.pop("model_type")
    enc_key, dec_key = LAYER_KEYS[model_type]
    return AutoConfig.for_model(model_type, **spec, **{enc_key: encoder, dec_key: decoder})


def _seq2seq(config):
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(config)


def _source_adapter(folder: Path, spec: dict, encoder: int = 4, decoder: int = 4, *, weights: bool = False,
                    task_type: str | None = "SEQ_2_SEQ_LM"):
    """A tiny random seq2seq model with a LoRA (random A and B) on every linear module of its layers;
    ``weights``: the base's weights are saved too (else its config only). ``task_type`` None: an
    adapter on the bare model, which writes no text (only copied between encoder-decoders)."""
    from peft import LoraConfig

    config = _config(spec, encoder, decoder)
    base = _seq2seq(config)
    if weights:
        base.save_pretrained(folder / "source")
    config.save_pretrained(folder / "source")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=task_type)
    return save_adapter(folder / "adapter", base, lora, folder / "source", seed=2)


def _convert(folder: Path, spec: dict, encoder: int, decoder: int, *, layer_map: str = "auto", align: str = "none"):
    _config(spec, encoder, decoder).save_pretrained(folder / "target")
    prepared = prepare(ConversionRequest(adapter=str(folder / "adapter"), target=str(folder / "target"), out=folder / "out",
                                         layer_map=layer_map, align=align))
    summary = execute(prepared)
    return prepared.plan, summary


def _assert_exact(folder: Path, source_peft, plan, spec: dict, encoder: int, decoder: int) -> int:
    """Every target module's delta equals the source module of its mapped layer; none is lost."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target_peft = PeftModel.from_pretrained(_seq2seq(_config(spec, encoder, decoder)), folder / "out")
    source, target = delta_weights(source_peft), delta_weights(target_peft)
    stack_maps = dict(plan.layer_map.stacks)
    lists = {stack.name: stack.layers for stack in plan.target_arch.stacks}
    expected = {}
    for name, stack_map in stack_maps.items():
        pattern = re.compile(rf"^(.*{re.escape(lists[name])})\.(\d+)\.(.+)$")
        for source_name in source:
            match = pattern.match(source_name)
            if match is None:
                continue
            for target_layer, (source_layer,) in stack_map.rows():
                if int(match.group(2)) == source_layer:
                    expected[f"{match.group(1)}.{target_layer}.{match.group(3)}"] = source_name
    assert sorted(target) == sorted(expected)
    for target_name, source_name in expected.items():
        torch.testing.assert_close(target[target_name], source[source_name], rtol=1e-5, atol=1e-6, msg=target_name)
    return len(expected)


def test_both_stacks_are_derived_with_cross_attention_in_the_decoder():
    t5 = get_architecture("t5", _config(T5_GATED, 4, 4))
    assert [(s.name, s.layers, s.config["layers"]) for s in t5.stacks] == [
        ("encoder", "encoder.block", "num_layers"), ("decoder", "decoder.block", "num_decoder_layers")]
    encoder, decoder = t5.stacks
    assert encoder.modules == {"attn.q": "layer.0.SelfAttention.q", "attn.k": "layer.0.SelfAttention.k",
                               "attn.v": "layer.0.SelfAttention.v", "attn.o": "layer.0.SelfAttention.o",
                               "mlp.gate": "layer.1.DenseReluDense.wi_0", "mlp.up": "layer.1.DenseReluDense.wi_1",
                               "mlp.down": "layer.1.DenseReluDense.wo"}
    assert {role: decoder.modules[role] for role in ("cross.q", "cross.o", "mlp.down")} == {
        "cross.q": "layer.1.EncDecAttention.q", "cross.o": "layer.1.EncDecAttention.o", "mlp.down": "layer.2.DenseReluDense.wo"}
    bart = get_architecture("bart", _config(BART, 4, 2))
    # bart's decoder reads its own MLP width (decoder_ffn_dim) and layer count
    assert [s.config for s in bart.stacks] == [{"layers": "encoder_layers"},
                                               {"layers": "decoder_layers", "intermediate": "decoder_ffn_dim"}]
    dims = bart.dims(_config(BART, 4, 2))
    assert [(name, d.layers, d.intermediate) for name, d in dims.stacks] == [("encoder", 4, 48), ("decoder", 2, 40)]
    assert bart.stacks[1].modules["cross.k"] == "encoder_attn.k_proj" and bart.stacks[1].modules["mlp.up"] == "fc1"
    # the seq2seq model holds bart's bare model under "model"; t5's keeps its stacks at its top
    assert (bart.backbone, t5.backbone) == ("model", "")


@pytest.mark.parametrize("spec", [T5, T5_GATED, BART], ids=["t5", "t5-gated", "bart"])
def test_converts_exactly_onto_fewer_layers_per_stack(spec, tmp_path):
    source = _source_adapter(tmp_path, spec)
    plan, summary = _convert(tmp_path, spec, 2, 2)
    assert [(name, m.rows()) for name, m in plan.layer_map.stacks] == [("encoder", [(0, (0,)), (1, (2,))]),
                                                                       ("decoder", [(0, (0,)), (1, (2,))])]
    compared = _assert_exact(tmp_path, source, plan, spec, 2, 2)
    per_layer = len(plan.stacks[0].modules) + len(plan.stacks[1].modules)
    assert compared == 2 * per_layer and any(m.target_role.startswith("cross.") for m in plan.stacks[1].modules)
    # the card and --json show the map per stack
    assert [(r["stack"], r["target"], r["sources"]) for r in summary.layer_map["rows"]] == [
        ("encoder", 0, [0]), ("encoder", 1, [2]), ("decoder", 0, [0]), ("decoder", 1, [2])]
    assert summary.layer_map["stacks"] == {"encoder": "skip", "decoder": "skip"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| encoder 1 | 2 |" in card and "| decoder 1 | 2 |" in card


def test_each_stack_gets_its_own_layer_map(tmp_path):
    """4 encoder and 6 decoder layers onto 2 and 2: skip by 2 in the encoder, by 3 in the decoder."""
    source = _source_adapter(tmp_path, T5, encoder=4, decoder=6)
    plan, _ = _convert(tmp_path, T5, 2, 2)
    assert [(name, m.rows()) for name, m in plan.layer_map.stacks] == [("encoder", [(0, (0,)), (1, (2,))]),
                                                                       ("decoder", [(0, (0,)), (1, (3,))])]
    _assert_exact(tmp_path, source, plan, T5, 2, 2)


@pytest.mark.parametrize("source_spec, target_spec", [(BART | {"decoder_ffn_dim": 48}, T5), (T5, BART | {"decoder_ffn_dim": 48})],
                         ids=["bart-onto-t5", "t5-onto-bart"])
def test_converts_across_families_with_the_same_roles_and_widths(source_spec, target_spec, tmp_path):
    """bart and t5 (non-gated) have the same roles in each stack: joined on role, each target
    module's delta is its source module's (t5 keeps its stacks at the top of its seq2seq model,
    bart under model.)."""
    from peft import PeftModel

    source = delta_weights(_source_adapter(tmp_path, source_spec))
    plan, _ = _convert(tmp_path, target_spec, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = delta_weights(PeftModel.from_pretrained(_seq2seq(_config(target_spec, 2, 2)), tmp_path / "out"))
    expected = {stack.module_path(m.target_role, t, target=True): stack.module_path(m.target_role, s, target=False)
                for stack in plan.stacks for m in stack.modules for t, (s,) in stack.layer_map.rows()}
    assert sorted(target) == sorted(expected) and len(expected) == 2 * (6 + 10)
    for target_name, source_name in expected.items():
        torch.testing.assert_close(target[target_name], source[source_name], rtol=1e-5, atol=1e-6, msg=target_name)


def test_align_auto_copies_onto_a_student_measured_compatible_and_distils_between_unrelated_bases(tmp_path):
    """A student cut from the source (its token embeddings) is measured compatible: auto copies.
    An unrelated model of the same shapes is measured incompatible: a seq2seq LM's adapter is then
    planned as a fresh adapter distilled on the teacher's answers (test_seq2seq_distillation.py),
    and an adapter that writes no text, which only copies could convert, is refused naming --align none."""
    source = _source_adapter(tmp_path, T5, weights=True)
    student = _seq2seq(_config(T5, 2, 2))
    with torch.no_grad():
        student.shared.weight.copy_(source.base_model.model.shared.weight)
    student.save_pretrained(tmp_path / "target")
    plan, summary = _convert(tmp_path, T5, 2, 2, align="auto")
    assert plan.alignment.method is None and not plan.alignment.refine and summary.compatibility.verdict == "compatible"
    _assert_exact(tmp_path, source, plan, T5, 2, 2)
    unrelated = _seq2seq(_config(T5, 2, 2))
    with torch.no_grad():
        unrelated.shared.weight.copy_(torch.randn(unrelated.shared.weight.shape, generator=torch.Generator().manual_seed(5)))
    unrelated.save_pretrained(tmp_path / "unrelated")
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "unrelated"), out=tmp_path / "out2")
    with pytest.raises(UsageError, match="--span-weight compares the spans of answers a causal LM writes; .* SEQ_2_SEQ_LM"):
        prepare(dataclasses.replace(request, span_weight=1.0))  # ALM's span term: a causal LM's answers only
    assert not (tmp_path / "out2").exists()
    plan = prepare(request).plan
    assert plan.alignment.method == "fresh" and plan.alignment.refine and "measured" in plan.alignment.reason
    assert [stack.alignment.method for stack in plan.stacks] == ["fresh", "fresh"]
    _source_adapter(tmp_path / "bare", T5, weights=True, task_type=None)
    request = ConversionRequest(adapter=str(tmp_path / "bare" / "adapter"), target=str(tmp_path / "unrelated"), out=tmp_path / "out3")
    with pytest.raises(UnsupportedError, match="measured.*fitted alignment maps are defined for single-stack models") as caught:
        prepare(request)
    assert "--align none" in caught.value.fix and "--align fresh" not in caught.value.fix


def test_onto_a_single_stack_model_or_with_alignment_is_refused(tmp_path):
    from transformers import AutoConfig

    _source_adapter(tmp_path, T5)
    AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48).save_pretrained(tmp_path / "llama")
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "llama"), out=tmp_path / "out", align="none")
    with pytest.raises(UnsupportedError, match=r"t5 has 2 layer stacks, encoder \(encoder.block\) and decoder \(decoder.block\), "
                                               r"but llama has one stack of layers \(layers\)") as caught:
        prepare(request)
    assert caught.value.exit_code == 4 and "encoder-decoder model" in caught.value.fix
    _config(T5, 2, 2).save_pretrained(tmp_path / "target")
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "target"), out=tmp_path / "out", align="lstsq")
    with pytest.raises(UnsupportedError, match="fitted alignment maps are defined for single-stack models") as caught:
        prepare(request)
    assert "--align none" in caught.value.fix and "--align fresh" in caught.value.fix
    _config(T5 | {"d_model": 48}, 2, 2).save_pretrained(tmp_path / "wider")
    request = ConversionRequest(adapter=str(tmp_path / "adapter"), target=str(tmp_path / "wider"), out=tmp_path / "out", align="none")
    with pytest.raises(WidthMismatchError, match="An encoder-decoder adapter is only copied") as caught:
        prepare(request)
    assert caught.value.exit_code == 8 and "maps 32 -> 32 features in the source but 48 -> 32" in caught.value.problem
    # fitted maps across widths: refused, naming the conversion that works there (a copy would not)
    with pytest.raises(UnsupportedError, match="fitted alignment maps are defined for single-stack models") as caught:
        prepare(dataclasses.replace(request, align="lstsq"))
    assert "--align fresh" in caught.value.fix and "--align none" not in caught.value.fix
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_refuses(tmp_path):
    runner = CliRunner()
    _source_adapter(tmp_path, BART)
    _config(BART, 2, 2).save_pretrained(tmp_path / "target")
    common = ["convert", str(tmp_path / "adapter"), "--target", str(tmp_path / "target"), "--align", "none", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*common, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "layer map, encoder (skip)" in result.output and "layer map, decoder (skip)" in result.output
    assert "decoder.layers.*.encoder_attn.q_proj" in result.output and not (tmp_path / "out").exists()
    result = runner.invoke(app, common)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    # a module path both stacks share is named module by module; the decoder's cross-attention by its suffix
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    assert {"encoder.layers.1.fc1", "decoder.layers.1.fc1", "encoder_attn.q_proj"} <= set(config["target_modules"])
    assert "fc1" not in config["target_modules"]
    from transformers import AutoConfig

    AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48).save_pretrained(tmp_path / "llama")
    result = runner.invoke(app, ["convert", str(tmp_path / "adapter"), "--target", str(tmp_path / "llama"), "--align", "none",
                                 "--out", str(tmp_path / "llama-out")])
    assert result.exit_code == 4 and "bart has 2 layer stacks" in result.output


def test_inspect_recommends_the_copy_when_compatibility_is_unknown(tmp_path):
    """Nothing to measure (the target is a config alone) and no alignment for an encoder-decoder
    adapter that writes no text: inspect exits 0 and recommends --align none, saying why, instead
    of failing on the alignment. A seq2seq LM's adapter: distillation, which works whatever the bases."""
    _source_adapter(tmp_path, T5, weights=True, task_type=None)
    _config(T5, 2, 2).save_pretrained(tmp_path / "target")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "adapter"), "--target", str(tmp_path / "target"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["compatibility"]["verdict"] == "unknown" and report["recommended"]["align"] == "none"
    assert "--align none" in report["recommended"]["command"] and "a copy is the only conversion" in report["recommended"]["why"]
    assert report["costs"]["base_weights_needed"] is False
    _source_adapter(tmp_path / "lm", T5, weights=True)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "lm" / "adapter"), "--target", str(tmp_path / "target"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["recommended"]["align"] == "distill" and report["plan"]["method"] == "fresh adapter + distillation"
    assert report["plan"]["width_mismatch"] is False
    _config(T5 | {"d_model": 48}, 2, 2).save_pretrained(tmp_path / "wider")  # each stack's widths are compared
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "lm" / "adapter"), "--target", str(tmp_path / "wider"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["width_mismatch"] is True


def test_an_explicit_map_that_does_not_fit_one_stack_names_that_stack(tmp_path):
    from adapter_convert.errors import LayerMapError

    _source_adapter(tmp_path, T5, encoder=4, decoder=6)
    with pytest.raises(LayerMapError, match=r"In the encoder stack \(4 -> 2 layers\): Source layer 5 in the layer map is out of range"
                                            r".*applies to every stack") as caught:
        _convert(tmp_path, T5, 2, 2, layer_map="0:0,5:1")
    assert caught.value.exit_code == 5 and not (tmp_path / "out").exists()
