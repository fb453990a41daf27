"""Start-up: wall time of the commands a user or a CI job runs before any work, each as a fresh
process (the installed console script), against `hf --help` (huggingface_hub's CLI) as the yardstick.

    .venv/bin/python benchmarks/startup.py [--repeats 7]

Goal (issue 19): `--help`, `version` and usage errors under 0.5 s. Writes docs/benchmarks/startup.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMANDS = {
    "adapter-convert --help": [str(BIN / "adapter-convert"), "--help"],
    "adapter-convert convert --help": [str(BIN / "adapter-convert"), "convert", "--help"],
    "adapter-convert version": [str(BIN / "adapter-convert"), "version"],
    "adapter-convert convert x (usage error, exit 2)": [str(BIN / "adapter-convert"), "convert", "x"],
    "hf --help (yardstick)": [str(BIN / "hf"), "--help"],
    "python -c 'import torch, transformers, peft' (what start-up used to load)": [sys.executable, "-c", "import torch, transformers, peft"],
}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "startup.md")
    args = parser.parse_args()
    rows = []
    for name, command in COMMANDS.items():
        timed(command)  # warm the file cache
        times = [timed(command) for _ in range(args.repeats)]
        rows.append(f"| {name} | {min(times):.3f} | {statistics.median(times):.3f} | {max(times):.3f} |")
        print(rows[-1], flush=True)
    lines = ["# Start-up time", "", f"`benchmarks/startup.py`, {args.repeats} runs each after one warm-up, fresh processes; "
             f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}. "
             "Seconds. Goal: under 0.5 s for help, version and usage errors.", "",
             "| command | min | median | max |", "|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
