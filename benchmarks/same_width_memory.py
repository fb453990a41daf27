"""Same-width conversion of a 7B-class LoRA: wall time and peak memory, against copying its files.

    .venv/bin/python benchmarks/same_width_memory.py [--layers 32] [--repeats 3]

Makes a synthetic LoRA shaped for a llama-7B config (hidden 4096, intermediate 11008, 32 layers,
r=16 on all seven linear modules, fp32), then converts it in a fresh subprocess onto (a) a
16-layer llama (SKIP) and (b) a same-depth qwen2 of the same widths. Only config.json files
exist for the bases, so the conversion runs with --align none (the fast path: nothing measured, no
base weights read, because none are there); the default layer map, auto, is SKIP for 32 -> 16 layers.
Each run is a fresh subprocess that imports the libraries first; its peak memory is the resident
memory sampled every 5 ms during the run (benchmarks/_peak_rss.py), reported whole and above the
RSS once the libraries were imported. Results go to docs/benchmarks/same_width_memory.md (--results).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, Qwen2Config

SIZES = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
MODULES = {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
           "gate_proj": (4096, 11008), "up_proj": (4096, 11008), "down_proj": (11008, 4096)}


def make_inputs(root: Path, layers: int, rank: int = 16) -> dict[str, Path]:
    paths = {name: root / name for name in ("teacher", "student_skip", "student_qwen2", "adapter")}
    LlamaConfig(num_hidden_layers=layers, **SIZES).save_pretrained(paths["teacher"])
    LlamaConfig(num_hidden_layers=layers // 2, **SIZES).save_pretrained(paths["student_skip"])
    Qwen2Config(num_hidden_layers=layers, **SIZES).save_pretrained(paths["student_qwen2"])
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(layers):
        for name, (fan_in, fan_out) in MODULES.items():
            group = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{group}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.01
    paths["adapter"].mkdir()
    save_file(tensors, paths["adapter"] / "adapter_model.safetensors")
    (paths["adapter"] / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 32, "target_modules": list(MODULES),
        "base_model_name_or_path": str(paths["teacher"]),
    }))
    return paths


CHILD = """
import sys
sys.path.insert(0, BENCHMARKS_DIR)
import json, sys, time
from pathlib import Path
from adapter_convert.pipeline import ConversionRequest, execute, prepare
from transformers import LlamaForCausalLM, Qwen2ForCausalLM  # the lazy imports verification needs
from _peak_rss import PeakRSS

mode = sys.argv[1]
start = time.perf_counter()
with PeakRSS() as rss:
    if mode == "convert":
        request = ConversionRequest(adapter=sys.argv[2], target=sys.argv[3], out=Path(sys.argv[4]), force=True, align="none")
        execute(prepare(request))
    elif mode == "copy":
        import shutil
        shutil.copytree(sys.argv[2], sys.argv[4], dirs_exist_ok=True)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "max_rss_mb": rss.peak, "above_mb": rss.peak - rss.start}))
""".replace("BENCHMARKS_DIR", repr(str(Path(__file__).resolve().parent)))


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "same_width_memory.md")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-same-width-"))
    try:
        paths = make_inputs(root, args.layers)
        adapter_mb = (paths["adapter"] / "adapter_model.safetensors").stat().st_size / 2**20
        runs: dict[str, list[dict]] = {"copy files": [], "convert SKIP -> half-depth llama": [], "convert -> qwen2 (same depth)": []}
        for _ in range(args.repeats):
            runs["copy files"].append(child("copy", str(paths["adapter"]), "", str(root / "copy")))
            runs["convert SKIP -> half-depth llama"].append(child("convert", str(paths["adapter"]), str(paths["student_skip"]), str(root / "out1")))
            runs["convert -> qwen2 (same depth)"].append(child("convert", str(paths["adapter"]), str(paths["student_qwen2"]), str(root / "out2")))
        lines = [
            "# Same-width conversion: time and peak memory",
            "",
            f"Synthetic LoRA for a llama-7B config ({args.layers} layers, r=16 on q,k,v,o,gate,up,down, fp32): "
            f"**{adapter_mb:.0f} MiB**. Medians of {args.repeats} runs, each in a fresh process. "
            f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}.",
            "Above imports = peak resident memory during the run (sampled every 5 ms) minus the RSS once the libraries were imported.",
            "",
            "| run | wall time (s) | peak RSS (MiB) | above imports (MiB) | x adapter size | throughput (GB/s) |",
            "|---|---|---|---|---|---|",
        ]
        for name, results in runs.items():
            seconds = statistics.median(r["seconds"] for r in results)
            rss = statistics.median(r["max_rss_mb"] for r in results)
            above = statistics.median(r["above_mb"] for r in results)
            throughput = f"{adapter_mb / 1024 / seconds:.2f}"
            lines.append(f"| {name} | {seconds:.2f} | {rss:.0f} | {above:.0f} | {above / adapter_mb:.2f} | {throughput} |")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
