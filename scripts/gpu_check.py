"""GPU check of alignment and distillation (--device / --dtype), for a machine with CUDA.

    python scripts/gpu_check.py OUT_FOLDER

Builds a tiny llama teacher (float32, BPE tokenizer A) with a LoRA on every projection and a tiny
qwen2 student of other widths (bfloat16, BPE tokenizer B), then converts through the CLI with
--device cuda (lstsq + distillation, mixed dtypes), --device auto (accelerate's device map) and
--device cpu, and compares: every run must succeed, run where asked, and the cuda and cpu runs
must agree closely (statistics and maps are float64 on either device). Prints one JSON line per
run and writes OUT_FOLDER/gpu_check.json. Not part of the test suite: CI has no GPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from typer.testing import CliRunner

from adapter_convert.calibration import load_texts
from adapter_convert.cli import app


def tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(load_texts(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", pad_token="[PAD]")


def build(root: Path) -> None:
    torch.manual_seed(0)
    for name, model_type, vocab, width, dtype in (("teacher", "llama", 400, 64, torch.float32), ("student", "qwen2", 300, 96, torch.bfloat16)):
        tok = tokenizer(vocab)
        config = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                                      num_hidden_layers=4 if name == "teacher" else 2, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=width // 4, max_position_embeddings=256, pad_token_id=1)
        model = AutoModelForCausalLM.from_config(config).to(dtype)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        if name == "teacher":
            lora = LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"])
            peft_model = get_peft_model(model, lora)
            with torch.no_grad():
                for param_name, param in peft_model.named_parameters():
                    if "lora_" in param_name:
                        param.copy_(torch.randn_like(param) * 0.3)
            peft_model.save_pretrained(root / "adapter")
            config_path = root / "adapter" / "adapter_config.json"
            config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"base_model_name_or_path": str(root / "teacher")}))


def convert(root: Path, out: str, *options: str) -> dict:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["convert", str(root / "adapter"), "--target", str(root / "student"), "--out", str(root / out),
                                      "--json", "--calibration-tokens", "1024", "--distill-steps", "20", *options])
    if result.exit_code != 0:
        raise SystemExit(f"{out}: exit {result.exit_code}\n{result.output}")
    summary = json.loads(result.stdout)
    alignment = summary["alignment"]
    return {"run": out, "options": list(options), "seconds": round(time.perf_counter() - started, 2), "method": summary["method"],
            "device": alignment["device"], "dtypes": alignment["dtypes"], "head_input_fit": alignment["head_input_fit"],
            "agreement": alignment["agreement"]["value"], "before_distill": (alignment.get("agreement_before_distill") or {}).get("value"),
            "final_loss": (alignment.get("distill") or {}).get("final_loss")}


def main() -> None:
    out_folder = Path(sys.argv[1])
    root = Path("/tmp/adapter-convert-gpu-check")  # outside OUT_FOLDER: only the report comes back
    build(root)
    runs = [
        convert(root, "cuda", "--device", "cuda", "--align", "distill"),
        convert(root, "auto", "--device", "auto", "--align", "lstsq"),
        convert(root, "cuda-fp32", "--device", "cuda", "--align", "lstsq", "--dtype", "float32"),
        convert(root, "cpu-fp32", "--device", "cpu", "--align", "lstsq", "--dtype", "float32"),
    ]
    for run in runs:
        print(json.dumps(run))
    cuda, cpu = load_file(root / "cuda-fp32" / "adapter_model.safetensors"), load_file(root / "cpu-fp32" / "adapter_model.safetensors")
    worst = max(float((cuda[k].double() - cpu[k].double()).abs().max() / cpu[k].double().abs().max().clamp_min(1e-12)) for k in cpu)
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": runs,
              "max_relative_difference_cuda_vs_cpu_fp32": worst}
    assert runs[0]["device"] == "cuda" and runs[0]["dtypes"] == {"source": "float32", "target": "bfloat16"}
    assert worst < 1e-3, worst
    print(json.dumps({"max_relative_difference_cuda_vs_cpu_fp32": worst}))
    (out_folder / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
