"""Benchmarks are not tests; this only checks the scripts run on a tiny setting."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_same_width_memory_benchmark_runs(tmp_path):
    results = tmp_path / "results.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "same_width_memory.py"), "--layers", "2", "--repeats", "1", "--results", str(results)],
        check=True, capture_output=True, timeout=300,
    )
    text = results.read_text()
    assert "convert SKIP -> half-depth llama" in text and "copy files" in text
