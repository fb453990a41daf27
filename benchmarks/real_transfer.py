"""Transfer between two independently pretrained LLMs: SmolLM2-135M (llama) -> gemma-3-270m, label-free.

    .venv/bin/python benchmarks/real_transfer.py                  # the full run (see docs/benchmarks.md section 7)
    .venv/bin/python benchmarks/real_transfer.py --teacher-steps 20 --budgets 10 --eval 16 \\
        --teacher-base DIR --target DIR --out OUT               # a smoke run on any two causal LMs

Two tasks written as text, from WikiNEuRal English (the paper's data), each with a fixed output
format and a score a user sees:

- ``ner``: ``Sentence: ...\\nEntities: PER: Ada Lovelace; LOC: London`` (entity F1 of the parsed
  generation);
- ``types``: ``Sentence: ...\\nEntity types: LOC, PER`` (classification as text, multi-label F1).

Per task:
1. Teacher: a LoRA (r 8, all seven projections, CAUSAL_LM) trained ``--teacher-steps`` on SmolLM2.
2. Converted to gemma-3-270m (another family, depth 30 -> 18, hidden 576 -> 640, vocabulary
   49152 -> 262144) as a user without labels would: ``adapter-convert convert`` with the default
   options and the training *prompts only* (no answers) as ``--calibration-data``; and, to choose
   the start by measurement, the least-squares maps as the start of the same distillation.
3. Against: gemma with no adapter; gemma with a LoRA of the same shape trained from scratch on the
   labelled examples (``--budgets`` steps; the 50-step training time is the conversion's yardstick);
   the converted adapter trained on the same labelled steps (a head start?); the teacher itself.

Scores: bits per byte of the gold answer given the prompt (tokenizers differ), the share of the
teacher's gain kept, (target base bpb - converted bpb) / (teacher base bpb - teacher bpb), and the
F1 of greedy generations (first line, parsed) against the gold answers, beside the teacher's.
Writes ``--out``/real_transfer.json, real_transfer.md and real_transfer.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import GEMMA3, SMOLLM2, model_source  # noqa: E402

from adapter_convert.align import session  # noqa: E402
from adapter_convert.align.generative import generate  # noqa: E402
from adapter_convert.demo.ner import read_conll  # noqa: E402
from adapter_convert.pipeline import ConversionRequest, execute, prepare  # noqa: E402
from adapter_convert.plan import AlignmentPlan  # noqa: E402
from adapter_convert.reporting import Reporter  # noqa: E402


class StageTimer(Reporter):
    """Seconds per stage of a conversion (a stage runs until the next begins; a progress bar is one
    stage): where the conversion's time goes, written beside its total."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._current, self._since = None, time.perf_counter()

    def stage(self, message: str) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self.seconds[self._current] = round(self.seconds.get(self._current, 0.0) + now - self._since, 1)
        self._current, self._since = message.split(":")[0][:60], now

    def progress(self, description: str, total: int):
        self.stage(description)
        return super().progress(description, total)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikineural-en"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# conversions: name -> (plan override (None: what --align auto plans), --distill-steps (None: the run's --distill-steps),
# --dtype (None: the checkpoint's own, float32 here), whether distillation steps may autocast (the tool's default: yes))
CONVERSIONS = {
    "auto (fresh start + output distillation)": (None, None, None, True),
    "lstsq start + output distillation": (AlignmentPlan("lstsq", True, "benchmark: least-squares maps as the start of output distillation"),
                                          None, None, True),
    "auto, --distill-steps 50": (None, 50, None, True),  # the cost/quality trade: a quarter of the default cap
    # what a user of the Hub's checkpoints got before the CPU loaded them in float32: they are stored in bfloat16
    "auto, --dtype bfloat16": (None, None, "bfloat16", True),
    "auto, float32 steps (no autocast)": (None, None, None, False),  # the default before steps autocast
}
SCRATCH_DTYPES = {"float32": "target LoRA from scratch", "bfloat16": "target LoRA from scratch in bfloat16"}  # dtype -> row name


@dataclasses.dataclass
class Example:
    prompt: str
    answer: str


def entities(words: list[str], tags: list[str]) -> list[tuple[str, str]]:
    found, current = [], None
    for word, tag in zip(words, tags):
        if tag.startswith("B-") or (tag.startswith("I-") and current is None):
            current = [tag[2:], [word]]
            found.append(current)
        elif tag.startswith("I-") and current is not None:
            current[1].append(word)
        else:
            current = None
    return [(kind, " ".join(span)) for kind, span in found]


def ner_example(words: list[str], tags: list[str]) -> Example:
    answer = "; ".join(f"{kind}: {span}" for kind, span in entities(words, tags)) or "none"
    return Example(f"Sentence: {' '.join(words)}\nEntities:", f" {answer}\n")


def types_example(words: list[str], tags: list[str]) -> Example:
    kinds = sorted({kind for kind, _ in entities(words, tags)})
    return Example(f"Sentence: {' '.join(words)}\nEntity types:", f" {', '.join(kinds) or 'none'}\n")


def people_example(words: list[str], tags: list[str]) -> Example:
    people = [span for kind, span in entities(words, tags) if kind == "PER"]
    return Example(f"Text: {' '.join(words)}\nPeople:", f" {'; '.join(people) or 'none'}\n")


def tagged_example(words: list[str], tags: list[str]) -> Example:
    """The text written again with each entity in brackets and its type: long answers (about 100
    SmolLM2 tokens for three sentences), past the default answer budget of 64."""
    out, index = [], 0
    while index < len(words):
        if tags[index] == "O":
            out.append(words[index])
            index += 1
            continue
        end = index + 1
        while end < len(words) and tags[end].startswith("I-"):
            end += 1
        out.append(f"[{' '.join(words[index:end])}|{tags[index][2:]}]")
        index = end
    return Example(f"Text: {' '.join(words)}\nTagged:", f" {' '.join(out)}\n")


def parse_tagged(answer: str) -> set[tuple[str, str]]:
    line = answer.strip().split("\n")[0]
    return {(kind.strip(), span.strip()) for span, kind in re.findall(r"\[([^\[\]|]+)\|([^\[\]|]+)\]", line)}


def parse_ner(answer: str) -> set[tuple[str, str]]:
    items = set()
    for part in answer.strip().split("\n")[0].split(";"):
        kind, _, span = part.partition(":")
        if span.strip():
            items.add((kind.strip(), span.strip()))
    return items


def parse_types(answer: str) -> set[str]:
    line = answer.strip().split("\n")[0]
    return {t.strip() for t in line.split(",") if t.strip() and t.strip() != "none"}


def parse_people(answer: str) -> set[str]:
    line = answer.strip().split("\n")[0]
    return {p.strip() for p in line.split(";") if p.strip() and p.strip() != "none"}


# task -> (example from words and tags, parser of an answer, sentences per example)
TASKS = {"ner": (ner_example, parse_ner, 1), "types": (types_example, parse_types, 1),
         # long prompts (four sentences, about 150 tokens): a window that cut a prompt's end would lose the cue "People:"
         "people": (people_example, parse_people, 4),
         # long answers (three sentences written again, entities tagged inline): the answer budget must rise past 64 tokens
         "tagged": (tagged_example, parse_tagged, 3)}
ANSWER_TOKENS = {"tagged": 192}  # a test generation's budget where answers are longer than the default 48


def load_examples(task: str, path: Path, limit: int, max_words: int = 30) -> list[Example]:
    """The first ``limit`` examples, each of the task's number of consecutive sentences of at most
    ``max_words`` words (short inputs keep a CPU run short)."""
    build, _, per = TASKS[task]
    sentences = [s for s in read_conll(path) if len(s.words) <= max_words][: limit * per]
    groups = [sentences[i : i + per] for i in range(0, len(sentences) - per + 1, per)]
    return [build([w for s in g for w in s.words], [t for s in g for t in s.tags]) for g in groups]


def micro_f1(task: str, predicted: list[str], gold: list[str]) -> float:
    parse = TASKS[task][1]
    tp = fp = fn = 0
    for p, g in zip(predicted, gold):
        p, g = parse(p), parse(g)
        tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def encode(tokenizer, examples: list[Example], max_length: int = 512) -> dict[str, torch.Tensor]:
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


def generation_f1(task: str, model, tokenizer, examples: list[Example]) -> float:
    """F1 of the model's greedy answers (first line, parsed) against the gold answers."""
    written = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=ANSWER_TOKENS.get(task, 48), stops=("\n",),
                       max_length=512)
    return micro_f1(task, [w.answer for w in written], [e.answer for e in examples])


def new_lora(base: str, seed: int, dtype: str = "float32"):
    """A fresh LoRA (r 8, all seven projections) on ``base`` loaded in ``dtype``; peft keeps the
    adapter's own weights in float32 either way."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train(model, tokenizer, examples: list[Example], *, steps: int, seed: int, lr: float, batch_size: int,
          evaluate_at: dict[int, callable] | None = None) -> float:
    """AdamW on the answer tokens' loss; ``evaluate_at[step]`` is called after that many steps (not
    timed). Returns the training seconds."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    seconds = 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        model.train()
        batch = encode(tokenizer, rng.sample(examples, batch_size))
        loss = answer_nats(model, batch) / (batch["labels"] != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds += time.perf_counter() - started
        if evaluate_at and step in evaluate_at:
            evaluate_at[step]()
    return seconds


def load(base: str, adapter: Path | None = None, trainable: bool = False):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable) if adapter is not None else model


def shallow_copy(base: str, folder: Path, keep_every: int = 2) -> Path:
    """The base with every ``keep_every``-th layer only: a student cut from its teacher
    (the opt-in real-model tests convert onto it with SKIP)."""
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


def converted_folder(work: Path, name: str) -> Path:
    """Where a conversion's adapter goes: its name up to any parenthesis, as a folder name."""
    return work / ("converted-" + "".join(c if c.isalnum() else "-" for c in name.split(" (")[0]))


def run_task(task: str, args, teacher_base: str, target: str, results: dict, save) -> None:
    work = args.work / task
    work.mkdir(parents=True, exist_ok=True)
    r = results["tasks"].setdefault(task, {"bpb": {}, "f1": {}, "seconds": {}, "conversions": {}})
    bpb, f1, seconds = r["bpb"], r["f1"], r["seconds"]
    train_set, test_set = load_examples(task, DATA / "val.conllu", args.train), load_examples(task, DATA / "test.conllu", args.eval)
    teacher_tokenizer, target_tokenizer = AutoTokenizer.from_pretrained(teacher_base), AutoTokenizer.from_pretrained(target)
    # what a user without labels has: the task's prompts, no answers
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in train_set))

    def measure(name: str, model, tokenizer) -> None:
        if name not in bpb:
            bpb[name] = round(bits_per_byte(model, tokenizer, test_set), 4)
            f1[name] = round(generation_f1(task, model, tokenizer, test_set), 4)
            print(f"[{task}] {name}: bpb {bpb[name]}, F1 {f1[name]}", flush=True)
            save()

    adapter = work / f"teacher-lora-{args.teacher_steps}"
    if not (adapter / "adapter_model.safetensors").is_file():
        model = new_lora(teacher_base, args.seed)
        seconds["train teacher"] = round(train(model, teacher_tokenizer, train_set, steps=args.teacher_steps, seed=args.seed,
                                               lr=args.lr, batch_size=args.batch_size), 1)
        model.save_pretrained(adapter)
        config = json.loads((adapter / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = teacher_base
        (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))
        del model
    measure("teacher base (no adapter)", load(teacher_base), teacher_tokenizer)
    measure("teacher", load(teacher_base, adapter), teacher_tokenizer)
    measure("target base (no adapter)", load(target), target_tokenizer)

    for name, (override, steps, dtype, autocast) in CONVERSIONS.items():
        if name not in args.conversions.split(";"):
            continue
        out = converted_folder(work, name)
        key = f"converted: {name}"
        if key not in bpb:
            request = ConversionRequest(adapter=str(adapter), target=target, out=out, force=True, calibration_data=str(prompts),
                                        calibration_tokens=args.calibration_tokens, seed=args.seed,
                                        distill_steps=steps or args.distill_steps, dtype=dtype)
            session.MIXED_PRECISION = autocast
            started, timer = time.perf_counter(), StageTimer()
            prepared = prepare(request, timer)
            if override is not None:
                prepared.plan = dataclasses.replace(prepared.plan, alignment=override)
            summary = execute(prepared, timer).to_json()
            timer.stage("end")
            seconds[f"convert: {name}"] = round(time.perf_counter() - started, 1)
            r["conversions"][name] = {"method": summary["method"], "alignment": summary["alignment"], "stages": timer.seconds}
            print(f"[{task}] converted {name} in {seconds[f'convert: {name}']} s", flush=True)
            measure(key, load(target, out), target_tokenizer)

    for dtype in filter(None, args.scratch_dtypes.split(",")):
        row = SCRATCH_DTYPES[dtype]
        scratch_keys = {b: f"{row}, {b} labelled steps" for b in args.budgets}
        if all(k in bpb for k in scratch_keys.values()):
            continue
        scratch = new_lora(target, args.seed, dtype)
        evaluate_at = {b: (lambda b=b: measure(scratch_keys[b], scratch, target_tokenizer)) for b in args.budgets}
        seconds[f"train {row}, {max(args.budgets)} steps"] = round(
            train(scratch, target_tokenizer, train_set, steps=max(args.budgets), seed=args.seed, lr=args.lr,
                  batch_size=args.batch_size, evaluate_at=evaluate_at), 1)
        del scratch
    for name in args.finetune.split(";"):
        if name not in args.conversions.split(";"):
            continue
        keys = {b: f"converted: {name}, then {b} labelled steps" for b in args.budgets}
        if all(k in bpb for k in keys.values()):
            continue
        model = load(target, converted_folder(work, name), trainable=True)
        evaluate_at = {b: (lambda b=b: measure(keys[b], model, target_tokenizer)) for b in args.budgets}
        train(model, target_tokenizer, train_set, steps=max(args.budgets), seed=args.seed, lr=args.lr, batch_size=args.batch_size,
              evaluate_at=evaluate_at)
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-base", help="the teacher's base (default: SmolLM2-135M, installed and cached)")
    parser.add_argument("--target", help="the other family's base (default: gemma-3-270m, installed and cached)")
    parser.add_argument("--tasks", default="ner,types")
    parser.add_argument("--teacher-steps", type=int, default=100)
    parser.add_argument("--budgets", default="25,50", help="labelled steps for the scratch LoRA and the converted one")
    parser.add_argument("--train", type=int, default=2000, help="training examples (val.conllu): labelled, or prompts only")
    parser.add_argument("--eval", type=int, default=100, help="test examples (test.conllu)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--calibration-tokens", type=int, default=2048, help="paired tokens for the least-squares start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill-steps", type=int, default=None, help="default: the tool's own cap")
    parser.add_argument("--conversions", default=";".join(CONVERSIONS), help="names as in CONVERSIONS, ';'-separated")
    parser.add_argument("--scratch-dtypes", default=",".join(SCRATCH_DTYPES), help="dtypes the scratch LoRA trains in, ','-separated")
    parser.add_argument("--finetune", default="auto (fresh start + output distillation)", help="conversions then trained on the budgets")
    parser.add_argument("--resume", action="store_true", help="keep the results in --out and run only what they lack")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "real_transfer")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",") if int(b) > 0]
    torch.set_num_threads(os.cpu_count() or 1)
    teacher_base = args.teacher_base or model_source(SMOLLM2)
    target = args.target or model_source(GEMMA3)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version()},
               "settings": {k: str(v) for k, v in vars(args).items()}, "teacher_base": teacher_base, "target": target, "tasks": {}}
    if args.resume and (args.out / "real_transfer.json").is_file():
        kept = json.loads((args.out / "real_transfer.json").read_text())
        if "tasks" in kept:
            results["tasks"] = kept["tasks"]

    def save() -> None:
        """Results so far, after every measurement: a late failure keeps what was measured."""
        for r in results["tasks"].values():
            bpb = r["bpb"]
            if "teacher" in bpb and "target base (no adapter)" in bpb:
                gain = bpb["teacher base (no adapter)"] - bpb["teacher"]
                r["share_of_teacher_gain"] = {k: round((bpb["target base (no adapter)"] - v) / gain, 3) for k, v in bpb.items()
                                              if k.startswith(("converted", "target LoRA"))}
                r["share_of_teacher_f1"] = {k: round(v / max(r["f1"]["teacher"], 1e-9), 3) for k, v in r["f1"].items()
                                            if k.startswith(("converted", "target LoRA"))}
        (args.out / "real_transfer.json").write_text(json.dumps(results, indent=2, default=str))
        write_report(results, args.out)

    for task in args.tasks.split(","):
        run_task(task, args, teacher_base, target, results, save)
        save()


def write_report(results: dict, out: Path) -> None:
    lines = ["# Real transfer: SmolLM2-135M -> gemma-3-270m, label-free (bits per byte and F1 of generations)", "",
             f"Teacher base `{results['teacher_base']}`, target `{results['target']}`. Machine: {results['machine']}.",
             f"Settings: {results['settings']}", ""]
    for task, r in results["tasks"].items():
        kept, kept_f1 = r.get("share_of_teacher_gain", {}), r.get("share_of_teacher_f1", {})
        lines += [f"## {task}", "", "| model | bits per byte | share of the teacher's gain kept | F1 of generations | share of the teacher's F1 |",
                  "|---|---|---|---|---|"]
        for name, value in r["bpb"].items():
            share = f"{kept[name]:+.2f}" if name in kept else ""
            share_f1 = f"{kept_f1[name]:.2f}" if name in kept_f1 else ""
            lines.append(f"| {name} | {value:.4f} | {share} | {r['f1'].get(name, float('nan')):.3f} | {share_f1} |")
        lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in r["seconds"].items()] + [""]
        for name, conversion in r["conversions"].items():
            alignment = conversion.get("alignment") or {}
            lines.append(f"- {name}: {conversion.get('method')}; distill {json.dumps(alignment.get('distill'))}; "
                         f"fidelity {json.dumps(alignment.get('fidelity'))}; seconds per stage {json.dumps(conversion.get('stages'))}")
        lines.append("")
    (out / "real_transfer.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tasks = list(results["tasks"].items())
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, (task, r) in zip(axes[0], tasks):
        bpb = r["bpb"]
        steps = sorted(int(k.split(", ")[1].split(" ")[0]) for k in bpb if k.startswith("target LoRA from scratch, "))
        axis.plot([0] + steps, [bpb.get("target base (no adapter)", float("nan"))] + [bpb[f"target LoRA from scratch, {s} labelled steps"] for s in steps],
                  "o-", label="gemma LoRA from scratch (labelled)")
        for name in r["conversions"]:
            key = f"converted: {name}"
            tuned = sorted((int(k.split(", then ")[1].split(" ")[0]), v) for k, v in bpb.items() if k.startswith(key + ", then "))
            axis.plot([0] + [b for b, _ in tuned], [bpb[key]] + [v for _, v in tuned], "s-", label=name + (", then labelled" if tuned else ""))
        for name, style in (("teacher", "--"), ("target base (no adapter)", ":")):
            if name in bpb:
                axis.axhline(bpb[name], linestyle=style, color="black", linewidth=1, label=name)
        axis.set_xlabel("labelled training steps on gemma-3-270m")
        axis.set_ylabel("bits per byte of the gold answer")
        axis.set_title(f"{task}: SmolLM2-135M adapter moved to gemma-3-270m")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "real_transfer.png", dpi=110)


if __name__ == "__main__":
    main()
