"""WikiNEuRal NER: read CoNLL, train a LoRA briefly, score token-level F1. Small and CPU-friendly."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForTokenClassification

from ..architectures import get_architecture
from ..calibration import conll_sentences
from .minilm import NER_LABELS

LABEL_IDS = {label: i for i, label in enumerate(NER_LABELS)}
MAX_TOKENS = 64


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]


def read_conll(path: Path, *, limit: int | None = None) -> list[Sentence]:
    """``INDEX<TAB>TOKEN<TAB>TAG`` lines; a blank line ends a sentence. The first ``limit`` sentences, or all."""
    with open(path, encoding="utf-8") as f:
        sentences = islice(conll_sentences(f), limit or None)
        return [Sentence([word for _, word, _ in tokens], [tag for _, _, tag in tokens]) for tokens in sentences]


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
          on_step: Callable[[int, float], None] = lambda step, loss: None):
    """A short AdamW run over random batches; only the adapter (and head) train.
    ``on_step(step, loss)`` runs after each step (1-based); it may evaluate, train mode is restored."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(1, steps + 1):
        batch = encode(tokenizer, rng.sample(sentences, batch_size))
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        on_step(step, loss.item())
        model.train()
    model.eval()
    return model


@torch.no_grad()
def predict(model, tokenizer, sentences: list[Sentence], *, batch_size: int = 64) -> list[list[str]]:
    """One predicted tag per word, read at the word's first sub-token."""
    model.eval()
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i].words))  # similar lengths: little padding
    tags: list[list[str]] = [[] for _ in sentences]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = encode(tokenizer, [sentences[i] for i in chunk])
        labels = batch.pop("labels")
        predictions = model(**batch).logits.argmax(-1)
        for row, index in enumerate(chunk):
            tags[index] = [NER_LABELS[i] for i in predictions[row][labels[row] != -100].tolist()]
    return tags


def scores(model, tokenizer, sentences: list[Sentence]) -> dict[str, float]:
    """Token-level F1 (micro over entity-labelled words, O ignored: the paper's score) and
    entity-level F1 (exact IOB2 spans, seqeval's definition). Words cut by truncation count as O."""
    from seqeval.metrics import f1_score

    predicted = predict(model, tokenizer, sentences)
    gold = [s.tags for s in sentences]
    predicted = [p + ["O"] * (len(g) - len(p)) for p, g in zip(predicted, gold)]
    pairs = [(p, g) for ps, gs in zip(predicted, gold) for p, g in zip(ps, gs)]
    true_positive = sum(p == g != "O" for p, g in pairs)
    n_predicted, n_gold = sum(p != "O" for p, _ in pairs), sum(g != "O" for _, g in pairs)
    precision = true_positive / n_predicted if n_predicted else 0.0
    recall = true_positive / n_gold if n_gold else 0.0
    token = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"token_f1": token, "entity_f1": float(f1_score(gold, predicted))}


def token_f1(model, tokenizer, sentences: list[Sentence]) -> float:
    return scores(model, tokenizer, sentences)["token_f1"]
