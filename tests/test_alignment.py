"""Alignment end to end on tiny random decoders of two families with different widths, grouped
key/value heads, and different tokenizers (llama with WordPiece -> qwen2 with a small BPE)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer
from typer.testing import CliRunner

from adapter_convert.calibration import load_texts
from adapter_convert.cli import app
from adapter_convert.demo.minilm import minilm_dir
from helpers import all_module_names, bpe_tokenizer, save_adapter, tiny_config

ALL_LLAMA = all_module_names("llama")


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    wordpiece = AutoTokenizer.from_pretrained(minilm_dir())
    other = bpe_tokenizer()
    torch.manual_seed(0)
    for task, model_class in (("CAUSAL_LM", AutoModelForCausalLM), ("TOKEN_CLS", AutoModelForTokenClassification)):
        teacher = model_class.from_config(tiny_config("llama", 4, vocab_size=len(wordpiece), pad_token_id=0))
        teacher.save_pretrained(root / task / "teacher")
        wordpiece.save_pretrained(root / task / "teacher")
        student_config = tiny_config("qwen2", 2, vocab_size=len(other), hidden_size=48, num_attention_heads=6,
                                     num_key_value_heads=3, head_dim=8, intermediate_size=96, pad_token_id=1)
        model_class.from_config(student_config).save_pretrained(root / task / "student")
        other.save_pretrained(root / task / "student")
        config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LLAMA, task_type=task)
        save_adapter(root / task / "adapter", teacher, config, root / task / "teacher")
    return root


def convert(decoders, task, out, *options):
    folder = decoders / task
    return CliRunner().invoke(app, ["convert", str(folder / "adapter"), "--target", str(folder / "student"), "--out", str(out), "--json", *options])


@pytest.mark.parametrize("method", ["lstsq", "correlation"])
def test_other_widths_convert_end_to_end_and_load(decoders, tmp_path, method):
    out = tmp_path / "out"
    result = convert(decoders, "CAUSAL_LM", out, "--align", method)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    report = summary["alignment"]
    assert report["method"] == method
    assert len(report["modules"]) == 2 * 7  # two student layers x seven modules, each with its fits
    assert {row["score"] for row in report["modules"]} == {"mean correlation" if report["method"] == "correlation" else "R^2"}
    # 4 -> 2 layers by skip; q, k and v read one input (gate and up another): one capture point, one fit
    rows = {(row["target_layer"], row["source_layer"], row["role"]): row["input_fit"] for row in report["modules"]}
    assert {(target, source) for target, source, _ in rows} == {(0, 0), (1, 2)}
    for target, source in ((0, 0), (1, 2)):
        assert rows[(target, source, "attn.q")] == rows[(target, source, "attn.k")] == rows[(target, source, "attn.v")]
        assert rows[(target, source, "mlp.gate")] == rows[(target, source, "mlp.up")]
        assert rows[(target, source, "attn.q")] != rows[(target, source, "attn.o")]  # another space, another fit
    assert report["calibration"]["tokens"] > 100
    assert report["agreement"]["metric"] == "cosine of last-hidden-state changes"
    assert report["distill"] is None
    # same rank, student shapes: the converted adapter costs what a native one would
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (24, 4)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, 96)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(decoders / "CAUSAL_LM" / "student"), out)
    ids = torch.tensor([[2, 3, 4, 5]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_task_head_follows_the_last_hidden_map_and_agreement_is_reported(decoders, tmp_path):
    out = tmp_path / "out"
    result = convert(decoders, "TOKEN_CLS", out, "--align", "lstsq")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["heads"] == {"score": "score"}
    assert summary["alignment"]["agreement"]["metric"] == "predicted-label agreement"
    assert load_file(out / "adapter_model.safetensors")["base_model.model.score.weight"].shape == (5, 48)
    card = ModelCard.load(out / "README.md")
    assert "### Alignment" in card.text and "predicted-label agreement" in card.text
    assert "--align lstsq --calibration-tokens 4096 --seed 0" in card.text


def test_auto_aligns_and_distills_for_other_widths_and_says_why(decoders, tmp_path):
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # a causal LM between unrelated bases: a fresh adapter distilled on the teacher's answers (measured best)
    assert summary["method"] == "fresh adapter + distillation"
    assert "shapes differ" in result.output and summary["resources"] is None  # no calibration pass to predict
    token_cls = json.loads(convert(decoders, "TOKEN_CLS", tmp_path / "out", "--dry-run").stdout)
    assert token_cls["method"] == "lstsq alignment + distillation"  # a shared task head keeps logits distillation
    assert summary["compatibility"]["verdict"] == "incompatible"  # other widths: never a direct copy


def test_json_alignment_entry_has_the_same_keys_in_a_dry_run_and_a_real_run(decoders, tmp_path):
    options = ("--align", "distill", "--distill-steps", "2", "--calibration-tokens", "128")
    dry = convert(decoders, "TOKEN_CLS", tmp_path / "dry", "--dry-run", *options)
    real = convert(decoders, "TOKEN_CLS", tmp_path / "real", *options)
    assert dry.exit_code == 0 and real.exit_code == 0, dry.output + real.output
    dry, real = json.loads(dry.stdout), json.loads(real.stdout)
    assert dry.keys() == real.keys() and dry["dry_run"] is True and real["dry_run"] is False
    assert dry["alignment"].keys() == real["alignment"].keys()
    planned = {key: value for key, value in dry["alignment"].items() if value is not None}
    assert planned == {"method": "lstsq", "reason": real["alignment"]["reason"]}  # the run-time fields are null when nothing ran
    assert all(real["alignment"][key] is not None for key in ("device", "calibration", "modules", "agreement", "distill"))


def test_no_alignment_for_other_widths_is_refused(decoders, tmp_path):
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out", "--align", "none")
    assert result.exit_code == 8
    assert "--align lstsq" in result.output


def test_distillation_is_reproducible(decoders, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = convert(decoders, "TOKEN_CLS", tmp_path / name, "--align", "distill", "--distill-steps", "8", "--seed", "3")
        assert result.exit_code == 0, result.output
        runs.append(load_file(tmp_path / name / "adapter_model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    undistilled = convert(decoders, "TOKEN_CLS", tmp_path / "c", "--align", "lstsq")
    assert undistilled.exit_code == 0
    assert not torch.equal(load_file(tmp_path / "c" / "adapter_model.safetensors")["base_model.model.score.weight"], runs[0]["base_model.model.score.weight"])


def test_calibration_data_files(decoders, tmp_path):
    data = tmp_path / "calibration.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in load_texts()[:30]))
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out", "--align", "lstsq", "--calibration-data", str(data), "--calibration-tokens", "60")
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)["alignment"]["calibration"]
    digest = hashlib.sha256(data.read_bytes()).hexdigest()[:12]  # named by its name and content, not its path
    assert calibration["source"] == f"calibration.jsonl (sha256 {digest})" and 40 <= calibration["tokens"] <= 60
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out2", "--calibration-data", str(bad))
    assert result.exit_code == 17 and "has no JSON 'text' or 'prompt' field" in result.output  # bad calibration data, not a bad adapter


def test_calibration_data_from_a_hub_dataset_is_pinned(decoders, tmp_path, hub):
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "sentences.txt").write_text("\n".join(load_texts()))
    repo = hub.upload_folder("alice/calibration-text", data, repo_type="dataset")
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out", "--calibration-data", "alice/calibration-text", "--calibration-tokens", "100")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    pinned = f"alice/calibration-text@{repo.refs['main']}"
    assert summary["alignment"]["calibration"]["source"] == pinned
    assert f"--calibration-data {pinned}" in summary["command_line"]
    assert summary["alignment"]["calibration"]["dataset"] == "alice/calibration-text"
    # the card names the dataset in its metadata, and its model-index results were measured on it at that commit
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.datasets == ["alice/calibration-text"]
    assert card.data.eval_results and {(r.dataset_type, r.dataset_revision) for r in card.data.eval_results} == {
        ("alice/calibration-text", repo.refs["main"])}
    missing = convert(decoders, "CAUSAL_LM", tmp_path / "out2", "--calibration-data", "alice/no-such-dataset")
    assert missing.exit_code == 11 and "calibration dataset" in missing.output


def test_a_diverging_distillation_writes_nothing(decoders, tmp_path):
    result = convert(decoders, "TOKEN_CLS", tmp_path / "out", "--align", "distill", "--distill-steps", "20", "--lr", "1e12")
    assert result.exit_code == 7, result.output
    assert "NaN or Inf" in result.output and "lower --lr" in result.output
    assert not (tmp_path / "out").exists()


def _bf16_student(decoders, task, tmp_path) -> Path:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    model_class = AutoModelForCausalLM if task == "CAUSAL_LM" else AutoModelForTokenClassification
    folder = tmp_path / "bf16-student"
    model_class.from_pretrained(decoders / task / "student").to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(decoders / task / "student").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task", ["CAUSAL_LM", "TOKEN_CLS"])
def test_mixed_dtypes_align_and_distill(decoders, tmp_path, task):
    """A float32 teacher and a bfloat16 student (the distillation used to crash on the mix). Each
    loads in its own dtype where the device map places them (--device auto); on the CPU by default
    both load in float32, where half precision runs slower."""
    student = _bf16_student(decoders, task, tmp_path)
    result = CliRunner().invoke(app, ["convert", str(decoders / task / "adapter"), "--target", str(student), "--out", str(tmp_path / "out"),
                                      "--json", "--align", "distill", "--distill-steps", "3", "--calibration-tokens", "256", "--device", "auto"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["alignment"]
    assert report["dtypes"] == {"source": "float32", "target": "bfloat16"}
    assert report["distill"]["steps"] == 3 and math.isfinite(report["distill"]["final_loss"])
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, ["convert", str(decoders / task / "adapter"), "--target", str(student), "--out",
                                          str(tmp_path / "cpu"), "--json", "--align", "distill", "--distill-steps", "3", "--calibration-tokens", "256"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)["alignment"]
        assert report["device"] == "cpu" and report["dtypes"] == {"source": "float32", "target": "float32"}
    # --dtype loads both in one dtype, and is part of the reproduce command
    result = CliRunner().invoke(app, ["convert", str(decoders / task / "adapter"), "--target", str(student), "--out", str(tmp_path / "out32"),
                                      "--json", "--align", "lstsq", "--calibration-tokens", "256", "--dtype", "float32", "--device", "auto"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["alignment"]["dtypes"] == {"source": "float32", "target": "float32"}
    assert "--dtype float32" in summary["command_line"]


@pytest.mark.parametrize("option,value,message", [
    ("--device", "cuda:7" if torch.cuda.is_available() else "cuda", "CUDA"),
    ("--device", "tpu", "is not a device"),
    ("--dtype", "float8", "--dtype 'float8' is not allowed"),
])
def test_bad_device_or_dtype_is_refused_before_any_work(decoders, tmp_path, option, value, message):
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()


def test_memory_budget_option_reaches_the_plan(decoders, tmp_path):
    result = convert(decoders, "CAUSAL_LM", tmp_path / "out", "--dry-run", "--align", "lstsq", "--memory-budget", "64MiB")
    assert result.exit_code == 0, result.output
    resources = json.loads(result.stdout)["resources"]
    assert resources["budget_bytes"] == 64 * 2**20 and resources["within_budget"] and resources["passes"] >= 1
