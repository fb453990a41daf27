"""Tiny random models and real PEFT adapters for tests, made on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedTokenizerFast

from adapter_convert.architectures import get_architecture
from adapter_convert.calibration import load_texts
from adapter_convert.cli import app

ENCODERS = ["bert", "roberta", "xlm-roberta", "distilbert", "deberta-v2", "electra"]
DECODERS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox"]
GQA = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"}
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 32, 4, 2, 8, 64


def tiny_config(model_type: str, layers: int, **overrides):
    kwargs = dict(
        vocab_size=128, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, num_labels=5,
    )
    if model_type in GQA:
        kwargs |= dict(num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM)
    if model_type == "distilbert":
        kwargs["hidden_dim"] = INTERMEDIATE
    if model_type == "gpt2":
        kwargs["n_inner"] = INTERMEDIATE
    return AutoConfig.for_model(model_type, **(kwargs | overrides))


def save_tiny_model(folder: Path, model_type: str, layers: int, *, seed: int = 0, embeddings_from=None, **overrides):
    """A tiny random model; ``embeddings_from`` (a model) gives it that model's token embeddings,
    as a student initialised from its teacher has (the compatibility probe then finds them related)."""
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_config(tiny_config(model_type, layers, **overrides))
    if embeddings_from is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(embeddings_from.get_input_embeddings().weight)
    model.save_pretrained(folder)
    return model


def all_module_names(model_type: str) -> list[str]:
    """In-layer module paths of every role the family has (full paths: no suffix ambiguity)."""
    return list(get_architecture(model_type).modules.values())


def save_adapter(folder: Path, model, peft_config, base_path: Path, *, seed: int = 1):
    """Wrap ``model`` with ``peft_config`` (random, non-zero weights) and save it naming ``base_path``."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, peft_config)
    with torch.no_grad():  # non-trivial values everywhere, so a wrong mapping cannot pass
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "ia3_" in name:
                param.copy_(torch.randn_like(param) * 0.5 + (1.0 if "ia3_" in name or "magnitude" in name else 0.0))
    peft_model.save_pretrained(folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_path)
    config_path.write_text(json.dumps(config))
    return peft_model


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level BPE trained on the built-in calibration text: another tokenizer than MiniLM's WordPiece."""
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(load_texts(), trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", pad_token="[PAD]")


def probe(source, target, **options) -> dict:
    """The compatibility probe on two bases resolved as a conversion resolves them (config,
    tokenizer and shard index; the probe itself resolves nothing)."""
    from adapter_convert.compatibility import embedding_evidence
    from adapter_convert.sources import BASE_FILES, resolve

    resolved = [resolve(str(r), what="base model", patterns=BASE_FILES, required="config.json") for r in (source, target)]
    return embedding_evidence(*resolved, **options)


def run_cli(*args):
    """The CLI in this process (typer's test runner); the result has ``exit_code``, ``output`` and ``stdout``."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_json(*args) -> dict:
    """A CLI run that must succeed, and the JSON it printed (``--json``)."""
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def delta_weight(module) -> torch.Tensor:
    """One peft LoRA layer's delta weight ``scaling * B @ A``, read back through peft: float64, in
    (out, in) orientation also for gpt2's fan-in-fan-out Conv1D."""
    with torch.no_grad():
        delta = module.get_delta_weight("default").double()
    return delta.T if getattr(module, "fan_in_fan_out", False) else delta


def delta_weights(peft_model) -> dict[str, torch.Tensor]:
    """Module name inside the base model -> its ``delta_weight``, for every adapted module."""
    from peft.tuners.lora import LoraLayer

    return {name: delta_weight(module) for name, module in peft_model.base_model.model.named_modules()
            if isinstance(module, LoraLayer) and "default" in module.lora_A}
