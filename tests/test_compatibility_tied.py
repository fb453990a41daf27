"""The probe reads a tied embedding saved once under the output name (GGUF conversions, some
exports): transformers loads both embeddings from ``lm_head.weight``, so the probe must too."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from helpers import probe



def _folder(path, embedding, *, key, tied):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": tied}))
    save_file({key: embedding.contiguous()}, path / "model.safetensors", metadata={"format": "pt"})
    vocab = {f"w{i}": i for i in range(embedding.shape[0])}
    Tokenizer(WordLevel(vocab, unk_token="w0")).save(str(path / "tokenizer.json"))
    return path


def test_tied_embedding_under_the_output_name_is_read(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(200, 16) * torch.linspace(0.2, 3.0, 16)
    source = _folder(tmp_path / "s", x, key="model.embed_tokens.weight", tied=True)
    tied_only = _folder(tmp_path / "t", x, key="lm_head.weight", tied=True)
    result = probe(source, tied_only)
    assert result.verdict == "compatible"
    assert result.target["embedding"] == "lm_head.weight"
    # untied, the output matrix is another matrix: never read in place of the input embedding
    untied = _folder(tmp_path / "u", x, key="lm_head.weight", tied=False)
    assert probe(source, untied).verdict == "unknown"
