"""Transfer between two independently pretrained LLMs: SmolLM2-135M (llama) -> gemma-3-270m.

    .venv/bin/python benchmarks/real_transfer.py                  # the full run (see docs/benchmarks.md)
    .venv/bin/python benchmarks/real_transfer.py --teacher-steps 20 --budgets 0,10 --eval 16 \\
        --teacher-base DIR --target DIR --out OUT               # a smoke run on any two causal LMs

The task has a clear score and a fixed output format: NER written as text on WikiNEuRal English
(the paper's data), ``Sentence: ...\\nEntities: PER: Ada Lovelace; LOC: London``. Scored in bits
per byte of the answer given the prompt, so models with different tokenizers compare.

1. Teacher: a LoRA (r 8, all seven projections, CAUSAL_LM) trained on SmolLM2 for
   ``--teacher-steps`` on val.conllu sentences.
2. Converted to gemma-3-270m (another family, depth 30 -> 18, hidden 576 -> 640, vocabulary
   49152 -> 262144) with each alignment method of adapter-convert, with and without distillation,
   calibrated on unlabelled text of the task (the training prompts and answers, no scores used).
3. Against: gemma with no adapter; gemma with a LoRA of the same shape trained from scratch on the
   same labelled examples for each budget in ``--budgets``; the teacher on its own base.
4. SmolLM2 -> SmolLM2 cut to every second layer (15 of 30), converted with SKIP.

Reports the share of the teacher's gain over its own base that each converted adapter keeps on
its target: (target base bpb - converted bpb) / (teacher base bpb - teacher bpb). Writes
``--out``/real_transfer.json, real_transfer.md and real_transfer.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import GEMMA3, SMOLLM2, model_source  # noqa: E402

from adapter_convert.demo.ner import read_conll  # noqa: E402
from adapter_convert.pipeline import ConversionRequest, execute, prepare  # noqa: E402
from adapter_convert.plan import AlignmentPlan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikineural-en"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LABEL_NAMES = {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "MISC": "MISC"}
# conversions: name -> (--align, override of the plan's alignment or None)
CONVERSIONS = {
    "correlation": ("correlation", None),
    "correlation + distill": ("correlation", AlignmentPlan("correlation", True, "benchmark: correlation refined by distillation")),
    "lstsq": ("lstsq", None),
    "lstsq + distill (--align distill)": ("distill", None),
}


@dataclasses.dataclass
class Example:
    prompt: str
    answer: str


def to_example(words: list[str], tags: list[str]) -> Example:
    entities, current = [], None
    for word, tag in zip(words, tags):
        if tag.startswith("B-") or (tag.startswith("I-") and current is None):
            current = [tag[2:], [word]]
            entities.append(current)
        elif tag.startswith("I-") and current is not None:
            current[1].append(word)
        else:
            current = None
    answer = "; ".join(f"{kind}: {' '.join(span)}" for kind, span in entities) or "none"
    return Example(f"Sentence: {' '.join(words)}\nEntities:", f" {answer}\n")


def load_examples(path: Path, limit: int, max_words: int = 30) -> list[Example]:
    """The first ``limit`` sentences of at most ``max_words`` words (short inputs keep a CPU run short)."""
    sentences = [s for s in read_conll(path) if len(s.words) <= max_words][:limit]
    return [to_example(s.words, s.tags) for s in sentences]


def encode(tokenizer, examples: list[Example], max_length: int = 160) -> dict[str, torch.Tensor]:
    """Prompt + answer; labels only on the answer's tokens (those that start inside it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [e.prompt + e.answer for e in examples]
    enc = tokenizer(texts, return_offsets_mapping=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    for row, example in enumerate(examples):
        starts = enc["offset_mapping"][row, :, 0]
        answer = (starts >= len(example.prompt)) & (enc["offset_mapping"][row, :, 1] > 0) & enc["attention_mask"][row].bool()
        labels[row][~answer] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def answer_nats(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")


@torch.no_grad()
def bits_per_byte(model, tokenizer, examples: list[Example], batch_size: int = 8) -> float:
    model.eval()
    nats = sum(float(answer_nats(model, encode(tokenizer, examples[i : i + batch_size]))) for i in range(0, len(examples), batch_size))
    return nats / math.log(2) / sum(len(e.answer.encode("utf-8")) for e in examples)


def new_lora(base: str, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train(model, tokenizer, examples: list[Example], *, steps: int, seed: int, lr: float, batch_size: int,
          evaluate_at: dict[int, callable] | None = None) -> list[float]:
    """AdamW on the answer tokens' loss; ``evaluate_at[step]`` is called after that many steps."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(1, steps + 1):
        model.train()
        batch = encode(tokenizer, rng.sample(examples, batch_size))
        loss = answer_nats(model, batch) / (batch["labels"] != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if evaluate_at and step in evaluate_at:
            evaluate_at[step]()
    return losses


def convert(adapter: Path, target: str, out: Path, *, align: str, plan_override, calibration: Path, args) -> dict:
    request = ConversionRequest(adapter=str(adapter), target=target, out=out, align=align, force=True,
                                calibration_data=str(calibration), calibration_tokens=args.calibration_tokens,
                                distill_steps=args.distill_steps, seed=args.seed, layer_map=args.layer_map)
    prepared = prepare(request)
    if plan_override is not None:
        prepared.plan = dataclasses.replace(prepared.plan, alignment=plan_override)
    started = time.perf_counter()
    summary = execute(prepared).to_json()
    summary["seconds"] = time.perf_counter() - started
    return summary


def shallow_copy(base: str, folder: Path, keep_every: int = 2) -> Path:
    """The base with every ``keep_every``-th layer only: a student cut from its teacher."""
    if (folder / "model.safetensors").is_file():
        return folder
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList(layers[i] for i in range(0, len(layers), keep_every))
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(model.model.layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[::keep_every]
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def evaluate_adapter(base: str, adapter: Path | None, tokenizer, examples) -> float:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return bits_per_byte(model, tokenizer, examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-base", help="the teacher's base (default: SmolLM2-135M, installed and cached)")
    parser.add_argument("--target", help="the other family's base (default: gemma-3-270m, installed and cached)")
    parser.add_argument("--teacher-steps", type=int, default=100)
    parser.add_argument("--budgets", default="0,50,100,200", help="labelled steps for the target's LoRA from scratch")
    parser.add_argument("--train", type=int, default=2000, help="training sentences (val.conllu)")
    parser.add_argument("--eval", type=int, default=100, help="test sentences (test.conllu)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--calibration-tokens", type=int, default=2048)
    parser.add_argument("--distill-steps", type=int, default=50)
    parser.add_argument("--layer-map", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-shallow", action="store_true", help="leave out the SmolLM2 -> 15-layer SmolLM2 part")
    parser.add_argument("--finetune", default="lstsq + distill (--align distill)",
                        help="conversions (names as in the report, ';'-separated) then trained on the labelled budgets, as the scratch LoRA")
    parser.add_argument("--finetune-budgets", default="50,100")
    parser.add_argument("--resume", action="store_true", help="keep the results in --out and run only what they lack")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "real_transfer")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    teacher_base = args.teacher_base or model_source(SMOLLM2)
    target = args.target or model_source(GEMMA3)
    budgets = [int(b) for b in args.budgets.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = load_examples(DATA / "val.conllu", args.train), load_examples(DATA / "test.conllu", args.eval)
    calibration = args.work / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": e.prompt + e.answer}) + "\n" for e in train_set))
    teacher_tokenizer, target_tokenizer = AutoTokenizer.from_pretrained(teacher_base), AutoTokenizer.from_pretrained(target)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version()},
               "settings": {k: str(v) for k, v in vars(args).items()}, "teacher_base": teacher_base, "target": target,
               "timings_s": {}, "bpb": {}, "conversions": {}}
    if args.resume and (args.out / "real_transfer.json").is_file():
        kept = json.loads((args.out / "real_transfer.json").read_text())
        kept.setdefault("earlier_settings", []).append(kept["settings"])
        results = kept | {"settings": results["settings"]}
    clock = time.perf_counter

    def timed(name, fn):
        started = clock()
        value = fn()
        results["timings_s"][name] = round(clock() - started, 1)
        print(f"{name}: {value if not isinstance(value, (dict, list)) else ''} ({results['timings_s'][name]} s)", flush=True)
        return value

    # 1. The teacher's adapter.
    adapter = args.work / f"teacher-lora-{args.teacher_steps}"
    if not (adapter / "adapter_model.safetensors").is_file():
        model = new_lora(teacher_base, args.seed)
        losses = timed("train teacher", lambda: train(model, teacher_tokenizer, train_set, steps=args.teacher_steps, seed=args.seed,
                                                        lr=args.lr, batch_size=args.batch_size))
        results["teacher_losses"] = losses[:: max(1, len(losses) // 20)]
        model.save_pretrained(adapter)
        config = json.loads((adapter / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = teacher_base
        (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))
        del model
    bpb = results["bpb"]
    for name, base, with_adapter, tokenizer in (("teacher base (no adapter)", teacher_base, None, teacher_tokenizer),
                                                ("teacher", teacher_base, adapter, teacher_tokenizer),
                                                ("target base (no adapter)", target, None, target_tokenizer)):
        if name not in bpb:
            bpb[name] = timed(name, lambda: evaluate_adapter(base, with_adapter, tokenizer, test_set))

    def save() -> None:
        """Results so far, after every stage: a late failure keeps what was measured."""
        teacher_gain = bpb["teacher base (no adapter)"] - bpb["teacher"]
        kept = {}
        for name, value in bpb.items():
            if name.startswith("converted:") or name.startswith("target LoRA"):
                kept[name] = (bpb["target base (no adapter)"] - value) / teacher_gain
            elif name.startswith("shallow: "):
                kept[name] = (bpb["shallow base (no adapter)"] - value) / teacher_gain
        results["share_of_teacher_gain"] = kept
        (args.out / "real_transfer.json").write_text(json.dumps(results, indent=2, default=str))
        write_report(results, args.out)

    save()

    # 2. Conversions onto the other family.
    for name, (align, override) in CONVERSIONS.items():
        out = converted_folder(args.work, name)
        if f"converted: {name}" in bpb:
            continue
        summary = timed(f"convert {name}", lambda: convert(adapter, target, out, align=align, plan_override=override,
                                                         calibration=calibration, args=args))
        results["conversions"][name] = {"seconds": round(summary["seconds"], 1), "alignment": summary.get("alignment"),
                                        "layer_map": summary.get("layer_map")}
        bpb[f"converted: {name}"] = timed(f"evaluate {name}", lambda: evaluate_adapter(target, out, target_tokenizer, test_set))
        save()

    # 3. Same family, fewer layers: SKIP onto SmolLM2 cut to every second layer.
    if not args.skip_shallow and "shallow: converted (SKIP)" not in bpb:
        student = shallow_copy(teacher_base, args.work / "teacher-base-every-2nd-layer")
        out = args.work / "converted-skip"
        request = ConversionRequest(adapter=str(adapter), target=str(student), out=out, layer_map="skip", force=True,
                                    calibration_data=str(calibration))
        summary = timed("convert skip", lambda: execute(prepare(request)).to_json())
        results["conversions"]["skip (same family, half the layers)"] = {"alignment": summary.get("alignment"),
                                                                          "layer_map": summary.get("layer_map")}
        bpb["shallow base (no adapter)"] = timed("shallow base", lambda: evaluate_adapter(str(student), None, teacher_tokenizer, test_set))
        bpb["shallow: converted (SKIP)"] = timed("shallow skip", lambda: evaluate_adapter(str(student), out, teacher_tokenizer, test_set))
        save()

    # 4. The target's own LoRA from scratch, on the same labelled examples.
    budgets = [b for b in budgets if f"target LoRA from scratch, {b} steps" not in bpb]
    scratch = new_lora(target, args.seed)
    for budget in budgets:
        if budget == 0:
            bpb["target LoRA from scratch, 0 steps"] = bpb["target base (no adapter)"]  # LoRA B starts at zero
    evaluate_at = {b: (lambda b=b: bpb.__setitem__(f"target LoRA from scratch, {b} steps", bits_per_byte(scratch, target_tokenizer, test_set)))
                   for b in budgets if b > 0}
    if evaluate_at:
        timed("train target from scratch", lambda: train(scratch, target_tokenizer, train_set, steps=max(evaluate_at), seed=args.seed,
                                                         lr=args.lr, batch_size=args.batch_size, evaluate_at=evaluate_at))
    del scratch
    save()

    # 5. Converted, then trained on the same labelled examples: does the transfer give a head start?
    finetune_budgets = [int(b) for b in args.finetune_budgets.split(",") if int(b) > 0]
    for name in filter(None, (n.strip() for n in args.finetune.split(";"))):
        keys = {b: f"converted: {name}, then {b} steps" for b in finetune_budgets}
        if all(key in bpb for key in keys.values()):
            continue
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32),
                                          str(converted_folder(args.work, name)), is_trainable=True)
        evaluate_at = {b: (lambda b=b: bpb.__setitem__(keys[b], bits_per_byte(model, target_tokenizer, test_set))) for b in finetune_budgets}
        timed(f"train converted {name}", lambda: train(model, target_tokenizer, train_set, steps=max(evaluate_at), seed=args.seed,
                                                       lr=args.lr, batch_size=args.batch_size, evaluate_at=evaluate_at))
        del model
        save()


def converted_folder(work: Path, name: str) -> Path:
    return work / ("converted-" + name.split(" ")[0] + ("-distill" if "distill" in name else ""))


def write_report(results: dict, out: Path) -> None:
    bpb, kept = results["bpb"], results["share_of_teacher_gain"]
    lines = ["# Real transfer: SmolLM2-135M -> gemma-3-270m (NER as text, bits per byte)", "",
             f"Teacher base `{results['teacher_base']}`, target `{results['target']}`. Machine: {results['machine']}.",
             f"Settings: {results['settings']}", "",
             "| model | bits per byte (lower is better) | share of the teacher's gain kept |", "|---|---|---|"]
    for name, value in bpb.items():
        share = f"{kept[name]:+.2f}" if name in kept else ""
        lines.append(f"| {name} | {value:.4f} | {share} |")
    lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results["timings_s"].items()]
    lines += ["", "Alignment reports:", ""]
    for name, conversion in results["conversions"].items():
        alignment = conversion.get("alignment") or {}
        agreement = alignment.get("agreement") if isinstance(alignment, dict) else None
        lines.append(f"- {name}: layer map {conversion.get('layer_map')}, agreement {json.dumps(agreement, default=str)}")
    (out / "real_transfer.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(7, 4.5))
    steps = sorted(int(k.split(", ")[1].split(" ")[0]) for k in bpb if k.startswith("target LoRA"))
    axis.plot(steps, [bpb[f"target LoRA from scratch, {s} steps"] for s in steps], "o-", label="gemma LoRA from scratch")
    lines = [(n, v) for n, v in bpb.items() if (n.startswith("converted:") and ", then " not in n) or n == "target base (no adapter)"]
    for (name, value), color in zip(lines, plt.cm.tab10.colors[2:]):  # one colour per line: the legend tells them apart
        axis.axhline(value, linestyle="--" if name.startswith("converted") else ":", label=name, linewidth=1.2,
                     color="black" if not name.startswith("converted") else color)
    for name in {k.split(", then ")[0] for k in bpb if ", then " in k}:
        tuned = sorted((int(k.split(", then ")[1].split(" ")[0]), v) for k, v in bpb.items() if k.startswith(name + ", then "))
        axis.plot([0] + [b for b, _ in tuned], [bpb[name]] + [v for _, v in tuned], "s-", label=name.removeprefix("converted: ") + ", then trained")
    axis.set_xlabel("labelled training steps on gemma-3-270m")
    axis.set_ylabel("bits per byte of the answer")
    axis.set_title("SmolLM2-135M adapter moved to gemma-3-270m")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "real_transfer.png", dpi=110)


if __name__ == "__main__":
    main()
