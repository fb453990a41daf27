"""Output-space distillation for models that write text (causal LMs, and encoder-decoders: the
prompt read by the encoder, the answer written by the decoder), label-free and across tokenizers.

The teacher (source base + its adapter) writes answers to the user's unlabelled prompts, once;
the student's adapter is trained on the student's own tokenization of ``prompt + answer`` with
the prompt masked (Trans-LoRA's recipe: the source adapter labels the prompts), and stops when
the bits per byte of the teacher's answers on held-out prompts stop falling. Fidelity is what a
user sees: bits per byte of the teacher's held-out answers under the student, and the token F1 /
exact match of the student's greedy generations against the teacher's.

Everything is measured per byte of text, never per token, so two tokenizers compare.

This module writes and scores answers (tokenized batches, losses, generation, precision);
``answer_ends`` reads how the teacher's answers end; ``answer_training`` runs the training loop.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..calibration import ChatPrompt
from ..errors import CalibrationDataError, UnsupportedError
from .capture import on_device

IGNORE = -100  # cross-entropy's ignore_index: prompt and padding positions
CACHE_BYTES = 2 * 2**30  # a generation batch keeps its KV cache under this (fewer rows for long prompts or big models)
# a row that writes the same run of at most LOOP_PERIOD tokens LOOP_TIMES times over has looped (greedy
# decoding does): generation ends it there, and its answer keeps the run once (loop_cut)
LOOP_PERIOD, LOOP_TIMES = 8, 4
SURE = 1e-4  # binary_kl holds a span's probability under 1 - SURE


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the teacher's text after the prompt (its stop string included)
    ended: bool = False  # the teacher stopped by its EOS: the student learns to stop there too
    finished: bool = False  # ended by EOS or a stop string (not by the token budget)
    loop: str = ""  # where the model looped: the repeats cut from the answer's end (loop_cut)
    # the teacher's log-probability of its answer's first ``end`` characters, at each of its token
    # boundaries, (end, log-probability), recorded as it wrote (generate(likelihood=True)): the span term reads it
    likelihood: tuple[tuple[int, float], ...] = ()


# ---- pure pieces ---------------------------------------------------------------------------------


def answer_positions(offsets: Sequence[tuple[int, int]], prompt_chars: int) -> list[bool]:
    """Which tokens belong to the answer: those starting at or after the prompt's last character.
    A token straddling the boundary (a tokenizer merging the prompt's end into the answer) counts
    as prompt: the loss never rewards re-writing the prompt. Special tokens ((0, 0) spans) never count."""
    return [end > start and start >= prompt_chars for start, end in offsets]


def shared_spans(teacher: Sequence[tuple[int, float]], student_ends: Sequence[int], student_start: int = 0) -> list[tuple[int, int, float]]:
    """Spans of the answer that both tokenizations cut at the same characters (ALM's chunks):
    (start, end, the teacher's log-probability of the span), in characters of the answer.
    ``teacher``: its cumulative log-probability at each of its token boundaries (the answer's
    start, 0, is one); ``student_ends``: where the student's answer tokens end, its first token
    starting at ``student_start`` (after a token it merged across the prompt's end)."""
    cumulative = {0: 0.0, **dict(teacher)}
    points = [student_start] + [e for e in student_ends if e > student_start]
    shared = [p for p in sorted(set(points)) if p in cumulative]
    return [(a, b, cumulative[b] - cumulative[a]) for a, b in itertools.pairwise(shared)]


def binary_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """ALM's binarised divergence of a span: KL(Bernoulli(p_teacher) || Bernoulli(p_student)) of the
    probability that the span comes next, from log-probabilities (a span the teacher was sure of
    pulls the student to sure; one it hesitated on, to the same hesitation). A probability is
    held under 1 - 1e-4: log(1 - p) and its gradient grow without bound near 1. The student's is
    held straight-through, so its gradient keeps its sign there and stays bounded."""
    most = math.log1p(-SURE)
    t = teacher_logp.clamp(max=most)
    s = student_logp + (student_logp.clamp(max=most) - student_logp).detach()
    log1m = lambda x: torch.log(-torch.expm1(x))  # noqa: E731 - log(1 - exp(x)), exact for small |x|
    p = t.exp()
    return p * (t - s) + (1 - p) * (log1m(t) - log1m(s))


def keep_last(ids: Sequence[int], limit: int, *, bos: int | None) -> list[int]:
    """At most ``limit`` tokens of ``ids``: its last ones, after its BOS when it starts with one. A
    text too long for the window loses its beginning, never its end: a prompt's end is what the
    answer follows (the question, the cue "Answer:")."""
    ids = list(ids)
    if len(ids) <= limit:
        return ids
    head = ids[:1] if bos is not None and ids and ids[0] == bos and limit > 1 else []
    return head + ids[len(ids) - (limit - len(head)) :]


def prompt_text(prompt: str, tokenizer, *, side: str) -> str:
    """What ``tokenizer``'s model reads for ``prompt``: a plain prompt as it is; chat messages
    (``ChatPrompt``) through the model's own chat template, ready for the answer (so a teacher and a
    target of other families each read their own format). The template's BOS is left to the
    tokenizer, which adds it again (never twice)."""
    if not isinstance(prompt, ChatPrompt):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise CalibrationDataError(
            f"The calibration prompts are chat messages, but the {side}'s tokenizer has no chat template to write them in.",
            "Give plain prompts ({\"prompt\": ...} lines, written as the model reads them), or a base whose tokenizer has a "
            "chat template.")
    try:
        text = tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
    except Exception as err:  # noqa: BLE001 - a template raises what it likes (gemma: "System role not supported")
        raise CalibrationDataError(
            f"The {side}'s chat template cannot write these chat messages ({type(err).__name__}: {err}).",
            "Give messages in the roles the model's template takes (some take no system message), or plain prompts.") from None
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def prompt_tokens(max_length: int, max_new_tokens: int) -> int:
    """The most tokens of a prompt the window keeps when the answer may take ``max_new_tokens``."""
    return max(1, max_length - max_new_tokens)


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each next label's log-probability, (rows, positions - 1): ``logits[:, t]`` predicts
    ``labels[:, t + 1]``; 0 where the label is ``IGNORE``."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    return -nats.view(labels.shape)


def masked_nats(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (nats) over labelled positions (``label_logprobs``)."""
    return -label_logprobs(logits, labels).sum()


def token_f1(predicted: str, reference: str) -> float:
    """SQuAD-style token F1 on whitespace- and punctuation-split words (1.0 when both are empty)."""
    p, r = _words(predicted), _words(reference)
    if not p and not r:
        return 1.0
    common = sum(min(p.count(w), r.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def loop_cut(tokens: Sequence[int], *, longest: int = LOOP_PERIOD, times: int = LOOP_TIMES) -> int | None:
    """Where a row that ends in a loop (one run of at most ``longest`` tokens, ``times`` times over
    or more) is cut so that it keeps the run once; None when it does not end in a loop."""
    tokens = list(tokens)
    for period in range(1, longest + 1):
        if len(tokens) < times * period:
            break
        unit = tokens[-period:]
        if tokens[-times * period :] == unit * times:
            start = len(tokens) - times * period
            while start >= period and tokens[start - period : start] == unit:
                start -= period
            return start + period
    return None


class LoopStop(StoppingCriteria):
    """Ends each row of a generation batch once its new tokens end in a loop (``loop_cut``), so a
    batch does not run to the budget for one row that repeats itself."""

    def __init__(self, prompt_width: int):
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.prompt_width :].tolist()
        return torch.tensor([loop_cut(row) is not None for row in rows], dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to and including the first stop string; whether one was found."""
    ends = [text.index(s) + len(s) for s in stops if s and s in text]
    return (text[: min(ends)], True) if ends else (text, False)


def cut_before(text: str, markers: Sequence[str]) -> str:
    """``text`` up to the first marker (excluded), its trailing spaces kept (a newline ends an answer)."""
    ends = [text.index(m) for m in markers if m and m in text]
    return text[: min(ends)] if ends else text


# ---- tokenized batches ---------------------------------------------------------------------------


def decoder_start(model) -> int | None:
    """The token an encoder-decoder's decoder starts from (its config's, else its generation
    config's, else its pad token: t5's); None for a causal LM (one sequence)."""
    config = model.config
    if not getattr(config, "is_encoder_decoder", False):
        return None
    generation = getattr(model, "generation_config", None)
    for start in (config.decoder_start_token_id, getattr(generation, "decoder_start_token_id", None), config.pad_token_id):
        if start is not None:
            return start
    raise UnsupportedError(f"{config.model_type} is an encoder-decoder without a decoder start token in its config.",
                           "Set decoder_start_token_id in the target's config.json.")


def encode_examples(tokenizer, examples: Sequence[Example], *, max_length: int, decoder_start: int | None = None) -> dict[str, torch.Tensor]:
    """The student's tokenization of ``prompt + answer`` (+ its EOS where the teacher stopped),
    left-padded so every answer ends the row (then only the last positions need logits), with
    ``labels`` on the answer's tokens only and ``position_ids`` that skip the padding. A row longer
    than ``max_length`` loses the beginning of its prompt (``keep_last``), never its answer's end.
    An encoder-decoder (``decoder_start``): ``_encode_for_decoder``."""
    if decoder_start is not None:
        return _encode_for_decoder(tokenizer, examples, max_length=max_length, start=decoder_start)
    rows, labels, spans = [], [], []
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    for example in examples:
        encoded = tokenizer(example.prompt + example.answer, return_offsets_mapping=True, add_special_tokens=True)
        ids = list(encoded["input_ids"])
        keep = answer_positions(encoded["offset_mapping"], len(example.prompt))
        if example.likelihood:
            spans.append(_student_spans(example, encoded["offset_mapping"], keep))
        if example.ended and eos is not None:
            ids.append(eos)
            keep.append(True)
        kept = keep_last(range(len(ids)), max_length, bos=0 if bos is not None and ids[0] == bos else None)
        rows.append([ids[i] for i in kept])
        labels.append([ids[i] if keep[i] else IGNORE for i in kept])
        if example.likelihood:  # token indices -> columns of the row as kept (before its left padding)
            column = {index: c for c, index in enumerate(kept)}
            spans[-1] = [(len(rows) - 1, column[a], column[b], lp) for a, b, lp in spans[-1] if a in column]
    input_ids, attention = padded(rows, pad_id(tokenizer), left=True)
    label_ids, _ = padded(labels, IGNORE, left=True)
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": label_ids,
             "position_ids": (attention.cumsum(-1) - 1).clamp_min(0)}
    found = [span for row in spans for span in row]
    if found:  # the padding shifts each row's columns right by its width's shortfall
        width = input_ids.shape[1]
        batch["span_columns"] = torch.tensor([(r, a + width - len(rows[r]), b + width - len(rows[r])) for r, a, b, _ in found])
        batch["span_teacher"] = torch.tensor([lp for *_, lp in found], dtype=torch.float32)
    return batch


def _student_spans(example: Example, offsets: Sequence[tuple[int, int]], answer: Sequence[bool]) -> list[tuple[int, int, float]]:
    """The shared spans (``shared_spans``) of an answer as (first token, last token, the teacher's
    log-probability), the tokens' indices in the student's tokenization of prompt + answer."""
    start = len(example.prompt)
    tokens = [(i, a - start, b - start) for i, ((a, b), mine) in enumerate(zip(offsets, answer)) if mine]
    if not tokens:
        return []
    teacher = [(end, lp) for end, lp in example.likelihood if end <= len(example.answer)]
    by_start, by_end = {}, {b: i for i, _, b in tokens}
    for i, a, _ in tokens:  # a character split into byte tokens gives each the same span: a span starts at the first
        by_start.setdefault(a, i)
    return [(by_start[a], by_end[b], lp) for a, b, lp in shared_spans(teacher, [b for *_, b in tokens], tokens[0][1])
            if a in by_start and b in by_end]


def _encode_for_decoder(tokenizer, examples: Sequence[Example], *, max_length: int, start: int) -> dict[str, torch.Tensor]:
    """An encoder-decoder's batch: the prompt for the encoder (its end kept, ``keep_last``), the
    answer as the model's own target tokenization (``text_target``) for the decoder, after its
    start token, EOS kept only where the teacher stopped. ``labels`` repeat the decoder's input
    (the start and the other special tokens, such as BART's forced BOS, ignored), so that
    ``masked_nats``'s next-token rule reads them as it does a causal LM's. Right-padded: BART's
    positions are absolute."""
    eos, pad = tokenizer.eos_token_id, pad_id(tokenizer)
    specials = set(tokenizer.all_special_ids) - {eos}
    prompts, decoder, labels = [], [], []
    for example in examples:
        prompts.append(keep_last(tokenizer(example.prompt)["input_ids"], max_length, bos=tokenizer.bos_token_id))
        ids = list(tokenizer(text_target=example.answer)["input_ids"])
        if ids and ids[-1] == eos and not example.ended:
            ids.pop()
        elif example.ended and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = ids[: max(1, max_length - 1)]
        decoder.append([start] + ids)
        labels.append([IGNORE] + [IGNORE if i in specials else i for i in ids])
    input_ids, attention = padded(prompts, pad, left=False)
    decoder_ids, decoder_attention = padded(decoder, pad, left=False)
    label_ids, _ = padded(labels, IGNORE, left=False)
    return {"input_ids": input_ids, "attention_mask": attention, "decoder_input_ids": decoder_ids,
            "decoder_attention_mask": decoder_attention, "labels": label_ids}


def pad_id(tokenizer) -> int:
    """The id padding takes: the pad token, else EOS (many causal LMs have no pad token), else 0."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)


def padded(rows: Sequence[list[int]], fill: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` padded with ``fill`` to the longest, on the left or the right, and the attention
    mask (1: a real token)."""
    width = max(len(r) for r in rows)

    def pad(values: list[int], filler: int) -> list[int]:
        fillers = [filler] * (width - len(values))
        return fillers + values if left else values + fillers

    return torch.tensor([pad(list(r), fill) for r in rows]), torch.tensor([pad([1] * len(r), 0) for r in rows])


def _scored_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict the batch's labels, and those labels. A causal LM's logits only for
    the positions that predict them (answers end every left-padded row): a 262k-token vocabulary
    head over the prompt's positions would cost more than the rest of the model."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels" and not k.startswith("span_")}
    if "decoder_input_ids" in batch:  # an encoder-decoder: the decoder's positions are the answer's
        logits = model(**on_device(inputs, model)).logits
        return logits, labels.to(logits.device)
    labelled = (labels != IGNORE).any(0).nonzero()
    keep = int(labels.shape[1] - labelled.min()) + 1 if len(labelled) else 1
    logits = model(**on_device(inputs, model), logits_to_keep=keep).logits
    return logits, labels[:, -keep:].to(logits.device)


def answer_nats(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed nats of the labelled tokens, and how many there are."""
    logits, labels = _scored_logits(model, batch)
    return masked_nats(logits, labels), int((labels[:, 1:] != IGNORE).sum())


def answer_nats_and_spans(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``answer_nats``, and the summed divergence (``binary_kl``) of the batch's shared spans
    (``span_columns``: row, first and last token column; ``span_teacher``: the teacher's
    log-probability of each, ``encode_examples``), from the same forward pass."""
    logits, labels = _scored_logits(model, batch)
    logp = label_logprobs(logits, labels)
    nats, count = -logp.sum(), int((labels[:, 1:] != IGNORE).sum())
    if "span_columns" not in batch:
        return nats, count, logp.new_zeros(())
    # a label in column c of the row is predicted in logp's column c - shift; cumulative sums give each span's sum
    shift = batch["labels"].shape[1] - labels.shape[1] + 1
    cumulative = F.pad(logp.cumsum(1), (1, 0))
    index = batch["span_columns"].to(logp.device)
    student = cumulative[index[:, 0], index[:, 2] - shift + 1] - cumulative[index[:, 0], index[:, 1] - shift]
    return nats, count, binary_kl(batch["span_teacher"].to(logp.device), student).sum()


def batched(examples: Sequence[Example], size: int) -> list[list[Example]]:
    return [list(examples[i : i + size]) for i in range(0, len(examples), size)]


@torch.no_grad()
def bits_per_byte(model, tokenizer, examples: Sequence[Example], *, max_length: int, batch_size: int = 16) -> float:
    """Bits per UTF-8 byte of the examples' answers given their prompts (lower: closer to the teacher)."""
    was_training = model.training
    model.eval()
    by_length = sorted(examples, key=lambda e: len(e.prompt) + len(e.answer))  # batches of alike lengths pad little
    start = decoder_start(model)
    nats = sum(float(answer_nats(model, encode_examples(tokenizer, chunk, max_length=max_length, decoder_start=start))[0])
               for chunk in batched(by_length, batch_size))
    model.train(was_training)
    return nats / math.log(2) / max(1, sum(len(e.answer.encode("utf-8")) for e in examples))


# ---- generation ----------------------------------------------------------------------------------


class ChosenLogProb(LogitsProcessor):
    """Records, at each decoding step, each row's log-probability of the token greedy decoding
    picks (the highest score; the last processor sees the scores greedy decoding reads, after any
    the model's generation config adds, such as a repetition penalty): the teacher's likelihood of
    its own answers, for free while it writes them."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []  # on the model's device: one copy to the CPU at the end, not a sync per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(scores.float().log_softmax(-1).max(-1).values)
        return scores


def likelihood_at_boundaries(tokenizer, tokens: Sequence[int], logprobs: Sequence[float], text: str) -> tuple[tuple[int, float], ...]:
    """(end, cumulative log-probability) at each token boundary of ``tokens`` that falls inside
    ``text`` (their decoding, maybe cut): where decoding the first tokens gives a prefix of it
    (a token ending inside a multi-byte character is no boundary)."""
    found, total = [], 0.0
    for count, logprob in enumerate(logprobs[: len(tokens)], start=1):
        total += logprob
        prefix = tokenizer.decode(tokens[:count], skip_special_tokens=True)
        if len(prefix) > len(text):
            break
        if text.startswith(prefix) and prefix and (not found or len(prefix) > found[-1][0]):
            found.append((len(prefix), total))
    return tuple(found)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, stops: Sequence[str], restarts: Sequence[str] = (),
             batch_size: int = 16, max_length: int, on_batch: Callable[[int], None] = lambda n: None,
             likelihood: bool = False) -> list[Example]:
    """Greedy continuations of ``prompts`` (an encoder-decoder's: its decoder's text), batched (the KV cache), each ended by EOS,
    cut after its first stop string, or cut before its first restart marker (the model began a new
    example); a row that loops ends there and keeps the loop's run once (``loop_cut``; the rest in
    ``Example.loop``). Prompts run longest first, so a batch pads little; the answers come back in the
    prompts' order."""
    model.eval()
    # a prompt too long for the window loses its beginning, never its end (keep_last)
    limit = prompt_tokens(max_length, max_new_tokens)
    encoded = [keep_last(tokenizer(p)["input_ids"], limit, bos=tokenizer.bos_token_id) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: dict[int, Example] = {}
    ends = list(stops) + list(restarts)
    eos = end_ids(model, tokenizer)
    pad = pad_id(tokenizer)
    two_parts = decoder_start(model) is not None  # an encoder-decoder
    options = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos or None)
    per_token = kv_cache_bytes_per_token(model)
    start = 0
    while start < len(order):
        longest = len(encoded[order[start]]) + max_new_tokens  # longest first: the batch's widest row
        rows_fit = max(1, min(batch_size, CACHE_BYTES // max(1, per_token * longest)))
        chunk, start = order[start : start + rows_fit], start + rows_fit
        rows = [encoded[i] for i in chunk]
        ids, mask = padded(rows, pad, left=not two_parts)  # a causal LM's answers follow the prompts' ends
        inputs = on_device({"input_ids": ids, "attention_mask": mask}, model)
        written_from = 1 if two_parts else ids.shape[1]  # the decoder writes after its start token
        loops = StoppingCriteriaList([LoopStop(written_from)])
        recorder = ChosenLogProb() if likelihood and not two_parts else None
        processors = LogitsProcessorList([recorder] if recorder else [])
        try:  # transformers stops a row at a stop string; the text is cut below either way
            out = model.generate(**inputs, **options, stop_strings=ends or None, tokenizer=tokenizer if ends else None,
                                 stopping_criteria=loops, logits_processor=processors)
        except ValueError:  # a stop string its preprocessing cannot match to tokens: run to the budget
            if recorder:
                recorder.steps.clear()
            out = model.generate(**inputs, **options, stopping_criteria=loops, logits_processor=processors)
        chosen = torch.stack(recorder.steps, 1).cpu() if recorder and recorder.steps else None
        for row, index in enumerate(chunk):
            new = out[row, written_from:].tolist()
            first_end = next((i for i, token in enumerate(new) if token in eos), None)
            new = new if first_end is None else new[:first_end]
            while new and new[-1] == pad:  # a row that stopped before the batch's last is padded
                new.pop()
            cut = loop_cut(new)
            ended = first_end is not None and cut is None  # after a loop, the "EOS" is padding (pad = EOS)
            whole = tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = cut_at_stop(tokenizer.decode(new[:cut], skip_special_tokens=True) if cut else whole, ends)
            loop = whole[len(text):] if cut and not stopped and whole.startswith(text) else ""
            answer = cut_before(text, restarts)
            scored = likelihood_at_boundaries(tokenizer, new, chosen[row].tolist(), answer) if chosen is not None else ()
            results[index] = Example(prompts[index], answer, ended=ended and not stopped, finished=ended or stopped, loop=loop,
                                     likelihood=scored)
        on_batch(len(chunk))
    return [results[i] for i in range(len(prompts))]


def kv_cache_bytes_per_token(model) -> int:
    """Bytes the KV cache keeps per token of a row: keys and values of every layer's KV heads (a 7B
    llama without grouped KV heads in float16: 2 x 32 x 32 x 128 x 2 bytes = 0.5 MiB)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", None) or 1
    head_dim = getattr(config, "head_dim", None) or (getattr(config, "hidden_size", None) or heads) // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * (getattr(config, "num_hidden_layers", None) or 1) * kv_heads * head_dim * model.dtype.itemsize


def end_ids(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS and every EOS of the model's generation
    config (an instruct model ends its turn with another token than its EOS: gemma's
    ``<end_of_turn>``, llama-3's ``<|eot_id|>``), so an answer never runs on past its turn."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    return list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *configured] if i is not None))


@contextmanager
def merged_adapter(model) -> Iterator[None]:
    """The peft model's adapter merged into its base weights for the duration (a third faster
    greedy generation on a CPU: no adapter matmuls per step), then unmerged. Only on float32
    weights: in half precision the merge would round the adapter's small change away. An adapter
    kind peft cannot merge runs unmerged."""
    try:
        if model.get_base_model().dtype != torch.float32:
            raise TypeError("merging rounds half-precision weights")
        model.merge_adapter()
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        model.unmerge_adapter()


def generation_agreement(student_answers: Sequence[Example], teacher_answers: Sequence[Example]) -> dict[str, float]:
    """Token F1 and exact match of the student's answers against the teacher's, averaged."""
    pairs = list(zip(student_answers, teacher_answers))
    f1 = sum(token_f1(s.answer, t.answer) for s, t in pairs) / max(1, len(pairs))
    exact = sum(s.answer.strip() == t.answer.strip() for s, t in pairs) / max(1, len(pairs))
    return {"token_f1": f1, "exact_match": exact}


# ---- precision -----------------------------------------------------------------------------------


class FrozenCopies:
    """Copies of a model's frozen linear weights (``_castable``) in the dtype it autocasts to, made once and
    swapped in while ``swapped()``. Autocast caches its casts only of weights that train, so
    without them every frozen weight is cast again on every call: measured on the CPU, a quarter
    of a gemma-3-270m training step, and most of a decoding step. A weight tied to an embedding (an
    output head) is untied while swapped; outside, the model has its original weights."""

    def __init__(self, model, dtype: torch.dtype | None):
        self._swaps = [(m, m.weight, torch.nn.Parameter(m.weight.detach().to(dtype), requires_grad=False))
                       for m in _castable(model, dtype)] if dtype is not None else []

    @staticmethod
    def extra_bytes(model, dtype: torch.dtype) -> dict[torch.device, int]:
        """The memory the copies take on each device: what to check against the memory free there
        before making them."""
        need: dict[torch.device, int] = {}
        for module in _castable(model, dtype):
            need[module.weight.device] = need.get(module.weight.device, 0) + module.weight.numel() * dtype.itemsize
        return need

    @contextmanager
    def swapped(self) -> Iterator[None]:
        for module, _, copy in self._swaps:
            module.weight = copy
        try:
            yield
        finally:
            for module, weight, _ in self._swaps:
                module.weight = weight


def _castable(model, dtype: torch.dtype) -> list[torch.nn.Module]:
    """Frozen floating-point weights of linear layers (``nn.Linear``, and transformers' ``Conv1D``
    of the gpt2 family) in another dtype, held in memory (an offloaded weight, on the meta device,
    is cast by its own hook on every call: a copy would not help)."""
    from transformers.pytorch_utils import Conv1D

    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and not m.weight.requires_grad
            and m.weight.is_floating_point() and m.weight.dtype != dtype and not m.weight.is_meta]


@contextmanager
def computing_in(model, dtype: torch.dtype | None) -> Iterator[None]:
    """Inference (generation) under ``dtype`` autocast, the frozen weights cast once for the call
    (``FrozenCopies``; the caller checked they fit in memory); None: as the weights are. Measured
    on the CPU: SmolLM2 wrote 128 answers in 11.5 s instead of 18.4 s, 123 of them the same."""
    with FrozenCopies(model, dtype).swapped(), torch.autocast(model.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        yield


