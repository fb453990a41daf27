"""Calibration text, and tokens paired across two tokenizers by their character spans.

Sources: the small multilingual sample shipped here (``default.txt``, written for this project,
so calibration works offline), or a local ``.txt`` (one text per line), ``.jsonl`` (a ``text``
or ``prompt`` field per line, or chat ``messages``: ``ChatPrompt``) or ``.conll``/``.conllu``
file (tokens in the second tab-separated column, sentences separated by blank lines).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import CalibrationDataError, UnsupportedError

DEFAULT_TEXT = resources.files(__package__) / "default.txt"
MAX_LENGTH = 128


class ChatPrompt(str):
    """A prompt given as chat messages (a .jsonl line's ``messages``: ``{"role", "content"}``
    each). As a string it is its messages' contents, one per line (what calibration pairs across
    tokenizers); a model that writes text reads it through its own chat template
    (``align.generative.prompt_text``), so teacher and target each see their own format."""

    messages: tuple[dict[str, str], ...]

    def __new__(cls, messages: Iterable[dict[str, str]]) -> ChatPrompt:
        messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        prompt = super().__new__(cls, "\n".join(m["content"] for m in messages))
        prompt.messages = messages
        return prompt

    def __getnewargs__(self) -> tuple:  # copy and pickle rebuild it from its messages, not its text
        return (self.messages,)


def load_texts(source: Path | None = None) -> list[str]:
    """The calibration texts; a file that is not UTF-8 text or holds no text is refused, naming it."""
    if source is None:
        return [line for line in DEFAULT_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    source = Path(source)
    if not source.is_file():
        raise CalibrationDataError(f"Calibration data {str(source)!r} is not a file.", "Give a .txt, .jsonl, .conll or .conllu file.")
    try:
        content = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CalibrationDataError(
            f"Calibration data {str(source)!r} is not UTF-8 text (byte {err.start} cannot be decoded).",
            "Give a plain-text .txt, .jsonl, .conll or .conllu file in UTF-8.",
        ) from None
    if "\x00" in content:
        raise CalibrationDataError(f"Calibration data {str(source)!r} holds NUL bytes: it is a binary file, not text.",
                                   "Give a plain-text .txt, .jsonl, .conll or .conllu file.")
    texts = [text for text in _parse(source, content) if text.strip()]
    if not texts:
        raise CalibrationDataError(f"Calibration data {str(source)!r} holds no text.", "Give a file with at least a few sentences.")
    return texts


def _parse(source: Path, content: str) -> list[str]:
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        texts = []
        for number, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    texts.append(_chat_prompt(record["messages"]) if "messages" in record else
                                 str(record["text"] if "text" in record else record["prompt"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise CalibrationDataError(
                        f"Line {number} of {str(source)!r} has no JSON 'text' or 'prompt' field, nor chat 'messages' (a list of "
                        "{\"role\": ..., \"content\": ...} with a turn before any answer).",
                        "Write one {\"text\": ...}, {\"prompt\": ...} or {\"messages\": [...]} object per line.") from None
        return texts
    if suffix in (".conll", ".conllu"):  # the token is the second column (the only one in a bare token list)
        return [" ".join(columns[1] if len(columns) > 1 else columns[0] for columns in sentence)
                for sentence in conll_sentences(content.splitlines())]
    if suffix in (".txt", ""):
        return content.splitlines()
    raise CalibrationDataError(f"Calibration data {str(source)!r} has an unknown type {suffix!r}.", "Use .txt, .jsonl, .conll or .conllu.")


def _chat_prompt(messages) -> ChatPrompt:
    """A line's chat messages up to the last turn that is not the assistant's: an answer given with
    the prompts is left out (the source adapter writes its own)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in messages):
        raise ValueError("messages must be a list of {role, content} strings")
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise ValueError("no turn before the answer")
    return ChatPrompt(messages)


def conll_sentences(lines: Iterable[str]) -> Iterator[list[list[str]]]:
    """The sentences of CoNLL lines, each a list of tokens, each token its tab-separated columns
    (``INDEX<TAB>TOKEN<TAB>TAG ...``). A blank line ends a sentence; lines starting with ``#``
    are comments. Read lazily, so a caller may stop after the sentences it needs."""
    sentence: list[list[str]] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            if sentence:
                yield sentence
            sentence = []
        elif not line.startswith("#"):
            sentence.append(line.split("\t"))
    if sentence:
        yield sentence


@dataclass
class PairedBatch:
    teacher_inputs: dict[str, torch.Tensor]
    student_inputs: dict[str, torch.Tensor]
    teacher_index: tuple[torch.Tensor, torch.Tensor]  # (row, position) of each paired token
    student_index: tuple[torch.Tensor, torch.Tensor]

    @property
    def tokens(self) -> int:
        return len(self.teacher_index[0])


def _encode(tokenizer, texts: list[str], max_length: int = MAX_LENGTH):
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedError(
            f"Calibration pairs tokens by character offsets, which the slow tokenizer {type(tokenizer).__name__} cannot give.",
            "Use a model that ships a fast tokenizer (tokenizer.json).",
        )
    encoded = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True, max_length=max_length)
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) if i is not None), 0)
    return _padded(dict(encoded), pad_id=pad_id, left=tokenizer.padding_side == "left")


def _padded(encoded: dict[str, list[list]], *, pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Rows padded to the longest, as the tokenizer pads, but also for a tokenizer without a pad
    token (then with its eos or unk id) and without setting one on the caller's tokenizer. Pads are
    masked out and marked special, so nothing attends to them and nothing pairs them."""
    width = max((len(ids) for ids in encoded["input_ids"]), default=0)
    fill = {"input_ids": pad_id, "special_tokens_mask": 1, "offset_mapping": (0, 0)}  # everything else pads with 0
    padded = {}
    for key, rows in encoded.items():
        pad = [fill.get(key, 0)]
        padded[key] = torch.tensor([pad * (width - len(row)) + list(row) if left else list(row) + pad * (width - len(row))
                                    for row in rows])
    return padded


def pair_positions(teacher_enc, student_enc, row: int) -> list[tuple[int, int]]:
    """Positions of tokens whose character spans are identical in both tokenizations."""
    def spans(enc) -> dict[tuple[int, int], int]:
        out = {}
        for pos, ((start, end), special, mask) in enumerate(zip(enc["offset_mapping"][row].tolist(), enc["special_tokens_mask"][row].tolist(), enc["attention_mask"][row].tolist())):
            if mask and not special and end > start:
                out.setdefault((start, end), pos)
        return out

    teacher_spans, student_spans = spans(teacher_enc), spans(student_enc)
    return [(teacher_spans[span], student_spans[span]) for span in teacher_spans if span in student_spans]


def paired_batches(texts: list[str], teacher_tokenizer, student_tokenizer, *, max_tokens: int, batch_size: int = 8,
                   max_length: int = MAX_LENGTH) -> Iterator[PairedBatch]:
    """Batches of both tokenizations with their paired token positions, up to ``max_tokens`` pairs."""
    total = 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        teacher_enc, student_enc = _encode(teacher_tokenizer, chunk, max_length), _encode(student_tokenizer, chunk, max_length)
        pairs = [(row, t, s) for row in range(len(chunk)) for t, s in pair_positions(teacher_enc, student_enc, row)]
        pairs = pairs[: max(0, max_tokens - total)]
        if not pairs:
            break
        rows = torch.tensor([p[0] for p in pairs])
        batch = PairedBatch(
            {k: teacher_enc[k] for k in ("input_ids", "attention_mask")},
            {k: student_enc[k] for k in ("input_ids", "attention_mask")},
            (rows, torch.tensor([p[1] for p in pairs])),
            (rows, torch.tensor([p[2] for p in pairs])),
        )
        total += batch.tokens
        yield batch
        if total >= max_tokens:
            break
