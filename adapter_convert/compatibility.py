"""Do two base models share a hidden space? Evidence from their input token embeddings.

The cheapest evidence is the input embedding matrix: a fine-tune, an instruct variant or a
student initialised from its teacher keeps the rows of the tokens both models know close to
each other, and independently trained models do not. So the probe reads a bounded sample of the
rows of shared tokens from both checkpoints (a few MB: local files lazily, Hub files by byte
range, never the whole checkpoint) and scores them:

* ``identity_cosine``: the mean cosine of row i of the source with row i of the target. High
  means the same coordinates: adapter tensors may be copied as they are.
* ``linear_fit``: a ridge map fitted on half of the rows, scored (mean cosine) on the other half.
  High with a low identity cosine means the same space in another basis (a permuted or rotated
  copy, or a narrower cut): alignment, not a direct copy. It works across widths.

Measurements behind the thresholds (``benchmarks/compatibility_probe.py``, 2048 rows for MiniLM,
all 128 for the tiny models; the table and its machine are in
``docs/benchmarks/compatibility_probe.md``):

=========================================================  ========  ==========  ============
pair (all-MiniLM-L6-v2 as the teacher, width 384)          identity  linear fit  verdict
=========================================================  ========  ==========  ============
student cut from the teacher's layers 0, 2, 4               1.000     1.000      compatible
teacher + noise of 0.1 x each row's norm (fine-tune-like)   0.995     0.991      compatible
teacher + noise of 0.5 x each row's norm                    0.894     0.859      compatible
teacher + noise of 1.0 x each row's norm                    0.707     0.622      compatible
teacher + noise of 2.0 x each row's norm                    0.447     0.304      unknown
teacher with hidden units permuted                         -0.003     1.000      incompatible
narrower student (256 of 384 units kept, scrambled)         -         0.921      incompatible
teacher with embedding rows shuffled                        0.025     0.003      incompatible
independently initialised model of the same config          0.001     0.001      incompatible
tiny llama (width 32) vs its student from layers 0, 2       1.000     1.000      compatible
tiny llama vs itself + noise of 0.1 x each row's norm       0.995     0.987      compatible
tiny llama vs independently initialised mistral             0.006     0.015      incompatible
tiny bert vs tiny llama of equal widths                     0.012    -0.017      incompatible
=========================================================  ========  ==========  ============

Two real MiniLM models cut from the same parent (the issue's measurement) had an identity
cosine of 0.88, against 0.02 after shuffling. Unrelated rows stay within a few hundredths of 0
(chance is about 1/sqrt(width x rows)); related ones are 0.7 or more even with noise as large
as the rows themselves (identity = 1/sqrt(1 + r^2) for noise of r x the row's norm).

What it reads: for two llama-7B-shaped sharded checkpoints on the Hub (32000 x 4096 bf16
embeddings), 512 rows of each, 8 MiB of weights in 9 range requests per model, plus their
config, tokenizer.json and index: 9 MiB in all, against 25 GiB to download both checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .architectures import Architecture, get_architecture, supported_model_types
from .errors import AdapterConvertError
from .hub import INDEX_FILE
from .hub.ranges import RemoteSafetensors, TensorEntry


class ResolvedFiles(Protocol):
    """What the probe reads of a resolved base (``sources.ResolvedSource``): its local folder and,
    from the Hub, the repo and the commit it is pinned to. A protocol, so this module needs nothing
    from the stage that resolves."""

    reference: str
    path: Path
    repo_id: str | None
    revision: str | None

    @property
    def pinned(self) -> str: ...


# ---- thresholds, from the measurements in the module docstring ---------------------------------
# Related pairs measured 0.707 and above (1.000 for students, 0.88 for the real MiniLM
# siblings, 0.707 with noise as large as the rows); unrelated ones 0.025 at most (MiniLM, width
# 384) and 0.012 (tiny models, width 32). 0.5 is far above chance and below every related pair:
# noise of 1.7 x a row's norm would be needed to fall under it.
COMPATIBLE_MIN_COSINE = 0.5
# At or below this the rows are unrelated (every unrelated and permuted pair measured 0.025 or
# less: 8 x margin); between the two thresholds the evidence is mixed and the verdict is "unknown"
# (noise of 2 x the rows measured 0.447).
INCOMPATIBLE_MAX_COSINE = 0.2
# A linear fit this good means the same space in another basis (permuted copy: 1.000, narrower
# cut: 0.921), against 0.017 or less in size for unrelated pairs.
LINEAR_RELATED_MIN = 0.5
# A linear fit this close to 1 beside an unrelated identity is a copy in another basis (a permuted
# copy measured 1.000, a narrower cut 0.92): then the correlation assignment recovers it exactly.
BASIS_CHANGE_MIN_FIT = 0.99
# Fewer shared tokens than this give no verdict.
MIN_SHARED_TOKENS = 32
THRESHOLDS = {"compatible_min_cosine": COMPATIBLE_MIN_COSINE, "incompatible_max_cosine": INCOMPATIBLE_MAX_COSINE,
              "linear_related_min": LINEAR_RELATED_MIN, "min_shared_tokens": MIN_SHARED_TOKENS}

DEFAULT_MAX_ROWS = 2048
DEFAULT_MAX_BYTES = 4 << 20  # per model: 512 rows of a 4096-wide bf16 embedding, 2048 of MiniLM's
MIN_SAMPLE_ROWS = 256  # the byte budget never cuts the sample below this
BLOCKS = 8  # a long run of shared tokens is sampled as this many contiguous blocks, spread out
MAX_RANGES = 64  # at most this many separate runs of rows per side
MERGE_GAP_BYTES = 64 << 10  # rows closer than this are read in one range, gap included

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
# rows no text ever uses: they keep their initialisation and say nothing about training
_UNUSED_TOKEN = re.compile(r"\[unused\d+\]|<unused\d+>|<\|reserved_special_token_\d+\|>|<extra_id_\d+>")

# Part of the key of cached evidence (cached_embedding_evidence): raised when the probe measures
# differently, so that evidence kept from before is measured again. 2: tokens of byte-level BPE and
# SentencePiece vocabularies are matched by the text they stand for.
CACHE_VERSION = 2

SINGLE_FILE = "model.safetensors"


# ---- which tensor, which rows ----------------------------------------------------------------------
TIED_OUTPUT_NAME = "lm_head.weight"


def embedding_key(arch: Architecture, tensor_names: Iterable[str]) -> str | None:
    """The checkpoint's input-embedding weight among ``tensor_names``, or None.

    From the architecture data: ``<backbone>.<embeddings["embed.tokens"]>.weight`` (task models)
    or the same without the backbone prefix (bare models); else the one name that ends with the
    module path (a checkpoint wrapped once more, such as ``language_model.model.embed_tokens.weight``).
    """
    path = arch.embeddings.get("embed.tokens")
    if path is None:
        return None
    names = set(tensor_names)
    for candidate in (f"{arch.backbone}.{path}.weight", f"{path}.weight"):
        if candidate in names:
            return candidate
    wrapped = [name for name in names if name.endswith(f".{path}.weight")]
    return wrapped[0] if len(wrapped) == 1 else None


BYTE_LEVEL = "byte-level"  # GPT-2 style BPE: each byte spelled as one printable character (space "Ġ", newline "Ċ")
SENTENCEPIECE = "sentencepiece"  # leading space spelled "▁", bytes without a piece as "<0x0A>"
_SPACE_MARK = "\u2581"  # ▁
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class Vocab:
    tokens: dict[str, int]  # token string -> id
    special: frozenset[int] = frozenset()  # ids left out of the sample (special and unused tokens)
    scheme: str | None = None  # how token strings spell text: BYTE_LEVEL, SENTENCEPIECE, or None (as written)
    added: frozenset[int] = frozenset()  # ids of added tokens: their strings are the text itself, in any scheme


def _nodes(node: Any) -> Iterable[dict]:
    """Every dict in a parsed tokenizer.json component (Sequence steps included)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


def tokenizer_json_scheme(data: dict) -> str | None:
    """The spelling scheme a ``tokenizer.json`` declares in its normalizer, pre-tokenizer and decoder:
    a ``ByteLevel`` step is byte-level BPE; a ``Metaspace`` step, or a ``Replace`` to or from "▁"
    (llama-2, gemma), is SentencePiece. None when it declares neither (or both)."""
    found = set()
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        for node in _nodes(data.get(part)):
            kind = node.get("type")
            if kind == "ByteLevel":
                found.add(BYTE_LEVEL)
            elif kind == "Metaspace":
                found.add(SENTENCEPIECE)
            elif kind == "Replace":
                pattern = node.get("pattern")
                pattern = pattern.get("String") if isinstance(pattern, dict) else pattern
                if _SPACE_MARK in (pattern, node.get("content")):
                    found.add(SENTENCEPIECE)
    return found.pop() if len(found) == 1 else None


def vocab_scheme(tokens: Iterable[str]) -> str | None:
    """The spelling scheme read off the token strings (a vocab.json, a sentencepiece model): at
    least 1% of them starting with "Ġ" (byte-level) or holding "▁" (SentencePiece), whichever is
    more common; None for neither (WordPiece, word-level)."""
    tokens = list(tokens)
    byte_level = sum(t.startswith("\u0120") for t in tokens)
    metaspace = sum(_SPACE_MARK in t for t in tokens)
    least = max(1, len(tokens) // 100)
    if metaspace >= least and metaspace > byte_level:
        return SENTENCEPIECE
    if byte_level >= least and byte_level > metaspace:
        return BYTE_LEVEL
    return None


def vocab_from_tokenizer_json(data: dict) -> Vocab:
    """A ``tokenizer.json`` (already parsed): the model's vocabulary plus the added tokens, and the
    spelling scheme (declared by its pipeline, else read off the vocabulary)."""
    model = data.get("model") or {}
    raw = model.get("vocab")
    if isinstance(raw, dict):  # WordPiece, BPE, WordLevel
        tokens = {str(t): int(i) for t, i in raw.items()}
    elif isinstance(raw, list):  # Unigram: [[piece, score], ...], id = position
        tokens = {str(entry[0]): i for i, entry in enumerate(raw)}
    else:
        tokens = {}
    scheme = tokenizer_json_scheme(data) or vocab_scheme(tokens)
    special, added = set(), set()
    for entry in data.get("added_tokens") or []:
        tokens[str(entry["content"])] = int(entry["id"])
        added.add(int(entry["id"]))
        if entry.get("special"):
            special.add(int(entry["id"]))
    return Vocab(tokens, frozenset(special), scheme, frozenset(added))


def read_vocab(folder: Path) -> Vocab | None:
    """The tokenizer's vocabulary in ``folder``: ``tokenizer.json``, else ``vocab.json`` or
    ``vocab.txt``, else transformers' ``get_vocab()`` (sentencepiece files); None without a tokenizer."""
    folder = Path(folder)
    try:
        if (folder / "tokenizer.json").is_file():
            return vocab_from_tokenizer_json(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
        if (folder / "vocab.json").is_file():
            raw = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            tokens = {str(t): int(i) for t, i in raw.items()}
            return Vocab(tokens, scheme=vocab_scheme(tokens))
        if (folder / "vocab.txt").is_file():
            lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
            tokens = {token: i for i, token in enumerate(lines)}
            return Vocab(tokens, scheme=vocab_scheme(tokens))
        if any(folder.glob("*.model")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
            tokens = dict(tokenizer.get_vocab())
            return Vocab(tokens, frozenset(tokenizer.all_special_ids), vocab_scheme(tokens),
                         frozenset(tokenizer.get_added_vocab().values()))
    except Exception:  # a tokenizer we cannot read is no tokenizer: the probe then pairs ids
        return None
    return None


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Character -> byte: the inverse of GPT-2's ``bytes_to_unicode`` table, from transformers."""
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        try:
            from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
        except ImportError:  # neither: the same table, as GPT-2 defines it
            def bytes_to_unicode() -> dict[int, str]:
                bs = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
                cs = bs[:] + [256 + n for n in range(256 - len(bs))]
                bs += [b for b in range(256) if b not in bs]
                return dict(zip(bs, map(chr, cs)))
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_text(token: str, scheme: str | None) -> str | bytes:
    """The text a vocabulary entry stands for: byte-level strings decoded through the inverse
    ``bytes_to_unicode`` table, SentencePiece "▁" as a space and ``<0xNN>`` as byte NN; then UTF-8
    where the bytes are valid (else the raw bytes, such as one byte of a multi-byte character).
    A string that is not of its scheme (a byte-level string with a character outside the table)
    and any string of no scheme stand for themselves."""
    if scheme == BYTE_LEVEL:
        table = _byte_decoder()
        if not token or any(char not in table for char in token):
            return token
        data = bytes(table[char] for char in token)
    elif scheme == SENTENCEPIECE:
        byte = _BYTE_TOKEN.fullmatch(token)
        if byte is None:
            return token.replace(_SPACE_MARK, " ")
        data = bytes([int(byte.group(1), 16)])
    else:
        return token
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _usable(vocab: Vocab, rows: int) -> Iterable[tuple[str, int]]:
    """(token, id) of the entries worth comparing: inside the matrix, neither special nor unused."""
    for token, i in vocab.tokens.items():
        if 0 <= i < rows and i not in vocab.special and not _UNUSED_TOKEN.fullmatch(token):
            yield token, i


def texts_to_ids(vocab: Vocab, rows: int) -> dict[str | bytes, int]:
    """Normalised text (``token_text``) -> one id, over the usable entries. Where several entries
    stand for one text (SentencePiece's "\n" and "<0x0A>", "▁" and "<0x20>"), the one spelled as the
    text wins, then a piece over a byte-fallback token (the tokenizer uses the piece: the byte's row
    is barely trained), then the lowest id."""
    best: dict[str | bytes, tuple[bool, bool, int]] = {}
    for token, i in _usable(vocab, rows):
        text = token if i in vocab.added else token_text(token, vocab.scheme)
        rank = (token != text, vocab.scheme == SENTENCEPIECE and _BYTE_TOKEN.fullmatch(token) is not None, i)
        if text not in best or rank < best[text]:
            best[text] = rank
    return {text: rank[-1] for text, rank in best.items()}


def shared_token_pairs(source: Vocab | None, target: Vocab | None, source_rows: int, target_rows: int) -> tuple[list[tuple[int, int]], str]:
    """(source id, target id) of every token both models have, sorted by source id, and how
    they were matched: ``"same tokenizer"`` (identical vocabularies: same ids), ``"shared strings"``
    (one spelling scheme: tokens spelled the same), ``"shared text (<scheme> vs <scheme>)"``
    (byte-level BPE against SentencePiece, or either against plain strings: entries standing for
    the same text, ``token_text``), or ``"ids (no tokenizer)"`` (a side without a tokenizer: row i
    with row i). Special and never-used tokens are left out; ids past either matrix are dropped."""
    if source is None or target is None:
        return [(i, i) for i in range(min(source_rows, target_rows))], "ids (no tokenizer)"
    if source.scheme != target.scheme:
        theirs = texts_to_ids(target, target_rows)
        pairs = [(s, theirs[text]) for text, s in texts_to_ids(source, source_rows).items() if text in theirs]
        return sorted(pairs), f"shared text ({source.scheme or 'plain'} vs {target.scheme or 'plain'})"
    how = "same tokenizer" if source.tokens == target.tokens else "shared strings"
    theirs = dict(_usable(target, target_rows))
    pairs = [(s, theirs[token]) for token, s in _usable(source, source_rows) if token in theirs]
    return sorted(pairs), how


def select_rows(pairs: Sequence[tuple[int, int]], *, max_rows: int = DEFAULT_MAX_ROWS, blocks: int = BLOCKS,
                max_ranges: int = MAX_RANGES) -> list[tuple[int, int]]:
    """A bounded sample of ``pairs`` that few byte ranges cover.

    Pairs whose ids both step by one form runs (one range on each side). When the runs hold
    more than ``max_rows`` pairs, ``blocks`` blocks of ``max_rows / blocks`` consecutive pairs are
    taken, spread evenly over the vocabulary; runs too short for a block fill in, longest first,
    up to ``max_ranges`` pieces in all. Sorted by source id.
    """
    if max_rows <= 0 or not pairs:
        return []
    ordered = sorted(set(pairs))
    if len(ordered) <= max_rows and len(_runs(ordered)) <= max_ranges:
        return ordered
    size = max(1, -(-max_rows // blocks))
    pieces = [(s + k, t + k, min(size, n - k)) for s, t, n in _runs(ordered) for k in range(0, n, size)]
    full = [p for p in pieces if p[2] == size]
    if len(full) >= blocks:
        chosen = [full[round(i * (len(full) - 1) / max(1, blocks - 1))] for i in range(blocks)]
    else:  # in order of preference: whole blocks, then the longest pieces
        rest = sorted((p for p in pieces if p[2] < size), key=lambda p: (-p[2], p[0]))
        chosen = full + rest[: max(0, max_ranges - len(full))]
    out: list[tuple[int, int]] = []
    for s, t, n in chosen:
        out.extend((s + k, t + k) for k in range(min(n, max_rows - len(out))))
    return sorted(out)


def _runs(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(first source id, first target id, length) of each maximal run where both ids step by one."""
    runs: list[tuple[int, int, int]] = []
    for s, t in pairs:
        if runs and (s, t) == (runs[-1][0] + runs[-1][2], runs[-1][1] + runs[-1][2]):
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((s, t, 1))
    return runs


def row_ranges(ids: Iterable[int], *, max_gap: int = 0) -> list[tuple[int, int]]:
    """Sorted, merged ``[start, stop)`` ranges covering ``ids``; ranges at most ``max_gap`` rows
    apart are merged (the gap is read too: fewer requests for a few bytes more)."""
    ranges: list[list[int]] = []
    for i in sorted(set(ids)):
        if ranges and i - ranges[-1][1] <= max_gap:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    return [(a, b) for a, b in ranges]


# ---- scores (pure functions of two n x d tensors) --------------------------------------------------
def identity_cosine(source: torch.Tensor, target: torch.Tensor) -> float:
    """Mean cosine of row i of ``source`` with row i of ``target`` (equal widths). Rows that are
    zero in both (padding embeddings) are left out; a row zero on one side only counts as 0."""
    if source.shape != target.shape or source.ndim != 2 or not len(source):
        raise ValueError(f"identity_cosine needs two n x d tensors of one shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    a, b = source.double(), target.double()
    kept = (a.norm(dim=1) > 0) | (b.norm(dim=1) > 0)  # rows zero in both (padding) say nothing
    if not kept.any():
        raise ValueError("identity_cosine: every row is zero in both tensors")
    return torch.nn.functional.cosine_similarity(a[kept], b[kept], dim=1, eps=1e-12).mean().item()


def linear_fit(source: torch.Tensor, target: torch.Tensor, *, ridge: float = 1e-3) -> float:
    """How well a linear map explains ``target`` rows from ``source`` rows: fitted on the even
    rows, scored on the odd ones. Works across widths (n x d_s and n x d_t).

    Both sides are centred (train means) and reduced to their top k principal directions of the
    train rows, k = min(d_s, d_t, n_train / 4), so that a sample smaller than the width still
    fits a determined map: a permuted or rotated copy has the same principal directions up to
    that change of basis. W = argmin |A W - B|^2 + lam |W|^2 (lam = ``ridge`` x mean eigenvalue
    of A^T A); the score is the mean cosine of (held-out A) W with held-out B, both in those
    coordinates: ~1 for a copy in any basis, ~0 for unrelated rows.
    """
    if source.ndim != 2 or target.ndim != 2 or len(source) != len(target):
        raise ValueError(f"linear_fit needs n x d_s and n x d_t tensors, got {tuple(source.shape)} and {tuple(target.shape)}")
    if len(source) < 8:
        raise ValueError(f"linear_fit needs at least 8 rows, got {len(source)}")
    x, y = source.double(), target.double()
    x_train, y_train, x_test, y_test = x[0::2], y[0::2], x[1::2], y[1::2]
    x_mean, y_mean = x_train.mean(0), y_train.mean(0)
    k = max(1, min(x.shape[1], y.shape[1], len(x_train) // 4))
    basis_x, basis_y = _principal_directions(x_train - x_mean, k), _principal_directions(y_train - y_mean, k)
    a, b = (x_train - x_mean) @ basis_x, (y_train - y_mean) @ basis_y
    gram = a.T @ a
    lam = ridge * gram.diagonal().mean().clamp_min(1e-30)
    w = torch.linalg.solve(gram + lam * torch.eye(k, dtype=gram.dtype), a.T @ b)
    predicted, actual = (x_test - x_mean) @ basis_x @ w, (y_test - y_mean) @ basis_y
    return torch.nn.functional.cosine_similarity(predicted, actual, dim=1, eps=1e-12).mean().item()


def _principal_directions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` right singular vectors of the centred ``x`` (n x d), as a d x k matrix, from
    the eigenvectors of the smaller of x^T x and x x^T (cheaper than an SVD of x)."""
    n, d = x.shape
    if d <= n:
        _, vectors = torch.linalg.eigh(x.T @ x)
        return vectors[:, -k:].flip(1)
    values, vectors = torch.linalg.eigh(x @ x.T)  # x^T u / sqrt(lambda) is the matching right singular vector
    values, vectors = values[-k:].flip(0), vectors[:, -k:].flip(1)
    return (x.T @ vectors) / values.clamp_min(values.max() * 1e-12 + 1e-300).sqrt()


@dataclass(frozen=True)
class EmbeddingEvidence:
    """What the probe measured of two bases, and its verdict for a direct tensor copy."""

    verdict: str  # compatible, incompatible or unknown
    reason: str
    identity_cosine: float | None = None  # None across widths
    linear_fit: float | None = None
    shared_tokens: int = 0  # all shared: across spelling schemes, the entries standing for the same text
    sampled_rows: int = 0
    token_match: str | None = None
    bytes_read: int = 0  # both models
    seconds: float = 0.0
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))
    source: dict[str, Any] = field(default_factory=dict)  # per model: what was read, and from where
    target: dict[str, Any] = field(default_factory=dict)
    cached: bool = False  # read from the cache of an earlier run between the same pinned commits

    @property
    def decision(self) -> str:
        """The verdict ``--align auto`` acts on: a measured but ambiguous similarity counts as
        incompatible (aligning is safe either way; copying is not); only no measurement is unknown."""
        measured = self.identity_cosine is not None or self.linear_fit is not None
        return "incompatible" if self.verdict == "unknown" and measured else self.verdict

    @property
    def basis_change(self) -> bool:
        """The same space in another basis (a permuted or rotated copy): equal widths, unrelated
        coordinates, and a linear map explaining nearly everything."""
        if self.identity_cosine is None or self.linear_fit is None:
            return False
        return self.identity_cosine <= INCOMPATIBLE_MAX_COSINE and self.linear_fit >= BASIS_CHANGE_MIN_FIT

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingEvidence:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def decide(identity: float | None, linear: float | None, *, sampled: int, widths: tuple[int, int]) -> tuple[str, str]:
    """(verdict, reason) for a direct tensor copy, from the scores on ``sampled`` shared tokens; pure."""
    if sampled < MIN_SHARED_TOKENS:
        return "unknown", f"only {sampled} shared tokens to compare (at least {MIN_SHARED_TOKENS} needed)"
    related = linear is not None and linear >= LINEAR_RELATED_MIN
    if widths[0] != widths[1]:
        how = "related up to a linear map" if related else "no linear relation found either"
        return "incompatible", f"embedding widths differ ({widths[0]} vs {widths[1]}): no direct copy; {how}"
    assert identity is not None
    if identity >= COMPATIBLE_MIN_COSINE:
        return "compatible", f"rows of shared tokens agree (mean cosine {identity:.3f} >= {COMPATIBLE_MIN_COSINE})"
    if identity <= INCOMPATIBLE_MAX_COSINE:
        if related:
            return "incompatible", (f"rows of shared tokens differ (mean cosine {identity:.3f}) but a linear map explains them "
                                    f"({linear:.3f}): the same space in another basis; align instead of copying")
        return "incompatible", f"rows of shared tokens are unrelated (mean cosine {identity:.3f})"
    return "unknown", f"rows of shared tokens are partly similar (mean cosine {identity:.3f}, between {INCOMPATIBLE_MAX_COSINE} and {COMPATIBLE_MIN_COSINE})"


# ---- readers ----------------------------------------------------------------------------------------
def _to_rows(data: bytes, dtype: str, width: int) -> torch.Tensor:
    if dtype not in DTYPES:
        raise ValueError(f"embedding dtype {dtype} is not one of {', '.join(DTYPES)}")
    return torch.frombuffer(bytearray(data), dtype=DTYPES[dtype]).reshape(-1, width).float()


def _gap_rows(row_bytes: int) -> int:
    return MERGE_GAP_BYTES // max(1, row_bytes)


def _gather_rows(ids: Sequence[int], row_bytes: int, width: int, read_block) -> tuple[torch.Tensor, int]:
    """Rows ``ids`` (in that order) as float32, read as few runs of rows (rows closer than
    ``MERGE_GAP_BYTES`` share a run) by ``read_block(start, stop)``; and how many rows were read."""
    blocks, index, offset = [], {}, 0
    for start, stop in row_ranges(ids, max_gap=_gap_rows(row_bytes)):
        blocks.append(read_block(start, stop))
        index.update((i, offset + i - start) for i in range(start, stop))
        offset += stop - start
    rows = torch.cat(blocks) if blocks else torch.empty(0, width)
    return rows[[index[i] for i in ids]], offset


def read_local_rows(path: Path, name: str, ids: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Rows ``ids`` (in that order) of tensor ``name`` in a local safetensors file, as float32,
    and the bytes read: only the ranges that cover them, through ``safe_open(...).get_slice``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        part = handle.get_slice(name)
        shape, dtype = part.get_shape(), part.get_dtype()
        row_bytes = shape[1] * DTYPES[dtype].itemsize if dtype in DTYPES else 0
        rows, read = _gather_rows(ids, row_bytes, shape[1], lambda start, stop: part[start:stop].float())
    return rows, read * row_bytes


def read_remote_rows(remote: RemoteSafetensors, name: str, ids: Sequence[int]) -> torch.Tensor:
    """Rows ``ids`` (in that order) of tensor ``name`` of a Hub file as float32: one range request
    per run of rows."""
    entry = remote.tensors()[name]
    width, row_bytes = entry.shape[1], entry.row_bytes

    def read_block(start: int, stop: int) -> torch.Tensor:
        data = remote.read(entry.start + start * row_bytes, entry.start + stop * row_bytes)
        if len(data) != (stop - start) * row_bytes:
            raise ValueError(f"{remote.filename}: got {len(data)} bytes for rows {start}..{stop - 1} of {name}")
        return _to_rows(data, entry.dtype, width)

    return _gather_rows(ids, row_bytes, width, read_block)[0]


# ---- one side of the comparison ---------------------------------------------------------------------
class _Unreadable(Exception):
    """The embedding cannot be read; the message says why (the verdict becomes "unknown")."""


@dataclass
class _Model:
    reference: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None
    token: str | None = None
    model_type: str | None = None
    vocab: Vocab | None = None
    key: str | None = None
    dtype: str | None = None
    shape: tuple[int, ...] = ()
    file: str | None = None
    remote: RemoteSafetensors | None = None
    local_bytes: int = 0

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * DTYPES[self.dtype].itemsize

    @property
    def bytes_read(self) -> int:
        return self.local_bytes + (self.remote.bytes_read if self.remote else 0)

    def locate(self) -> None:
        """Find the embedding tensor: its name, file, dtype and shape (reads headers only)."""
        try:
            self._locate()
        except _Unreadable:
            raise
        except Exception as err:  # a corrupt index or safetensors file: no evidence, said so
            raise _Unreadable(f"cannot read the weights of {self.reference}: {type(err).__name__}: {err}") from None

    def _locate(self) -> None:
        try:
            raw = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
            self.model_type = raw.get("model_type") if isinstance(raw, dict) else None
        except (OSError, ValueError) as err:
            raise _Unreadable(f"cannot read the config.json of {self.reference}: {err}") from None
        try:
            archs = [get_architecture(str(self.model_type))]
        except AdapterConvertError:  # unknown family: try every known embedding name
            archs = [get_architecture(t) for t in supported_model_types()]
        index_path = self.folder / INDEX_FILE
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            names: Iterable[str] = weight_map
        elif (self.folder / SINGLE_FILE).is_file():
            from safetensors import safe_open

            with safe_open(str(self.folder / SINGLE_FILE), framework="pt") as handle:
                names = list(handle.keys())
            weight_map = dict.fromkeys(names, SINGLE_FILE)
        elif self.repo_id is not None:
            self.remote = RemoteSafetensors(self.repo_id, SINGLE_FILE, self.revision, self.token)
            names = list(self._remote_tensors())
            weight_map = dict.fromkeys(names, SINGLE_FILE)
        else:
            raise _Unreadable(f"{self.reference} has no {SINGLE_FILE} or {INDEX_FILE}")
        self.key = next((k for arch in archs if (k := embedding_key(arch, names))), None)
        if self.key is None and isinstance(raw, dict) and raw.get("tie_word_embeddings") and TIED_OUTPUT_NAME in names:
            self.key = TIED_OUTPUT_NAME  # tied weights saved once, under the output name (transformers loads both from it)
        if self.key is None:
            raise _Unreadable(f"no input-embedding tensor found in {self.reference} (model_type {self.model_type!r})")
        self.file = weight_map[self.key]
        if (self.folder / self.file).is_file():  # local, or already in the Hub cache
            from safetensors import safe_open

            self.remote = None
            with safe_open(str(self.folder / self.file), framework="pt") as handle:
                part = handle.get_slice(self.key)
                self.dtype, self.shape = part.get_dtype(), tuple(part.get_shape())
        else:
            if self.remote is None or self.remote.filename != self.file:
                self.remote = RemoteSafetensors(self.repo_id, self.file, self.revision, self.token)
            entry = self._remote_tensors()[self.key]
            self.dtype, self.shape = entry.dtype, entry.shape
        if self.dtype not in DTYPES or len(self.shape) != 2:
            raise _Unreadable(f"{self.key} in {self.reference} is {self.dtype} {list(self.shape)}, not a 2-d {'/'.join(DTYPES)} matrix")

    def _remote_tensors(self) -> dict[str, TensorEntry]:
        try:
            return self.remote.tensors()
        except Exception as err:
            raise _Unreadable(f"cannot read {self.remote.filename} of {self.repo_id}@{self.revision}: {type(err).__name__}: {err}") from None

    def rows(self, ids: Sequence[int]) -> torch.Tensor:
        try:
            if self.remote is None:
                rows, nbytes = read_local_rows(self.folder / self.file, self.key, ids)
                self.local_bytes += nbytes
                return rows
            return read_remote_rows(self.remote, self.key, ids)
        except Exception as err:
            where = f"{self.repo_id}@{self.revision}" if self.remote else str(self.folder / self.file)
            raise _Unreadable(f"cannot read rows of {self.key} from {where}: {type(err).__name__}: {err}") from None

    def summary(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "pinned": f"{self.repo_id}@{self.revision}" if self.repo_id else self.reference,
            "model_type": self.model_type,
            "tokenizer": None if self.vocab is None else (self.vocab.scheme or "plain"),  # its spelling scheme; None: none read
            "embedding": self.key,
            "file": self.file,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "read_from": None if self.file is None else ("hub" if self.remote else "disk"),
            "bytes_read": self.bytes_read,
            "requests": self.remote.requests if self.remote else 0,
        }


def _open(source: ResolvedFiles, token: str | None) -> _Model:
    """A resolved base (sources.read_base fetched its config, tokenizer and shard index): its
    vocabulary read; its weights are then read by range, or from disk when they are there."""
    model = _Model(source.reference, source.path, source.repo_id, source.revision, token)
    model.vocab = read_vocab(source.path)
    return model


def embedding_evidence(source: ResolvedFiles, target: ResolvedFiles, *, token: str | None = None,
                       max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES) -> EmbeddingEvidence:
    """Whether the two base models share a hidden space, from the rows of their shared tokens.

    ``source`` and ``target`` are resolved bases (``sources.read_base``): this reads what they
    fetched and byte ranges of their remote weights, and resolves nothing itself. At most
    ``max_rows`` rows, and about ``max_bytes`` bytes per model (never below ``MIN_SAMPLE_ROWS``
    rows), are read. Unreadable weights (offline and not cached, no safetensors, an unknown
    dtype) give the verdict "unknown" with the reason.
    """
    started = time.perf_counter()
    scores: dict[str, Any] = {}
    models: list[_Model] = []
    try:
        for resolved in (source, target):
            models.append(_open(resolved, token))
            models[-1].locate()
        src, tgt = models
        pairs, scores["token_match"] = shared_token_pairs(src.vocab, tgt.vocab, src.shape[0], tgt.shape[0])
        budget = min(max_rows, max(MIN_SAMPLE_ROWS, max_bytes // max(src.row_bytes, tgt.row_bytes)))
        sample = select_rows(pairs, max_rows=budget)
        scores |= {"shared_tokens": len(pairs), "sampled_rows": len(sample)}
        if len(sample) >= MIN_SHARED_TOKENS:
            a = src.rows([s for s, _ in sample])
            b = tgt.rows([t for _, t in sample])
            if a.shape[1] == b.shape[1]:
                scores["identity_cosine"] = identity_cosine(a, b)
            scores["linear_fit"] = linear_fit(a, b)
        verdict, reason = decide(scores.get("identity_cosine"), scores.get("linear_fit"), sampled=len(sample),
                                 widths=(src.shape[1], tgt.shape[1]))
    except _Unreadable as err:
        verdict, reason = "unknown", str(err)
    read = dict(zip(("source", "target"), (m.summary() for m in models)))
    return EmbeddingEvidence(verdict=verdict, reason=reason, **scores, **read, bytes_read=sum(m.bytes_read for m in models),
                             seconds=round(time.perf_counter() - started, 4))


def cached_embedding_evidence(source: ResolvedFiles, target: ResolvedFiles, *, token: str | None = None) -> EmbeddingEvidence:
    """``embedding_evidence`` for two resolved sources; between Hub revisions pinned to commits
    the result is kept in the Hub cache (``HF_HOME``), so an offline rerun has the same evidence.
    Local folders are measured every time: their files can change."""
    import hashlib
    import os

    from huggingface_hub import constants

    cache_file = None
    if source.repo_id and source.revision and target.repo_id and target.revision:
        key = hashlib.sha256(f"{CACHE_VERSION}\n{source.pinned}\n{target.pinned}".encode()).hexdigest()[:32]
        cache_file = Path(constants.HF_HOME) / "adapter-convert" / "compatibility" / f"{key}.json"
        if cache_file.is_file():
            try:
                return dataclasses.replace(EmbeddingEvidence.from_json(json.loads(cache_file.read_text())), cached=True)
            except (OSError, ValueError, TypeError):
                pass  # a damaged entry is measured again
    evidence = embedding_evidence(source, target, token=token)
    if cache_file is not None and evidence.verdict != "unknown":
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_file.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps(evidence.to_json()))
            partial.replace(cache_file)
        except OSError:
            pass  # a read-only cache only costs a new measurement next time
    return evidence
