"""Smoke test of an installed (non-editable) adapter-convert, run by .ci/run with the python of a
clean venv that has only torch and the built wheel, from a directory outside the repository.

It makes tiny random models (bert -> distilbert for a direct conversion, llama hidden 32 ->
llama hidden 48 for an lstsq alignment on the package's built-in calibration text), a LoRA on
each source, then runs the installed `adapter-convert` command and checks exit codes and files.
Usage: python wheel_smoke.py WORKDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, PreTrainedTokenizerFast

import adapter_convert

WORDS = ("the a of and to in is was for on with as by at from that it he she they city river team film "
         "school party club music year group world north south king queen state union church war game").split()
CLI = Path(sys.executable).parent / "adapter-convert"


def fail(message: str) -> None:
    print(f"wheel smoke test FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def tokenizer() -> PreTrainedTokenizerFast:
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(200)]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", pad_token="[PAD]")


def config(model_type: str, layers: int, vocab: int, hidden: int = 32, **extra):
    kwargs = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=1, num_labels=5)
    if model_type == "distilbert":
        kwargs["hidden_dim"] = 2 * hidden
    return AutoConfig.for_model(model_type, **(kwargs | extra))


def save(folder: Path, model, tok) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_lora(folder: Path, model, lora: LoraConfig, base: Path) -> Path:
    torch.manual_seed(1)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # non-zero B, so the conversion moves real values
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    peft_model.save_pretrained(folder)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"base_model_name_or_path": str(base)}))
    return folder


def run(*args: str) -> dict:
    command = [str(CLI), *args]
    print("$ adapter-convert", " ".join(args), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        fail(f"exit code {result.returncode} from {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout) if "--json" in args else {}


def check_output(folder: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        if not (folder / name).is_file():
            fail(f"{folder / name} was not written")


def main(workdir: Path) -> None:
    installed = Path(adapter_convert.__file__).resolve()
    if not installed.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()):
        fail(f"adapter_convert was imported from {installed}, not from this venv's site-packages")
    if not CLI.is_file():
        fail(f"no adapter-convert command at {CLI}")
    workdir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    torch.manual_seed(0)

    run("--help")
    run("version")

    # direct conversion: 4-layer bert -> 2-layer distilbert, same widths
    bert = AutoModelForTokenClassification.from_config(config("bert", 4, len(tok)))
    bert_dir = save(workdir / "bert", bert, tok)
    distilbert = AutoModelForTokenClassification.from_config(config("distilbert", 2, len(tok)))
    with torch.no_grad():  # a student initialised from its teacher: --align auto measures it compatible and copies
        distilbert.get_input_embeddings().weight.copy_(bert.get_input_embeddings().weight)
    distil_dir = save(workdir / "distilbert", distilbert, tok)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"],
                      task_type="TOKEN_CLS")
    adapter = save_lora(workdir / "bert-lora", bert, lora, bert_dir)
    summary = run("convert", str(adapter), "--target", str(distil_dir), "--out", str(workdir / "direct"), "--json")
    if summary["compatibility"]["verdict"] != "compatible" or summary["method"] != "direct tensor mapping":
        fail(f"expected a measured-compatible direct mapping, got {summary['compatibility']['verdict']} / {summary['method']}")
    check_output(workdir / "direct")
    print("direct conversion ok", flush=True)

    # alignment: llama hidden 32 -> llama hidden 48, the built-in calibration text
    teacher = AutoModelForCausalLM.from_config(config("llama", 2, len(tok)))
    teacher_dir = save(workdir / "llama-32", teacher, tok)
    student = AutoModelForCausalLM.from_config(config("llama", 2, len(tok), hidden=48))
    student_dir = save(workdir / "llama-48", student, tok)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    adapter = save_lora(workdir / "llama-lora", teacher, lora, teacher_dir)
    run("convert", str(adapter), "--target", str(student_dir), "--out", str(workdir / "aligned"),
        "--align", "lstsq", "--calibration-tokens", "64", "--json")
    check_output(workdir / "aligned")
    print("aligned conversion ok", flush=True)
    print("wheel smoke test passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: python wheel_smoke.py WORKDIR")
    main(Path(sys.argv[1]))
