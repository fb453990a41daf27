"""Shared tokens across spelling schemes: byte-level BPE (GPT-2, llama-3, SmolLM2: a leading space
is "Ġ", a newline "Ċ") against SentencePiece (llama-2, gemma: a leading space is "▁", a byte
without a piece is "<0x0A>"). The probe matches the entries that stand for the same text; the
known answers come from tokenizers built offline with the ``tokenizers`` library and from that
library's own decoders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer

from adapter_convert.compatibility import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    Vocab,
    read_vocab,
    shared_token_pairs,
    texts_to_ids,
    token_text,
    tokenizer_json_scheme,
    vocab_from_tokenizer_json,
    vocab_scheme,
)
from helpers import probe

CORPUS = [
    "hello world\nhello there, world.\n",
    "the café is naïve about the world\n\nhello again\n",
    "there is a world of hello and of there\n",
    "über straße, déjà vu: hello café\n",
] * 20
BYTES = [f"<0x{b:02X}>" for b in range(256)]
# the decoder llama-2 and gemma ship: the oracle for what a SentencePiece entry stands for
SENTENCEPIECE_DECODER = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])


def byte_level_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


def sentencepiece_tokenizer(*, gemma_style: bool = False) -> Tokenizer:
    """A Metaspace BPE with byte fallback (the 256 ``<0xNN>`` pieces), or, ``gemma_style``, the same
    vocabulary behind gemma's pipeline (no Metaspace step: a normalizer and a decoder that replace "▁")."""
    tokenizer = Tokenizer(BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.train_from_iterator(CORPUS, BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for piece in BYTES:
        vocab.setdefault(piece, len(vocab))
    data["model"]["byte_fallback"] = True
    if gemma_style:
        data["normalizer"] = json.loads(normalizers.Replace(" ", "\u2581").__getstate__())
        data["pre_tokenizer"] = None
        data["decoder"] = json.loads(SENTENCEPIECE_DECODER.__getstate__())
    return Tokenizer.from_str(json.dumps(data))


def vocab_of(tokenizer: Tokenizer) -> Vocab:
    return vocab_from_tokenizer_json(json.loads(tokenizer.to_str()))


def texts(tokenizer: Tokenizer, decoder) -> dict[str, set[str]]:
    """Text -> the non-special entries standing for it, by the library's own decoder."""
    special = {added.content for added in tokenizer.get_added_tokens_decoder().values() if added.special}
    out: dict[str, set[str]] = {}
    for token in tokenizer.get_vocab():
        if token not in special:
            out.setdefault(decoder.decode([token]), set()).add(token)
    return out


@pytest.fixture(scope="module")
def pair():
    return byte_level_tokenizer(), sentencepiece_tokenizer()


# ---- what an entry stands for ---------------------------------------------------------------------------
def test_token_text_known_answers():
    assert token_text("\u0120hello", BYTE_LEVEL) == token_text("\u2581hello", SENTENCEPIECE) == " hello"
    assert token_text("\u010a", BYTE_LEVEL) == token_text("<0x0A>", SENTENCEPIECE) == "\n"
    assert token_text("\u0120\u0120", BYTE_LEVEL) == token_text("\u2581\u2581", SENTENCEPIECE) == "  "
    assert token_text("caf\u00c3\u00a9", BYTE_LEVEL) == token_text("café", SENTENCEPIECE) == "café"  # é is bytes C3 A9
    assert token_text("\u00c3", BYTE_LEVEL) == token_text("<0xC3>", SENTENCEPIECE) == b"\xc3"  # one byte of a character
    assert token_text("<0x41>", SENTENCEPIECE) == "A"
    assert token_text("hello", BYTE_LEVEL) == token_text("hello", SENTENCEPIECE) == token_text("hello", None) == "hello"
    assert token_text("a b", BYTE_LEVEL) == "a b"  # a space is outside the byte table: not byte-level, as written
    assert token_text("\u0120hello", None) == "\u0120hello" and token_text("<0x0A>", None) == "<0x0A>"


def test_token_text_agrees_with_the_libraries_decoders(pair):
    byte_level, sentencepiece = pair
    for token in byte_level.get_vocab():
        text = token_text(token, BYTE_LEVEL)
        lossy = text if isinstance(text, str) else text.decode("utf-8", "replace")  # the library's rendering of stray bytes
        assert lossy == decoders.ByteLevel().decode([token]) or token == "<|endoftext|>"
    for token in sentencepiece.get_vocab():
        text = token_text(token, SENTENCEPIECE)
        lossy = text if isinstance(text, str) else text.decode("utf-8", "replace")
        assert lossy == SENTENCEPIECE_DECODER.decode([token]) or token == "<unk>"


# ---- which scheme a tokenizer uses ----------------------------------------------------------------------
def test_scheme_is_read_off_the_tokenizer(pair):
    byte_level, sentencepiece = pair
    assert tokenizer_json_scheme(json.loads(byte_level.to_str())) == BYTE_LEVEL
    assert tokenizer_json_scheme(json.loads(sentencepiece.to_str())) == SENTENCEPIECE  # Metaspace
    assert tokenizer_json_scheme(json.loads(sentencepiece_tokenizer(gemma_style=True).to_str())) == SENTENCEPIECE  # Replace "▁"
    assert tokenizer_json_scheme(json.loads(Tokenizer(WordLevel({"a": 0}, unk_token="a")).to_str())) is None
    assert vocab_of(byte_level).scheme == BYTE_LEVEL and vocab_of(sentencepiece).scheme == SENTENCEPIECE
    # without a pipeline to say so (vocab.json, a sentencepiece model): from the strings themselves
    assert vocab_scheme(byte_level.get_vocab()) == BYTE_LEVEL
    assert vocab_scheme(sentencepiece.get_vocab()) == SENTENCEPIECE
    assert vocab_scheme({"[PAD]": 0, "hello": 1, "##llo": 2, "world": 3}) is None


def test_read_vocab_of_a_bare_vocab_json(tmp_path, pair):
    (tmp_path / "vocab.json").write_text(json.dumps(pair[0].get_vocab()), encoding="utf-8")
    vocab = read_vocab(tmp_path)
    assert vocab.scheme == BYTE_LEVEL and vocab.tokens == pair[0].get_vocab()


# ---- shared tokens ----------------------------------------------------------------------------------------
def test_shared_across_schemes_by_hand():
    byte_level = Vocab({"\u0120hello": 0, "hello": 1, "\u010a": 2, "\u00c3\u00a9": 3, "\u0120world": 4, "<|endoftext|>": 5,
                        "\u00c3": 6, "\u0120\u0120": 7}, frozenset({5}), BYTE_LEVEL, frozenset({5}))
    sentencepiece = Vocab({"<unk>": 0, "\u2581hello": 1, "hello": 2, "<0x0A>": 3, "\n": 4, "é": 5, "\u2581there": 6, "<0xC3>": 7,
                           "\u2581\u2581": 8}, frozenset({0}), SENTENCEPIECE)
    pairs, how = shared_token_pairs(byte_level, sentencepiece, 8, 9)
    # "\n" is spelled both "\n" and "<0x0A>": the exact spelling wins
    assert pairs == [(0, 1), (1, 2), (2, 4), (3, 5), (6, 7), (7, 8)]
    assert how == "shared text (byte-level vs sentencepiece)"
    back, _ = shared_token_pairs(sentencepiece, byte_level, 9, 8)
    assert sorted((t, s) for s, t in back) == pairs
    assert texts_to_ids(sentencepiece, 9)["\n"] == 4 and texts_to_ids(sentencepiece, 4)["\n"] == 3  # id 4 past the matrix
    # llama-2 and gemma put the byte pieces first: "▁" still wins over "<0x20>"
    assert texts_to_ids(Vocab({"<0x20>": 3, "\u2581": 300}, scheme=SENTENCEPIECE), 400) == {" ": 300}


def test_shared_count_across_schemes_is_the_real_overlap(pair):
    byte_level, sentencepiece = pair
    ours, theirs = texts(byte_level, decoders.ByteLevel()), texts(sentencepiece, SENTENCEPIECE_DECODER)
    same_text = {text for text in ours.keys() & theirs.keys() if "\ufffd" not in text}
    # single bytes of a multi-byte character (0x80..0xFF) stand for no text on their own: both sides
    # have all 128 (the byte-level alphabet, the byte-fallback pieces), and they match byte for byte
    assert sum(len(t) == 1 for t in ours["\ufffd"]) == 128 and sum(t in BYTES for t in theirs["\ufffd"]) == 128
    assert {" hello", "\n", " café", " naïve", " world", "hello"} <= same_text
    source, target = vocab_of(byte_level), vocab_of(sentencepiece)
    pairs, how = shared_token_pairs(source, target, byte_level.get_vocab_size(), sentencepiece.get_vocab_size())
    assert len(pairs) == len(same_text) + 128 and how == "shared text (byte-level vs sentencepiece)"
    assert len({s for s, _ in pairs}) == len({t for _, t in pairs}) == len(pairs)  # one id per side
    source_tokens = {i: t for t, i in source.tokens.items()}
    target_tokens = {i: t for t, i in target.tokens.items()}
    for s, t in pairs:
        a = decoders.ByteLevel().decode([source_tokens[s]])
        b = SENTENCEPIECE_DECODER.decode([target_tokens[t]])
        assert a == b
        if b in theirs[b]:  # "\n" and "<0x0A>", "a" and "<0x61>": the piece spelled as the text
            assert target_tokens[t] == b
        elif len(theirs[b]) > 1 and b != "\ufffd":  # "▁" and "<0x20>": the piece, not the byte-fallback token
            assert target_tokens[t] not in BYTES
    # the gemma-style pipeline spells its vocabulary the same way: the same pairs
    gemma_style = vocab_of(sentencepiece_tokenizer(gemma_style=True))
    assert shared_token_pairs(source, gemma_style, byte_level.get_vocab_size(), sentencepiece.get_vocab_size())[0] == pairs


def test_one_scheme_still_pairs_exact_strings(pair):
    byte_level, sentencepiece = pair
    for tokenizer, other in ((byte_level, Tokenizer(BPE())), (sentencepiece, Tokenizer(BPE(unk_token="<unk>")))):
        data = json.loads(tokenizer.to_str())
        vocab = vocab_of(tokenizer)
        # another tokenizer of the same scheme: the first half of the entries, under other ids
        kept = sorted(vocab.tokens.items(), key=lambda item: item[1])[: len(vocab.tokens) // 2]
        data["model"]["vocab"] = {token: len(kept) - 1 - i for i, (token, _) in enumerate(kept)}
        data["model"]["merges"], data["added_tokens"] = [], []
        shrunk = vocab_from_tokenizer_json(data)
        assert shrunk.scheme == vocab.scheme
        pairs, how = shared_token_pairs(vocab, shrunk, 10_000, 10_000)
        expected = sorted((i, shrunk.tokens[t]) for t, i in vocab.tokens.items() if t in shrunk.tokens and i not in vocab.special)
        assert how == "shared strings" and pairs == expected
    # both spellings of "\n" in both: both pairs, as before
    sp = Vocab({"<0x0A>": 0, "\n": 1, "\u2581a": 2}, scheme=SENTENCEPIECE)
    assert shared_token_pairs(sp, Vocab({"\n": 5, "<0x0A>": 6, "\u2581a": 7}, scheme=SENTENCEPIECE), 3, 8) == ([(0, 6), (1, 5), (2, 7)], "shared strings")


# ---- the probe --------------------------------------------------------------------------------------------
def _folder(folder: Path, tokenizer: Tokenizer, embedding: torch.Tensor) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"model.embed_tokens.weight": embedding.contiguous()}, folder / "model.safetensors")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_probe_pairs_rows_across_schemes(tmp_path, pair):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_level, sentencepiece = pair
    g = torch.Generator().manual_seed(0)
    x = torch.randn(byte_level.get_vocab_size(), 32, generator=g) @ torch.diag(torch.linspace(1, 0.1, 32))
    related = torch.randn(sentencepiece.get_vocab_size(), 32, generator=g)
    ours = texts(byte_level, decoders.ByteLevel())
    table = bytes_to_unicode()
    for token, t in sentencepiece.get_vocab().items():
        text = SENTENCEPIECE_DECODER.decode([token])
        same = table[int(token[3:5], 16)] if token in BYTES and text == "\ufffd" else next(iter(ours.get(text, ())), None)
        if same is not None and token != "<unk>":
            related[t] = x[byte_level.token_to_id(same)]
    source = _folder(tmp_path / "smol", byte_level, x)
    result = probe(source, _folder(tmp_path / "gem", sentencepiece, related))
    expected = len(shared_token_pairs(vocab_of(byte_level), vocab_of(sentencepiece), 10_000, 10_000)[0])
    assert result.shared_tokens == expected > 200 and result.sampled_rows >= 32
    assert result.token_match == "shared text (byte-level vs sentencepiece)"
    assert result.source["tokenizer"] == BYTE_LEVEL and result.target["tokenizer"] == SENTENCEPIECE
    assert result.verdict == "compatible" and result.identity_cosine == pytest.approx(1.0), result
    unrelated = probe(source, _folder(tmp_path / "other", sentencepiece, torch.randn(related.shape, generator=g)))
    assert unrelated.verdict == "incompatible" and abs(unrelated.identity_cosine) < 0.2, unrelated


REAL = Path(os.environ.get("ADAPTER_CONVERT_REAL_MODELS", Path.home() / ".cache" / "adapter-convert" / "real-models"))


@pytest.mark.real_models  # only tokenizer.json files are read (a few seconds): runs wherever the cache is
@pytest.mark.skipif(not all((REAL / name / "tokenizer.json").is_file() for name in ("smollm2", "gemma3")),
                    reason="no real-models cache (benchmarks/real_models.py)")
def test_real_smollm2_and_gemma3_share_thousands_of_tokens():
    smol, gemma = read_vocab(REAL / "smollm2"), read_vocab(REAL / "gemma3")
    assert smol.scheme == BYTE_LEVEL and gemma.scheme == SENTENCEPIECE
    pairs, _ = shared_token_pairs(smol, gemma, 1 << 30, 1 << 30)
    assert len(pairs) > 5000
