"""Benchmarks are not tests; this only checks the scripts run on a tiny setting.

The scripts (real transfer, same-width memory, transfer quality, alignment speed, calibration
memory: about a minute together) run weekly and on demand (.github/workflows/sweep.yml), and
here when asked: RUN_BENCHMARK_SMOKE=1 pytest -m bench_smoke. The parsers of the real-transfer
tasks, which need no model, run every time."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench_smoke(test):
    """Opt-in: marked ``bench_smoke`` and skipped unless RUN_BENCHMARK_SMOKE is set."""
    skip = pytest.mark.skipif(not os.environ.get("RUN_BENCHMARK_SMOKE"), reason="opt-in: RUN_BENCHMARK_SMOKE=1 pytest -m bench_smoke")
    return pytest.mark.bench_smoke(skip(test))


@bench_smoke
def test_same_width_memory_benchmark_runs(tmp_path):
    results = tmp_path / "results.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "same_width_memory.py"), "--layers", "2", "--repeats", "1", "--results", str(results)],
        check=True, capture_output=True, timeout=300,
    )
    text = results.read_text()
    assert "convert SKIP -> half-depth llama" in text and "copy files" in text


@bench_smoke
def test_transfer_quality_benchmark_runs_tiny(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "transfer_quality.py"), "--tiny", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        check=True, capture_output=True, timeout=600,
    )
    report = (tmp_path / "out" / "transfer_quality.md").read_text()
    for method in ("teacher", "scratch (3-layer)", "skip", "avg", "naive-copy", "skip+distill (no labels)", "correlation", "lstsq", "distill"):
        assert f"| {method} |" in report
    assert (tmp_path / "out" / "transfer_quality_three.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "transfer_quality_narrow.png").stat().st_size > 10_000


@bench_smoke
def test_alignment_speed_and_calibration_benchmarks_run_tiny(tmp_path):
    work = tmp_path / "work"
    speed, memory = tmp_path / "speed.md", tmp_path / "memory.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "alignment_speed.py"), "--tokens", "300", "--repeats", "1",
                    "--widths", "64,128", "--work", str(work), "--results", str(speed)], check=True, capture_output=True, timeout=600)
    text = speed.read_text()
    assert "per-dimension r_regression loop" in text and "| 128 |" in text
    difference = float(text.split("Largest absolute difference between the two matrices: ")[1].split(",")[0])
    assert difference < 1e-9  # the vectorized statistics give the loop's numbers
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "calibration_memory.py"), "--tokens", "64,128", "--repeats", "1",
                    "--work", str(work), "--results", str(memory)], check=True, capture_output=True, timeout=600)
    assert "| 128 | 128 |" in memory.read_text() and "MALLOC_MMAP_THRESHOLD_" in memory.read_text()


@bench_smoke
def test_real_transfer_benchmark_runs_on_two_tiny_causal_lms(tmp_path):
    """The real-model experiment's script end to end, on a tiny llama teacher and a tiny gemma3_text
    target (MiniLM's tokenizer for both), on one task (the long-prompt one: every task runs the
    same stages): every stage runs and the report has every row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapter_convert.demo.minilm import minilm_dir
    from helpers import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    for name, model_type, layers in (("teacher", "llama", 4), ("target", "gemma3_text", 2)):
        config = tiny_config(model_type, layers, vocab_size=tokenizer.vocab_size, max_position_embeddings=256)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "real_transfer.py"), "--teacher-base", str(tmp_path / "teacher"),
         "--target", str(tmp_path / "target"), "--teacher-steps", "2", "--budgets", "2", "--train", "16", "--eval", "4",
         "--calibration-tokens", "64", "--distill-steps", "2", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
         "--conversions", "auto (fresh start + output distillation);lstsq start + output distillation", "--tasks", "people"],
        check=True, capture_output=True, timeout=900,
    )
    report = (tmp_path / "out" / "real_transfer.md").read_text()
    assert "## people" in report
    for row in ("teacher", "target base (no adapter)", "converted: auto (fresh start + output distillation)",
                "converted: lstsq start + output distillation", "target LoRA from scratch, 2 labelled steps",
                "target LoRA from scratch in bfloat16, 2 labelled steps",
                "converted: auto (fresh start + output distillation), then 2 labelled steps"):
        assert f"| {row} |" in report
    results = json.loads((tmp_path / "out" / "real_transfer.json").read_text())
    for task in results["tasks"].values():
        assert all(math.isfinite(v) and v > 0 for v in task["bpb"].values())
        assert all(0 <= v <= 1 for v in task["f1"].values())
    assert (tmp_path / "out" / "real_transfer.png").stat().st_size > 10_000


def test_the_real_transfer_tasks_write_and_parse_their_answers():
    """Each task of the real-model benchmark: its example from tagged words, and its parser reading
    the gold answer back (what F1 compares)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_transfer

    words = ["Ada", "Lovelace", "met", "Babbage", "in", "London", "."]
    tags = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "O"]
    expected = {"ner": {("PER", "Ada Lovelace"), ("PER", "Babbage"), ("LOC", "London")}, "types": {"LOC", "PER"},
                "people": {"Ada Lovelace", "Babbage"}, "tagged": {("PER", "Ada Lovelace"), ("PER", "Babbage"), ("LOC", "London")}}
    for task, (build, parse, _) in real_transfer.TASKS.items():
        example = build(words, tags)
        assert example.prompt.endswith(":") and example.answer.endswith("\n")
        assert parse(example.answer) == expected[task]
        assert real_transfer.micro_f1(task, [example.answer], [example.answer]) == 1.0
