"""Transfer quality: the paper's experiment on WikiNEuRal English, on CPU.

    .venv/bin/python benchmarks/transfer_quality.py            # full run (about 40 minutes on 2 cores)
    .venv/bin/python benchmarks/transfer_quality.py --tiny     # a smoke run (used by the tests)

Teacher: all-MiniLM-L6-v2 with a LoRA (query, value) and classifier head trained on NER.
Students: the 3-layer model built from teacher layers 0, 2, 4, and a narrower one (hidden 256,
8 heads, intermediate 1024, the same layers). For each method and labelled-step budget, token-
and entity-level F1 on the same test sentences, over several seeds:

* scratch: a fresh student LoRA trained for the budget;
* skip / avg: the teacher's adapter converted with that layer map, then trained for the budget;
* naive-copy: the teacher's first layers' adapters copied unchanged (map 0:0,1:1,2:2);
* skip+distill: SKIP refined by distillation without labels (budget 0 only);
* narrow student: correlation / lstsq / distill alignment, then trained for the budget.

Writes ``--out``/transfer_quality.json (every run), transfer_quality.md (tables) and one PNG plot
per student (F1 against labelled steps, one line per method).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from adapter_convert.demo import ner, train_example_adapter
from adapter_convert.demo.minilm import build_student, build_teacher
from adapter_convert.pipeline import ConversionRequest, execute, prepare

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from minilm_students import build_narrow_student  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wikineural-en"

# method -> (student, conversion options or None for a fresh LoRA, labelled budgets or None for all)
METHODS = {
    "scratch (3-layer)": ("three", None, None),
    "skip": ("three", {"layer_map": "skip"}, None),
    "avg": ("three", {"layer_map": "avg"}, None),
    "naive-copy": ("three", {"layer_map": "0:0,1:1,2:2"}, None),
    "skip+distill (no labels)": ("three", {"layer_map": "skip", "align": "distill"}, [0]),
    "scratch (narrow)": ("narrow", None, None),
    "correlation": ("narrow", {"layer_map": "skip", "align": "correlation"}, None),
    "lstsq": ("narrow", {"layer_map": "skip", "align": "lstsq"}, None),
    "distill": ("narrow", {"layer_map": "skip", "align": "distill"}, None),
}


def build_models(work: Path) -> dict[str, Path]:
    paths = {"teacher": work / "teacher", "three": work / "student-3-layer", "narrow": work / "student-narrow-256"}
    if not paths["teacher"].is_dir():
        build_teacher(paths["teacher"])
    if not paths["three"].is_dir():
        build_student(paths["three"], layers=(0, 2, 4))
    if not paths["narrow"].is_dir():
        build_narrow_student(paths["narrow"])
    return paths


def run(args) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.work
    paths = build_models(work)
    tokenizer = AutoTokenizer.from_pretrained(paths["teacher"])
    train = ner.read_conll(DATA / "val.conllu")
    test = ner.read_conll(DATA / "test.conllu", limit=args.test_sentences)
    results: list[dict] = []
    started = time.time()

    def record(seed: int, method: str, steps: int, model) -> None:
        row = {"seed": seed, "method": method, "steps": steps, **ner.scores(model, tokenizer, test)}
        results.append(row)
        print(json.dumps(row), f"[{time.time() - started:.0f}s]", flush=True)

    for seed in range(args.seeds):
        adapter = work / f"teacher-lora-seed{seed}"
        if not adapter.is_dir():
            train_example_adapter(paths["teacher"], adapter, data=DATA, steps=args.teacher_steps, seed=seed)
        record(seed, "teacher", 0, ner.load_lora_model(paths["teacher"], adapter))
        for method, (student, options, budgets) in METHODS.items():
            budgets = budgets or args.budgets
            if options is None:
                model = ner.new_lora_model(paths[student], seed=seed)
            else:
                out = work / "converted" / f"{method.split()[0]}-{student}-seed{seed}"
                request = ConversionRequest(adapter=str(adapter), target=str(paths[student]), out=out, force=True, seed=seed,
                                            calibration_data=DATA / "val.conllu", calibration_tokens=args.calibration_tokens,
                                            distill_steps=args.distill_steps, **options)
                execute(prepare(request))
                model = ner.load_lora_model(paths[student], out, trainable=True)
            if 0 in budgets:
                record(seed, method, 0, model)
            later = sorted(b for b in budgets if b > 0)
            if later:
                ner.train(model, tokenizer, train, steps=later[-1], seed=seed,
                          on_step=lambda step, loss, m=model, name=method: record(seed, name, step, m) if step in later else None)
    return {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": round(time.time() - started),
        "results": results,
    }


def summarize(report: dict) -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in report["results"]:
        groups.setdefault((row["method"], row["steps"]), []).append(row)
    out = {}
    for key, rows in groups.items():
        out[key] = {m: (statistics.mean(r[m] for r in rows), statistics.pstdev(r[m] for r in rows)) for m in ("token_f1", "entity_f1")}
    return out


def write_report(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer_quality.json").write_text(json.dumps(report, indent=1))
    summary = summarize(report)
    settings = report["settings"]
    budgets = sorted({steps for _, steps in summary})
    lines = [
        "# Transfer quality on WikiNEuRal English (token F1 / entity F1)",
        "",
        f"{settings['seeds']} seeds, {settings['test_sentences']} test sentences, teacher LoRA trained {settings['teacher_steps']} steps; "
        f"mean ± population std over seeds. Machine: {report['machine']}; {report['seconds']} s in all.",
        "",
    ]
    for student, title in (("three", "3-layer student (teacher layers 0, 2, 4; same widths)"), ("narrow", "Narrow student (hidden 256, 3 layers)")):
        methods = ["teacher"] + [m for m, (s, _, _) in METHODS.items() if s == student]
        lines += [f"## {title}", "", "| method | " + " | ".join(f"{b} steps" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method in methods:
            cells = []
            for b in budgets:
                cell = summary.get((method, b))
                cells.append("" if cell is None else f"{cell['token_f1'][0]:.3f} ± {cell['token_f1'][1]:.3f} / {cell['entity_f1'][0]:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
            points = [(b, summary[(method, b)]) for b in budgets if (method, b) in summary]
            for axis, metric in zip(axes, ("token_f1", "entity_f1")):
                if method == "teacher":
                    axis.axhline(points[0][1][metric][0], color="black", linestyle=":", label="teacher")
                    continue
                xs, ys, es = [p[0] for p in points], [p[1][metric][0] for p in points], [p[1][metric][1] for p in points]
                axis.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        for axis, metric in zip(axes, ("token-level F1", "entity-level F1")):
            axis.set_xlabel("labelled training steps on the student")
            axis.set_ylabel(metric)
            axis.grid(alpha=0.3)
        axes[1].legend(fontsize=8, loc="lower right")
        figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(out / f"transfer_quality_{student}.png", dpi=110)
        plt.close(figure)
        lines += ["", f"![{title}](transfer_quality_{student}.png)", ""]
    (out / "transfer_quality.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test-sentences", type=int, default=2000)
    parser.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[0, 50, 100, 200])
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--calibration-tokens", type=int, default=4096)
    parser.add_argument("--distill-steps", type=int, default=100)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "transfer-quality")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--tiny", action="store_true", help="1 seed, 20 test sentences, budgets 0,2, 5 teacher steps")
    args = parser.parse_args()
    if args.tiny:
        args.seeds, args.test_sentences, args.budgets, args.teacher_steps = 1, 20, [0, 2], 5
        args.calibration_tokens, args.distill_steps = 256, 2
    write_report(run(args), args.out)
    print(f"wrote {args.out / 'transfer_quality.md'}")


if __name__ == "__main__":
    main()
