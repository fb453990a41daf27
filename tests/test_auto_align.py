"""--align auto decides from measured compatibility, never from shapes alone; `inspect` reports it.

Known answers: a student that shares its teacher's token embeddings is compatible and mapped
directly; independently initialised models of equal widths (llama -> mistral, bert -> llama) are
incompatible and aligned, never copied; nothing measurable stops auto with exit 19."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from peft import LoraConfig
from transformers import AutoTokenizer

from adapter_convert.demo.minilm import minilm_dir
from helpers import run_cli as run, save_adapter, save_tiny_model


def pair_of(root: Path, teacher_type: str, student_type: str, *, related: bool, targets: list[str]) -> Path:
    """teacher/, student/ (equal widths; the teacher's token embeddings when ``related``), adapter/."""
    teacher = save_tiny_model(root / "teacher", teacher_type, 4)
    full_heads = {"num_key_value_heads": 4} if teacher_type == "bert" and student_type == "llama" else {}  # bert has no GQA
    save_tiny_model(root / "student", student_type, 2, seed=11, embeddings_from=teacher if related else None, **full_heads)
    save_adapter(root / "adapter", teacher, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="TOKEN_CLS"), root / "teacher")
    return root


def test_a_student_of_the_teacher_is_compatible_and_copied(tiny_pair):
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "student", "--out", tiny_pair / "out", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["compatibility"]["verdict"] == "compatible"
    assert summary["compatibility"]["evidence"]["identity_cosine"] > 0.999
    assert summary["method"] == "direct tensor mapping"
    card = ModelCard.load(tiny_pair / "out" / "README.md").text
    assert "| Compatibility | compatible: embedding-row cosine 1.000" in card


@pytest.mark.parametrize("teacher_type,student_type,targets", [
    ("llama", "mistral", ["q_proj", "v_proj"]),
    ("bert", "llama", ["query", "value"]),
])
def test_unrelated_bases_of_equal_widths_are_aligned_never_copied(tmp_path, teacher_type, student_type, targets):
    root = pair_of(tmp_path, teacher_type, student_type, related=False, targets=targets)
    result = run("convert", root / "adapter", "--target", root / "student", "--out", root / "out", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["compatibility"]["verdict"] == "incompatible"
    assert abs(summary["compatibility"]["evidence"]["identity_cosine"]) < 0.2
    assert summary["method"] == "lstsq alignment + distillation"
    assert "hidden spaces that differ (measured)" in summary["alignment"]["reason"]
    # the same pair, related through its embeddings, is copied
    related = pair_of(tmp_path / "related", teacher_type, student_type, related=True, targets=targets)
    result = run("convert", related / "adapter", "--target", related / "student", "--out", related / "out", "--dry-run", "--json")
    assert json.loads(result.stdout)["method"] == "direct tensor mapping", result.output


def test_unrelated_bases_are_really_aligned_end_to_end(tmp_path):
    """llama -> an independently initialised mistral of equal widths, both with a tokenizer: auto
    aligns and distills, and reports the agreement it reached."""
    root = tmp_path
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    teacher = save_tiny_model(root / "teacher", "llama", 2, vocab_size=len(tokenizer))
    save_tiny_model(root / "student", "mistral", 2, seed=11, vocab_size=len(tokenizer))
    for name in ("teacher", "student"):
        tokenizer.save_pretrained(root / name)
    save_adapter(root / "adapter", teacher, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="TOKEN_CLS"),
                 root / "teacher")
    result = run("convert", root / "adapter", "--target", root / "student", "--out", root / "out", "--json",
                 "--calibration-tokens", "256", "--distill-steps", "5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["compatibility"]["verdict"] == "incompatible"
    assert summary["alignment"]["method"] == "lstsq" and summary["alignment"]["distill"]["steps"] == 5
    assert 0 <= summary["alignment"]["agreement"]["value"] <= 1
    # activation evidence: the same-index dimensions explain little of the teacher's inputs, a linear map more
    rows = summary["alignment"]["modules"]
    assert all(r["identity_r2"] < 0.2 and r["linear_r2"] > r["identity_r2"] for r in rows), rows
    card = ModelCard.load(root / "out" / "README.md").text
    assert "| Compatibility | incompatible:" in card and "held-out calibration tokens" in card


def test_nothing_to_measure_stops_auto_with_exit_19(tiny_pair):
    (tiny_pair / "student" / "model.safetensors").unlink()  # only config.json: no embedding to read
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "student", "--out", tiny_pair / "out")
    assert result.exit_code == 19, result.output
    assert "--align none" in result.output and "--align lstsq" in result.output
    assert not (tiny_pair / "out").exists()
    # the explicit fast path needs no weights, and its card says nothing was measured
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "student", "--out", tiny_pair / "out", "--align", "none")
    assert result.exit_code == 0, result.output
    assert "| Compatibility | not measured (--align none) |" in (tiny_pair / "out" / "README.md").read_text()


def test_inspect_reports_verdict_plan_command_and_costs_and_writes_nothing(tmp_path):
    root = pair_of(tmp_path, "llama", "mistral", related=False, targets=["q_proj", "v_proj"])
    before = sorted(p.name for p in root.rglob("*"))
    result = run("inspect", root / "adapter", "--target", root / "student", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["supported"] is True
    assert report["compatibility"]["verdict"] == "incompatible" and report["compatibility"]["evidence"]["sampled_rows"] >= 32
    assert report["recommended"]["align"] == "distill"
    assert report["recommended"]["command"].startswith(f"adapter-convert convert {root / 'adapter'} --target {root / 'student'}")
    assert "--align distill" in report["recommended"]["command"]
    assert [m["role"] for m in report["plan"]["modules"]] == ["attn.q", "attn.v"] and report["plan"]["width_mismatch"] is False
    assert report["costs"]["base_weights_needed"] is True and report["costs"]["base_weight_bytes"] > 0
    resources = report["costs"]["resources"]  # align/budget.py's prediction for the alignment
    assert resources["passes"] >= 1 and 0 < resources["alignment_bytes"] < resources["peak_bytes"] <= report["costs"]["predicted_peak_bytes"]
    assert report["costs"]["downloads"] == {"files": [], "bytes": 0}  # everything is local
    assert sorted(p.name for p in root.rglob("*")) == before


def test_inspect_recommends_the_fast_path_for_a_compatible_pair(tiny_pair):
    result = run("inspect", tiny_pair / "adapter", "--target", tiny_pair / "student")
    assert result.exit_code == 0, result.output
    assert "Compatibility: compatible" in result.output and "--align none" in result.output
    assert "base weights not needed" in result.output


def test_inspect_with_unknown_compatibility_still_exits_0(tiny_pair):
    (tiny_pair / "student" / "model.safetensors").unlink()
    result = run("inspect", tiny_pair / "adapter", "--target", tiny_pair / "student", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["compatibility"]["verdict"] == "unknown" and report["recommended"]["align"] == "distill"


def test_inspect_names_what_blocks_a_conversion(tmp_path):
    root = pair_of(tmp_path, "llama", "gpt2", related=True, targets=["gate_proj"])
    result = run("inspect", root / "adapter", "--target", root / "student")
    assert result.exit_code == 4, result.output
    assert "mlp.gate" in result.output


def test_calibration_text_never_runs_past_a_models_positions(tmp_path):
    """bert with 24 position embeddings aligned on the built-in calibration text, whose lines are
    longer than that: texts are cut to the shorter model's positions instead of crashing."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    teacher = save_tiny_model(tmp_path / "teacher", "bert", 2, vocab_size=len(tokenizer), max_position_embeddings=24)
    save_tiny_model(tmp_path / "student", "distilbert", 2, seed=11, vocab_size=len(tokenizer), hidden_size=48, hidden_dim=96,
                    max_position_embeddings=24)
    for name in ("teacher", "student"):
        tokenizer.save_pretrained(tmp_path / name)
    save_adapter(tmp_path / "adapter", teacher, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="TOKEN_CLS"),
                 tmp_path / "teacher")
    result = run("convert", tmp_path / "adapter", "--target", tmp_path / "student", "--out", tmp_path / "out", "--align", "lstsq",
                 "--calibration-tokens", "512")
    assert result.exit_code == 0, result.output
