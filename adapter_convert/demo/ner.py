"""WikiNEuRal NER: read CoNLL, train a LoRA briefly, score token-level F1. Small and CPU-friendly."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForTokenClassification, AutoTokenizer

from ..architectures import get_architecture
from .minilm import NER_LABELS

LABEL_IDS = {label: i for i, label in enumerate(NER_LABELS)}
MAX_TOKENS = 64


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]


def read_conll(path: Path, *, limit: int | None = None) -> list[Sentence]:
    """``INDEX<TAB>TOKEN<TAB>TAG`` lines; a blank line ends a sentence."""
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if words:
                    sentences.append(Sentence(words, tags))
                    words, tags = [], []
                    if limit and len(sentences) >= limit:
                        break
                continue
            _, word, tag = line.split("\t")
            words.append(word)
            tags.append(tag)
    if words and not (limit and len(sentences) >= limit):
        sentences.append(Sentence(words, tags))
    return sentences


def encode(tokenizer, sentences: list[Sentence]) -> dict[str, torch.Tensor]:
    """Tokenize; each word's first sub-token carries its label, the rest are ignored (-100)."""
    batch = tokenizer([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=MAX_TOKENS,
                      padding=True, return_tensors="pt")
    labels = torch.full(batch["input_ids"].shape, -100)
    for row, sentence in enumerate(sentences):
        previous = None
        for col, word in enumerate(batch.word_ids(row)):
            if word is not None and word != previous:
                labels[row, col] = LABEL_IDS[sentence.tags[word]]
            previous = word
    batch["labels"] = labels
    return dict(batch)


def lora_config(model_type: str) -> LoraConfig:
    """The paper's NER adapter shape: LoRA on query and value, plus the classifier head."""
    modules = get_architecture(model_type).modules
    targets = [modules[role].rsplit(".", 1)[-1] for role in ("attn.q", "attn.v")]
    return LoraConfig(r=8, lora_alpha=16, target_modules=targets, modules_to_save=["classifier"], task_type="TOKEN_CLS")


def new_lora_model(base: Path, *, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(base)
    return get_peft_model(model, lora_config(model.config.model_type))


def load_lora_model(base: Path, adapter: Path, *, trainable: bool = False):
    model = AutoModelForTokenClassification.from_pretrained(base)
    return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)


def train(model, tokenizer, sentences: list[Sentence], *, steps: int, batch_size: int = 16, lr: float = 2e-3, seed: int = 0,
          on_step: Callable[[float], None] = lambda loss: None):
    """A short AdamW run over random batches; only the adapter (and head) train."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        batch = encode(tokenizer, rng.sample(sentences, batch_size))
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        on_step(loss.item())
    model.eval()
    return model


@torch.no_grad()
def token_f1(model, tokenizer, sentences: list[Sentence], *, batch_size: int = 64) -> float:
    """Micro F1 over entity-labelled words (first sub-token), ignoring O: the paper's token-level score."""
    model.eval()
    true_positive = predicted = gold = 0
    for start in range(0, len(sentences), batch_size):
        batch = encode(tokenizer, sentences[start : start + batch_size])
        labels = batch.pop("labels")
        predictions = model(**batch).logits.argmax(-1)
        mask = labels != -100
        pred, true = predictions[mask], labels[mask]
        outside = LABEL_IDS["O"]
        true_positive += int(((pred == true) & (true != outside)).sum())
        predicted += int((pred != outside).sum())
        gold += int((true != outside).sum())
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / gold if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
