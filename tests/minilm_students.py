"""Test and benchmark fixtures built from the installed all-MiniLM-L6-v2: students that are not
cut from the teacher's layers alone (a narrower one, a permuted one). Not part of the package.

Benchmarks import this module too, after putting ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

from adapter_convert.demo.minilm import label_kwargs, minilm_dir


def build_narrow_student(folder: Path, *, hidden: int = 256, layers: tuple[int, ...] = (0, 2, 4), seed: int = 0) -> Path:
    """A narrower student: MiniLM cut to ``hidden`` dimensions (and as many 32-wide heads and
    4 x hidden intermediate units), keeping ``layers``. The kept dimensions are a seeded random
    subset, so the student's hidden space is a scrambled slice of the teacher's."""
    source = minilm_dir()
    torch.manual_seed(0)
    teacher = BertForTokenClassification.from_pretrained(source, **label_kwargs())
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
    model = BertForTokenClassification.from_pretrained(source, **label_kwargs())
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


def narrow_pair(work: Path):
    """The MiniLM teacher and its narrow student as bare models (built into ``work`` once), and the
    tokenizer they share: the pair the alignment benchmarks read activations from."""
    from transformers import AutoModel

    from adapter_convert.demo.minilm import build_teacher

    teacher_dir, student_dir = work / "teacher", work / "student-narrow-256"
    if not teacher_dir.is_dir():
        build_teacher(teacher_dir)
    if not student_dir.is_dir():
        build_narrow_student(student_dir)
    teacher, student = AutoModel.from_pretrained(teacher_dir).eval(), AutoModel.from_pretrained(student_dir).eval()
    return teacher, student, AutoTokenizer.from_pretrained(teacher_dir)
