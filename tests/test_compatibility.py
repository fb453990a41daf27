"""The embedding compatibility probe: known answers of its pure functions, verdicts on real
MiniLM pairs, the local reader's laziness, and byte-range reads against the local Hub server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import probe
from huggingface_hub import constants, snapshot_download
from safetensors import safe_open
from safetensors.torch import save, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from adapter_convert import compatibility as c
from adapter_convert.architectures import get_architecture
from adapter_convert.compatibility import (
    Vocab,
    decide,
    embedding_key,
    identity_cosine,
    linear_fit,
    read_local_rows,
    row_ranges,
    select_rows,
    shared_token_pairs,
    vocab_from_tokenizer_json,
)
from adapter_convert.errors import HubUnreachableError
from adapter_convert.hub.ranges import parse_safetensors_header

ROOT = Path(__file__).resolve().parents[1]
MINILM_KEY = "embeddings.word_embeddings.weight"


def anisotropic(n: int, d: int, seed: int) -> torch.Tensor:
    """Rows with a realistic spectrum (embedding matrices are far from isotropic)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ (torch.randn(d, d, generator=g) * torch.linspace(1, 0.05, d)) * 0.1


def embedding_folder(folder: Path, embedding: torch.Tensor, *, model_type: str = "llama", key: str = "model.embed_tokens.weight",
                     tokenizer: dict[str, int] | None = None, tokenizer_from: Path | None = None) -> Path:
    """A model folder holding only config.json, the embedding (and a tokenizer): all the probe reads."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    save_file({key: embedding.contiguous()}, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        Tokenizer(WordLevel(tokenizer, unk_token=next(iter(tokenizer)))).save(str(folder / "tokenizer.json"))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            shutil.copy(tokenizer_from / name, folder / name)
    return folder


# ---- pure functions ---------------------------------------------------------------------------------
def test_embedding_key_from_architecture_data():
    llama, bert, gpt2 = get_architecture("llama"), get_architecture("bert"), get_architecture("gpt2")
    assert embedding_key(llama, ["model.embed_tokens.weight", "lm_head.weight"]) == "model.embed_tokens.weight"
    assert embedding_key(llama, ["embed_tokens.weight", "layers.0.mlp.up_proj.weight"]) == "embed_tokens.weight"
    assert embedding_key(llama, ["language_model.model.embed_tokens.weight"]) == "language_model.model.embed_tokens.weight"
    assert embedding_key(llama, ["a.embed_tokens.weight", "b.embed_tokens.weight"]) is None  # ambiguous
    assert embedding_key(bert, ["bert.embeddings.word_embeddings.weight"]) == "bert.embeddings.word_embeddings.weight"
    assert embedding_key(bert, [MINILM_KEY, "embeddings.position_embeddings.weight"]) == MINILM_KEY
    assert embedding_key(get_architecture("distilbert"), ["distilbert.embeddings.word_embeddings.weight"])
    assert embedding_key(gpt2, ["transformer.wte.weight", "transformer.wpe.weight"]) == "transformer.wte.weight"
    assert embedding_key(gpt2, ["wte.weight"]) == "wte.weight"
    assert embedding_key(llama, ["model.layers.0.mlp.up_proj.weight"]) is None


def test_vocab_from_tokenizer_json_reads_every_model_kind():
    wordpiece = {"model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "a": 1, "b": 2}},
                 "added_tokens": [{"id": 0, "content": "[PAD]", "special": True}, {"id": 3, "content": "<x>", "special": False}]}
    vocab = vocab_from_tokenizer_json(wordpiece)
    assert vocab.tokens == {"[PAD]": 0, "a": 1, "b": 2, "<x>": 3} and vocab.special == {0}
    unigram = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["▁the", -1.0], ["s", -2.0]]}}
    assert vocab_from_tokenizer_json(unigram).tokens == {"<unk>": 0, "▁the": 1, "s": 2}


def test_shared_tokens_same_ids_shared_strings_or_ids():
    same = Vocab({"[PAD]": 0, "[unused0]": 1, "a": 2, "b": 3, "c": 4}, frozenset({0}))
    pairs, how = shared_token_pairs(same, Vocab(dict(same.tokens), same.special), 5, 4)
    assert how == "same tokenizer" and pairs == [(2, 2), (3, 3)]  # no special, no unused, no id past a matrix
    other = Vocab({"c": 0, "x": 1, "a": 7, "b": 9})
    pairs, how = shared_token_pairs(same, other, 5, 10)
    assert how == "shared strings" and pairs == [(2, 7), (3, 9), (4, 0)]
    assert shared_token_pairs(None, other, 3, 5) == ([(0, 0), (1, 1), (2, 2)], "ids (no tokenizer)")


def test_select_rows_takes_few_contiguous_blocks_spread_over_the_vocabulary():
    pairs = [(i, i) for i in range(100, 30_000)]
    chosen = select_rows(pairs, max_rows=2048, blocks=8)
    assert len(chosen) == 2048 and len(row_ranges(s for s, _ in chosen)) == 8
    assert chosen[0][0] == 100 and chosen[-1][0] > 29_000  # from the first block to the last: spread out
    shifted = [(i, i + 5000) for i in range(1000)]  # another tokenizer's ids, offset
    assert select_rows(shifted, max_rows=2048) == shifted
    scattered = [(i, 7 * i % 1009) for i in range(0, 1000, 3)]  # no two consecutive: every pair is its own range
    assert len(select_rows(scattered, max_rows=2048, max_ranges=64)) == 64
    assert select_rows([], max_rows=10) == []


def test_row_ranges_merge_small_gaps():
    assert row_ranges([5, 1, 2, 3, 9]) == [(1, 4), (5, 6), (9, 10)]
    assert row_ranges([5, 1, 2, 3, 9], max_gap=1) == [(1, 6), (9, 10)]


def test_identity_cosine_known_answers():
    x = anisotropic(512, 64, seed=0)
    assert identity_cosine(x, x) == pytest.approx(1.0)
    assert identity_cosine(x, -3 * x) == pytest.approx(-1.0)
    assert identity_cosine(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])) == pytest.approx(0.5)
    padded = torch.cat([torch.zeros(1, 64), x])  # a padding row, zero in both: left out
    assert identity_cosine(padded, padded) == pytest.approx(1.0)
    permuted = x[:, torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    assert abs(identity_cosine(x, permuted)) < 0.1
    with pytest.raises(ValueError):
        identity_cosine(x, x[:, :32])


def test_linear_fit_known_answers():
    x = anisotropic(1024, 64, seed=0)
    g = torch.Generator().manual_seed(1)
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=g)).Q
    assert linear_fit(x, x) == pytest.approx(1.0, abs=1e-4)
    assert linear_fit(x, x[:, torch.randperm(64, generator=g)]) == pytest.approx(1.0, abs=1e-4)  # a permuted copy
    assert linear_fit(x, 5 * x @ rotation) == pytest.approx(1.0, abs=1e-4)  # any basis
    assert linear_fit(x, x[:, :40]) > 0.8  # across widths: a narrower cut
    assert linear_fit(x[:, :40], x) > 0.6
    assert abs(linear_fit(x, anisotropic(1024, 64, seed=2))) < 0.1  # unrelated
    assert abs(linear_fit(x, anisotropic(1024, 48, seed=3))) < 0.1
    wide = anisotropic(128, 512, seed=4)  # fewer rows than width: fitted in the top principal directions
    assert linear_fit(wide, wide[:, torch.randperm(512, generator=g)]) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        linear_fit(x[:4], x[:4])


def test_decide_thresholds():
    assert decide(0.9, 0.9, sampled=500, widths=(8, 8))[0] == "compatible"
    assert decide(c.COMPATIBLE_MIN_COSINE, None, sampled=500, widths=(8, 8))[0] == "compatible"
    verdict, reason = decide(0.01, 0.99, sampled=500, widths=(8, 8))  # a permuted copy
    assert verdict == "incompatible" and "another basis" in reason
    assert decide(0.01, 0.0, sampled=500, widths=(8, 8))[0] == "incompatible"
    assert decide(0.35, 0.4, sampled=500, widths=(8, 8))[0] == "unknown"  # between the thresholds
    assert decide(None, 0.95, sampled=500, widths=(8, 6)) == ("incompatible", "embedding widths differ (8 vs 6): no direct copy; related up to a linear map")
    assert decide(0.99, 0.99, sampled=c.MIN_SHARED_TOKENS - 1, widths=(8, 8))[0] == "unknown"


def test_parse_safetensors_header():
    data = save({"b": torch.zeros(3, 2, dtype=torch.bfloat16), "a": torch.arange(4, dtype=torch.float32)})
    length, tensors = parse_safetensors_header(data)
    assert tensors["b"].dtype == "BF16" and tensors["b"].shape == (3, 2) and tensors["b"].row_bytes == 4
    start = tensors["a"].start
    assert torch.frombuffer(bytearray(data[start:start + 16]), dtype=torch.float32).tolist() == [0, 1, 2, 3]
    assert parse_safetensors_header(data[:20]) == (length, None)  # read 8 + length bytes, then parse


# ---- readers ----------------------------------------------------------------------------------------
def minilm() -> Path:
    from adapter_convert.demo.minilm import minilm_dir

    return minilm_dir()


def test_local_reader_reads_only_the_rows_asked_for():
    path = minilm() / "model.safetensors"
    ids = [5000, 17, 5001, 29_000, 18, 5002]
    rows, nbytes = read_local_rows(path, MINILM_KEY, ids)
    with safe_open(str(path), framework="pt") as handle:
        full = handle.get_tensor(MINILM_KEY)
    torch.testing.assert_close(rows, full[ids])
    gap = c.MERGE_GAP_BYTES // (384 * 4)  # rows closer than this are read in one range
    assert row_ranges(ids, max_gap=gap) == [(17, 19), (5000, 5003), (29_000, 29_001)]
    assert nbytes == 6 * 384 * 4 < path.stat().st_size / 1000


@pytest.fixture(scope="module")
def minilm_pairs(tmp_path_factory) -> dict[str, Path]:
    """The real teacher (the package's folder, a bare BertModel), a real student cut from its layers
    (demo code, a distilbert), a real permuted copy, and embedding-only folders for the rest."""
    from minilm_students import build_permuted_student

    from adapter_convert.demo.minilm import build_student

    root = tmp_path_factory.mktemp("minilm_pairs")
    teacher = minilm()
    with safe_open(str(teacher / "model.safetensors"), framework="pt") as handle:
        embedding = handle.get_tensor(MINILM_KEY)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(embedding.shape, generator=g) * embedding.norm(dim=1, keepdim=True) / 384**0.5
    keep = torch.randperm(384, generator=g)[:256]
    build_permuted_student(root / "permuted")
    return {
        "teacher": teacher,
        "student": build_student(root / "student", model_type="distilbert"),
        "permuted": root / "permuted",
        "finetuned": embedding_folder(root / "finetuned", embedding + 0.1 * noise, model_type="bert", key=MINILM_KEY, tokenizer_from=teacher),
        "narrow": embedding_folder(root / "narrow", embedding[:, keep], model_type="bert", key=MINILM_KEY, tokenizer_from=teacher),
        "independent": embedding_folder(root / "independent", torch.randn(embedding.shape, generator=g) * 0.02, model_type="bert",
                                        key=MINILM_KEY, tokenizer_from=teacher),
        "shuffled": embedding_folder(root / "shuffled", embedding[torch.randperm(len(embedding), generator=g)], model_type="bert",
                                     key=MINILM_KEY, tokenizer_from=teacher),
    }


@pytest.mark.parametrize("other, verdict", [
    ("student", "compatible"), ("finetuned", "compatible"), ("permuted", "incompatible"), ("narrow", "incompatible"),
    ("independent", "incompatible"), ("shuffled", "incompatible"),
])
def test_minilm_verdicts(minilm_pairs, other, verdict):
    result = probe(minilm_pairs["teacher"], minilm_pairs[other])
    assert result.verdict == verdict, result
    assert result.token_match == "same tokenizer" and result.sampled_rows == c.DEFAULT_MAX_ROWS
    assert result.shared_tokens == 30522 - 999  # less [PAD], [UNK], [CLS], [SEP], [MASK] and the [unused] rows
    assert result.source["embedding"] == MINILM_KEY and result.source["read_from"] == "disk"
    assert result.bytes_read == 2 * result.sampled_rows * result.target["shape"][1] * 4 or other == "narrow"
    if other in ("student", "finetuned"):
        assert result.identity_cosine > 0.99 and result.linear_fit > 0.99
    if other in ("permuted", "narrow"):  # the same space in another basis: align, do not copy
        assert result.linear_fit > 0.9 and (result.identity_cosine is None or abs(result.identity_cosine) < 0.05)
    if other in ("independent", "shuffled"):
        assert abs(result.identity_cosine) < 0.05 and abs(result.linear_fit) < 0.05


def test_different_tokenizers_pair_tokens_by_string(tmp_path):
    x = anisotropic(300, 32, seed=0)
    source_vocab = {f"w{i}": i for i in range(300)}
    # the target knows w100..w299 under other ids (reversed), plus tokens of its own
    target_vocab = {"<unk>": 0} | {f"w{i}": 300 - i for i in range(100, 300)} | {f"new{i}": 201 + i for i in range(50)}
    target = anisotropic(251, 32, seed=1)
    for token, t in target_vocab.items():
        if token.startswith("w"):
            target[t] = x[int(token[1:])]
    source = embedding_folder(tmp_path / "s", x, tokenizer=source_vocab)
    result = probe(source, embedding_folder(tmp_path / "t", target, model_type="mistral", tokenizer=target_vocab))
    assert result.token_match == "shared strings" and result.shared_tokens == 200
    assert result.verdict == "compatible" and result.identity_cosine == pytest.approx(1.0)
    unrelated = probe(source, embedding_folder(tmp_path / "u", anisotropic(251, 32, seed=2), tokenizer=target_vocab))
    assert unrelated.verdict == "incompatible"


def test_unknown_without_weights_or_shared_tokens(tmp_path):
    x = anisotropic(300, 32, seed=0)
    source = embedding_folder(tmp_path / "s", x, tokenizer={f"w{i}": i for i in range(300)})
    few = embedding_folder(tmp_path / "few", x[:20], tokenizer={f"w{i}": i for i in range(20)})
    result = probe(source, few)
    assert result.verdict == "unknown" and "shared tokens" in result.reason
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = probe(source, no_weights)
    assert result.verdict == "unknown" and "model.safetensors" in result.reason
    (no_weights / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")  # corrupt
    result = probe(source, no_weights)
    assert result.verdict == "unknown" and "cannot read the weights" in result.reason


# ---- the Hub: byte ranges only -----------------------------------------------------------------------
def weight_bytes_served(hub) -> dict[str, int]:
    """Bytes of safetensors bodies the server sent since ``hub.served`` was emptied, per file name."""
    served: dict[str, int] = {}
    for path, n in getattr(hub, "served", []):
        served[path] = served.get(path, 0) + n
    return {p: n for p, n in served.items() if p.endswith(".safetensors")}


def tiny_llama(folder: Path, *, seed: int, vocab: int = 8192, hidden: int = 64, max_shard_size: str | None = None,
               from_model=None, noise: float = 0.0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    if from_model is not None:
        model.load_state_dict(from_model.state_dict())
        with torch.no_grad():
            model.model.embed_tokens.weight.add_(noise * torch.randn_like(model.model.embed_tokens.weight) * 0.02)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return model


def test_hub_probe_reads_byte_ranges_of_a_single_file(hub, tmp_path):
    base = tiny_llama(tmp_path / "base", seed=0)
    tiny_llama(tmp_path / "finetuned", seed=1, from_model=base, noise=0.1)
    tiny_llama(tmp_path / "other", seed=2)
    for name in ("base", "finetuned", "other"):
        hub.upload_folder(f"alice/{name}", tmp_path / name)
    size = (tmp_path / "base" / "model.safetensors").stat().st_size
    hub.served = []
    result = probe("alice/base", "alice/finetuned", max_rows=256)
    assert result.verdict == "compatible" and result.identity_cosine > 0.95, result
    assert result.source["read_from"] == "hub" and result.source["pinned"] == f"alice/base@{hub.repos[('model', 'alice/base')].refs['main']}"
    served = weight_bytes_served(hub)
    assert set(served) == {"model.safetensors"}
    assert result.bytes_read == served["model.safetensors"] < 2 * size / 10  # both models, a tenth of one file
    assert not [p for m, p in hub.requests if m == "HEAD" and p.endswith(".safetensors")]  # not downloaded, read by range
    assert probe("alice/base", "alice/other", max_rows=256).verdict == "incompatible"


def test_hub_probe_reads_only_the_embedding_shard(hub, tmp_path):
    base = tiny_llama(tmp_path / "base", seed=0, max_shard_size="300KB")
    tiny_llama(tmp_path / "finetuned", seed=1, from_model=base, noise=0.1, max_shard_size="300KB")
    index = json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2
    hub.upload_folder("alice/base", tmp_path / "base")
    hub.upload_folder("alice/finetuned", tmp_path / "finetuned")
    total = sum((tmp_path / "base" / shard).stat().st_size for shard in shards)
    hub.served = []
    result = probe("alice/base", "alice/finetuned", max_rows=256)
    assert result.verdict == "compatible", result
    embedding_shard = index["weight_map"]["model.embed_tokens.weight"]
    assert result.source["file"] == embedding_shard
    served = weight_bytes_served(hub)
    assert set(served) == {embedding_shard}  # no other shard touched, not even its header
    assert result.bytes_read == served[embedding_shard] < 2 * total / 10


def test_hub_probe_offline(hub, tmp_path, monkeypatch):
    base = tiny_llama(tmp_path / "base", seed=0)
    tiny_llama(tmp_path / "finetuned", seed=1, from_model=base, noise=0.1)
    hub.upload_folder("alice/base", tmp_path / "base")
    hub.upload_folder("alice/finetuned", tmp_path / "finetuned")
    probe("alice/base", "alice/finetuned", max_rows=256)  # caches configs, not weights
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = probe("alice/base", "alice/finetuned", max_rows=256)
    assert result.verdict == "unknown" and "offline" in result.reason.lower(), result
    with pytest.raises(HubUnreachableError):  # a base never fetched: resolving it fails, before any probe
        probe("alice/base", "alice/never-fetched")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for repo in ("alice/base", "alice/finetuned"):
        snapshot_download(repo)  # now the weights are in the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = probe("alice/base", "alice/finetuned", max_rows=256)
    assert result.verdict == "compatible" and result.source["read_from"] == "disk"


@pytest.mark.bench_smoke
@pytest.mark.skipif(not os.environ.get("RUN_BENCHMARK_SMOKE"), reason="opt-in: RUN_BENCHMARK_SMOKE=1 pytest -m bench_smoke")
def test_benchmark_runs_tiny(tmp_path):
    results = tmp_path / "probe.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compatibility_probe.py"), "--tiny", "--repeats", "1",
                    "--results", str(results)], check=True, capture_output=True, timeout=300)
    text = results.read_text()
    assert "| tiny llama vs independently initialised mistral |" in text and "snapshot_download of both repos" in text
