"""Alignment memory: the budget's prediction against the measured peak, float32 statistics against
float64, and the streamed correlation against a per-dimension loop at real widths.

    .venv/bin/python benchmarks/alignment_memory.py [--sections peak,float32,widths] [--quick]

1. peak: scaled-down llama -> mistral-shaped random pairs (grouped kv heads on the student, a wider
   intermediate), LoRA r=16 on all seven projections, --align lstsq, under a memory budget that
   forces several passes. Each run is a fresh process; the peak resident memory of
   ``AlignmentSession.fit`` (sampled every 5 ms, benchmarks/_peak_rss.py) above the RSS with both
   models loaded is compared with ``resources.alignment_bytes``, and the peak above the imports
   (models included) with ``resources.peak_bytes``.
2. float32: statistics in float32 (shifted, as the multi-pass runs keep them) against float64 on
   the same activations: the bundled MiniLM teacher and its narrow student on calibration text,
   every layer's module inputs, and synthetic LLM-like activations with massive-mean dimensions.
3. widths: the streamed correlation against sklearn's r_regression once per student dimension (the
   paper's reference style) at 4096 x 4096 and 14336 x 11008, on synthetic correlated activations;
   the loop runs on a sample of student dimensions and is extrapolated.

Results go to docs/benchmarks/alignment_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the MiniLM test fixtures (minilm_students)
MiB = 2**20
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CHILD = """
import sys
sys.path.insert(0, BENCHMARKS_DIR)
import json, os
from pathlib import Path
from adapter_convert.pipeline import ConversionRequest, Reporter, prepare, summarize
from adapter_convert.align.session import AlignmentSession
from transformers import AutoModelForCausalLM, LlamaModel, MistralModel  # imported before measuring
from _peak_rss import PeakRSS, rss_mb

request = ConversionRequest(adapter=sys.argv[1], target=sys.argv[2], out=Path(sys.argv[3]), force=True, align="lstsq",
                            calibration_tokens=int(sys.argv[4]), device="cpu", dtype="float32")
with PeakRSS() as whole:
    prepared = prepare(request)
    resources = summarize(prepared).resources
    session = AlignmentSession(prepared.plan, source=prepared.source, target=prepared.target, adapter=prepared.adapter,
                               parsed=prepared.parsed, calibration=prepared.calibration, options=prepared.request, reporter=Reporter())
    for model in (session.teacher, session.student):  # page in the weights (safetensors are mmapped lazily)
        for param in model.parameters():
            param.data.sum()
    with PeakRSS() as fit:
        fitted = session.fit()
print(json.dumps({"resources": resources, "fit_mb": fit.peak - fit.start, "whole_mb": whole.peak - whole.start,
                  "memory": fitted.report.memory.to_json(), "tokens": fitted.report.calibration.tokens}))
""".replace("BENCHMARKS_DIR", repr(str(Path(__file__).resolve().parent)))


def build_pair(folder: Path, hidden: int, inter_t: int, inter_s: int, layers: int, heads: int, kv_s: int) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from adapter_convert.demo.minilm import minilm_dir

    teacher_dir, student_dir, adapter_dir = folder / "teacher", folder / "student", folder / "adapter"
    if adapter_dir.is_dir():
        return adapter_dir, student_dir
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  max_position_embeddings=512, pad_token_id=0, tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(intermediate_size=inter_t, num_key_value_heads=heads, **common))
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    MistralForCausalLM(MistralConfig(intermediate_size=inter_s, num_key_value_heads=kv_s, **common)).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    model = get_peft_model(teacher, LoraConfig(r=16, lora_alpha=32, target_modules=SEVEN, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(teacher_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    return adapter_dir, student_dir


def peak_section(work: Path, quick: bool) -> list[str]:
    configs = [  # hidden, teacher intermediate, student intermediate, layers, heads, student kv heads, budget
        (512, 1376, 1792, 2, 8, 2, "128MiB"),
        (1024, 2752, 3584, 2, 8, 2, "384MiB"),
    ] + ([] if quick else [(1024, 2752, 3584, 2, 8, 2, "4GiB")])
    lines = [
        "## Predicted against measured peak",
        "",
        "Random llama teacher -> mistral student (student: grouped kv heads, intermediate 1.3x the teacher's, like llama-2-7B -> "
        "mistral-7B), LoRA r=16 on all seven projections, `--align lstsq`, float32 models, 1024 calibration tokens, CPU. "
        "Budget via `ADAPTER_CONVERT_ALIGN_BUDGET`; `MALLOC_MMAP_THRESHOLD_=65536` so freed statistics go back to the system. "
        "Alignment: peak RSS during `AlignmentSession.fit` above the RSS with both models loaded; whole: peak above the imports "
        "(prepare, both models, fit).",
        "",
        "| hidden | intermediate t -> s | budget | passes | stats dtype | predicted alignment MiB | measured MiB | ratio | "
        "predicted peak MiB | measured MiB | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for hidden, inter_t, inter_s, layers, heads, kv_s, budget in configs:
        adapter, student = build_pair(work / f"pair-{hidden}", hidden, inter_t, inter_s, layers, heads, kv_s)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "ADAPTER_CONVERT_ALIGN_BUDGET": budget}
        done = subprocess.run([sys.executable, "-c", CHILD, str(adapter), str(student), str(work / "out"), "1024"],
                              capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(done.stderr[-4000:])
        r = json.loads(done.stdout.strip().splitlines()[-1])
        res = r["resources"]
        a_pred, a_meas = res["alignment_bytes"] / MiB, r["fit_mb"]
        p_pred, p_meas = res["peak_bytes"] / MiB, r["whole_mb"]
        lines.append(f"| {hidden} | {inter_t} -> {inter_s} | {budget} | {res['passes']} | {res['statistics_dtype']} | {a_pred:.0f} | "
                     f"{a_meas:.0f} | {a_meas / a_pred:.2f} | {p_pred:.0f} | {p_meas:.0f} | {p_meas / p_pred:.2f} |")
        print(lines[-1], flush=True)
    return lines


def _errors(exact, single, ridge=1e-2) -> dict:
    from adapter_convert.align.correlation import assign
    from adapter_convert.align.lstsq import Regression

    corr = (single.correlation() - exact.correlation()).abs().max().item()
    s64, t64, _ = assign(exact)
    s32, t32, _ = assign(single)
    m64 = Regression(exact, x="s", ridge=ridge, prior=(s64, t64))
    m32 = Regression(single, x="s", ridge=ridge, prior=(s32, t32))
    a, b = m64.matrix(), m32.matrix()
    return {"corr": corr, "same_assignment": bool(torch.equal(t64, t32)), "map": ((b - a).norm() / a.norm()).item(),
            "r2": abs(m64.r_squared() - m32.r_squared())}


def float32_section(quick: bool) -> list[str]:
    from adapter_convert.align.stats import PairStats
    from adapter_convert.calibration import load_texts, paired_batches
    from minilm_students import narrow_pair

    work = ROOT / ".cache" / "transfer-quality"
    teacher, student, tokenizer = narrow_pair(work)
    points = {}
    with torch.no_grad():
        for batch in paired_batches(load_texts(), tokenizer, tokenizer, max_tokens=4096):
            t = teacher(**batch.teacher_inputs, output_hidden_states=True).hidden_states
            s = student(**batch.student_inputs, output_hidden_states=True).hidden_states
            for layer in range(len(s)):
                for dtype in (torch.float64, torch.float32):
                    key = (layer, dtype)
                    if key not in points:
                        points[key] = PairStats(s[layer].shape[-1], t[layer].shape[-1], dtype=dtype, full=("s",))
                    points[key].update(s[layer][batch.student_index], t[min(layer * 2, len(t) - 1)][batch.teacher_index])
    lines = [
        "## float32 statistics against float64",
        "",
        "Same activations, statistics kept in float64 and in float32 (rows shifted by the first batch's mean, matrices "
        "accumulated in float32, every solve in float64). Largest absolute difference of the correlation matrices, whether "
        "the assignment is the same, relative (Frobenius) difference of the lstsq maps, difference of their R^2.",
        "",
        "| activations | tokens | widths s x t | max corr diff | same assignment | map rel. diff | R^2 diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for layer in sorted({k[0] for k in points}):
        exact, single = points[(layer, torch.float64)], points[(layer, torch.float32)]
        e = _errors(exact, single)
        lines.append(f"| MiniLM narrow student layer {layer} -> teacher layer {min(layer * 2, 6)} hidden state | {exact.n} | "
                     f"{exact.dims['s']} x {exact.dims['t']} | {e['corr']:.1e} | {e['same_assignment']} | {e['map']:.1e} | {e['r2']:.1e} |")
        print(lines[-1], flush=True)
    for d_s, d_t in ([(1024, 1024)] if quick else [(1024, 1024), (4096, 4096)]):
        exact, single, n = synthetic_stats(d_s, d_t, 4096, full=("s",), dtypes=(torch.float64, torch.float32), massive=True)
        e = _errors(exact, single)
        lines.append(f"| synthetic LLM-like (low-rank + noise, 4 massive-mean dims of 100x the spread) | {n} | {d_s} x {d_t} | "
                     f"{e['corr']:.1e} | {e['same_assignment']} | {e['map']:.1e} | {e['r2']:.1e} |")
        print(lines[-1], flush=True)
    return lines


def synthetic_rows(d_s: int, d_t: int, n: int, seed: int = 0, massive: bool = False):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 256, generator=g)
    mix_s, mix_t = torch.randn(256, d_s, generator=g) / 16, torch.randn(256, d_t, generator=g) / 16
    s = latent @ mix_s + 0.5 * torch.randn(n, d_s, generator=g)
    t = latent @ mix_t + 0.5 * torch.randn(n, d_t, generator=g)
    if massive:
        s[:, :4] += 100.0
        t[:, :4] += 100.0
    return s, t


def synthetic_stats(d_s, d_t, n, *, full, dtypes, massive=False, chunk=512):
    from adapter_convert.align.stats import PairStats

    out = [PairStats(d_s, d_t, dtype=dtype, full=full) for dtype in dtypes]
    for seed in range(n // chunk):
        s, t = synthetic_rows(d_s, d_t, chunk, seed, massive)
        for stats in out:
            stats.update(s, t)
    return (*out, n)


def widths_section(quick: bool) -> list[str]:
    from sklearn.feature_selection import r_regression

    lines = [
        "## Streamed correlation against the per-dimension loop at real widths",
        "",
        "Synthetic correlated activations (a shared 256-dim latent plus noise), 4096 tokens. Streamed: `PairStats` (float64, "
        "no Gram kept whole: the correlation needs only the cross-product and the variances) updated in 512-token chunks, "
        "then `correlation()`. Loop: sklearn's `r_regression(X_teacher, x_student[:, j])` per student dimension (the paper's "
        "reference style), timed on a sample of student dimensions and extrapolated; the difference is over that sample.",
        "",
        "| student x teacher | streamed s | loop s (sampled dims) | loop s (all, extrapolated) | speed-up | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for d_s, d_t in ([(4096, 4096)] if quick else [(4096, 4096), (14336, 11008)]):
        n = 4096
        start = time.perf_counter()
        (stats, _) = synthetic_stats(d_s, d_t, n, full=(), dtypes=(torch.float64,))
        corr = stats.correlation()
        streamed = time.perf_counter() - start
        del stats
        s_all, t_all = zip(*(synthetic_rows(d_s, d_t, 512, seed) for seed in range(n // 512)))
        x = torch.cat(t_all).double().numpy()
        student = torch.cat(s_all).double()
        del t_all, s_all
        sample = np.random.default_rng(0).choice(d_s, 16, replace=False)
        start = time.perf_counter()
        loop = np.stack([r_regression(x, student[:, j].numpy()) for j in sample])
        looped = time.perf_counter() - start
        diff = float(np.abs(loop - corr[sample].numpy()).max())
        full_loop = looped / len(sample) * d_s
        lines.append(f"| {d_s} x {d_t} | {streamed:.1f} | {looped:.1f} ({len(sample)} dims) | {full_loop:.0f} | "
                     f"{full_loop / streamed:.0f}x | {diff:.1e} |")
        print(lines[-1], flush=True)
        del x, student, corr
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="peak,float32,widths")
    parser.add_argument("--quick", action="store_true", help="smaller configurations (a smoke run)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "alignment-memory")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "benchmarks" / "alignment_memory.md")
    args = parser.parse_args()
    sections = args.sections.split(",")
    lines = [
        "# Alignment memory",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}. "
        f"`benchmarks/alignment_memory.py{' --quick' if args.quick else ''}`.",
        "",
    ]
    if "peak" in sections:
        lines += peak_section(args.work, args.quick) + [""]
    if "float32" in sections:
        lines += float32_section(args.quick) + [""]
    if "widths" in sections:
        lines += widths_section(args.quick) + [""]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
