"""Training the student's adapter on the teacher's answers (output-space distillation's loop):
the answers served as training reaches them (``TeacherAnswers``), the learning-rate schedule, the
early-stopping rules, and the loop itself (``distill_on_answers``)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .generative import Example, FrozenCopies, answer_nats_and_spans, bits_per_byte, decoder_start, encode_examples

MIN_GAIN = 0.01  # a held-out check improves when bits per byte fall by more than 1% of the best so far


class TeacherAnswers:
    """The teacher's answers to the training prompts, written as training reaches them: the prompts
    in one seeded shuffled order, answered ``chunk`` at a time (a generation batch), so a run that
    stops early never pays for answers it would not read. Every answer is written once; after the
    first pass, epochs reshuffle the answers already written; answers are served in runs of
    ``group`` of about the same length. Empty answers (the teacher wrote nothing) are dropped.
    ``last_unseen`` says whether the last batch was all first reads: the student's loss on it,
    before it learns from it, is a held-out measurement for free."""

    def __init__(self, prompts: Sequence[str], write: Callable[[list[str]], list[Example]], *, seed: int, chunk: int, group: int = 1):
        self._rng = random.Random(seed)
        self._unwritten = list(prompts)
        self._rng.shuffle(self._unwritten)
        self._write, self._chunk, self._group = write, chunk, group
        self.written: list[Example] = []  # every non-empty answer so far, in the order written
        self.empty = 0  # prompts the teacher wrote nothing for
        self._queue: list[tuple[Example, bool]] = []  # (answer, read for the first time)
        self.last_unseen = False

    @property
    def prompts_left(self) -> int:
        return len(self._unwritten)

    def first(self, count: int) -> list[str]:
        """The next ``count`` prompts in the shuffled order (to write now, e.g. to probe how answers end)."""
        return self._unwritten[:count]

    def add(self, prompts: Sequence[str], answers: Sequence[Example]) -> None:
        """The answers to ``prompts`` (written elsewhere, as the probe's): served next, and those
        prompts not written again. By the prompts as given, not as an answer holds them: a chat
        prompt's answer holds it in the target's chat template."""
        done = set(prompts)
        self._unwritten = [p for p in self._unwritten if p not in done]
        kept = [a for a in answers if a.answer.strip()]
        self.empty += len(answers) - len(kept)
        self.written += kept
        self._queue = self._alike_in_runs(self._queue + [(a, True) for a in kept])

    def _alike_in_runs(self, queue: list[tuple[Example, bool]]) -> list[tuple[Example, bool]]:
        """The answers waiting to be served (what is left of the last ones, and the new), in runs of
        ``group`` of about the same length (characters), the full runs in a seeded order and a short
        one last, to be grouped again with the next answers: a batch of one run pads little.
        Measured on ner's prompts in batches of 4: random batches hold 24% padding, runs cut from 32
        sorted answers 5%."""
        if self._group <= 1:
            return queue
        ordered = sorted(queue, key=lambda item: len(item[0].prompt) + len(item[0].answer))
        runs = [ordered[i : i + self._group] for i in range(0, len(ordered), self._group)]
        short = [runs.pop()] if runs and len(runs[-1]) < self._group else []
        self._rng.shuffle(runs)
        return [item for run in runs + short for item in run]

    def batch(self, size: int) -> list[Example]:
        """The next ``size`` answers: written ones not yet read, else newly written, else another epoch."""
        while len(self._queue) < size:
            if self._unwritten:
                chunk, self._unwritten = self._unwritten[: self._chunk], self._unwritten[self._chunk :]
                self.add(chunk, self._write(chunk))
            elif self.written:  # an epoch over what was written
                self._queue = self._alike_in_runs(self._queue + [(a, False) for a in self._rng.sample(self.written, len(self.written))])
            else:
                raise ValueError("the teacher wrote no answer to any training prompt")
        batch, self._queue = self._queue[:size], self._queue[size:]
        self.last_unseen = all(unseen for _, unseen in batch)
        return [a for a, _ in batch]


@dataclass(frozen=True)
class DistillRun:
    steps: int  # steps run (early stopping may end it before the cap)
    best_step: int  # the step whose adapter is kept (0: the start was best)
    held_out_bpb: tuple[tuple[int, float], ...]  # (step, held-out bits per byte): the start, any check, the end
    final_loss: float
    cooldown_from: int | None = None  # where an early end's cool-down began (None: the rate fell linearly to the cap)
    unseen_bpb: tuple[tuple[int, float], ...] = ()  # (step, bits per byte of the window's answers, each read before learning from it)


def decay_rate(done: int, *, steps: int, cooldown: int, early_end: int | None = None) -> float:
    """The learning-rate factor of the step after ``done`` steps: falling linearly from 1 to 0 at
    the cap ``steps`` (as transformers' Trainer does by default); a run that ends early, at
    ``early_end``, falls from where it was to 0 there, over its last ``cooldown`` steps."""
    start = None if early_end is None else early_end - cooldown
    if start is None or done < start:
        return max(0.0, 1 - done / steps)
    return max(0.0, (1 - start / steps) * (early_end - done) / cooldown)


def no_gain(values: Sequence[float], patience: int) -> bool:
    """Whether the last ``patience`` values (checks on one fixed set) all failed to improve on the
    best before them by more than ``MIN_GAIN``."""
    waited = 0
    for index in range(1, len(values)):
        waited = 0 if values[index] < (1 - MIN_GAIN) * min(values[:index]) else waited + 1
    return waited >= patience


def no_window_gain(values: Sequence[float], patience: int) -> bool:
    """Whether the mean of the last ``patience`` windows failed to improve by more than ``MIN_GAIN``
    on the mean of the ``patience`` before them. Each window measures other answers, easier or
    harder (measured: +-6% between windows on a plateau that a fixed held-out set saw still
    falling), so one window is no evidence and the best of them is a lucky one."""
    if len(values) < 2 * patience:
        return False
    recent, before = values[-patience:], values[-2 * patience : -patience]
    return sum(recent) >= (1 - MIN_GAIN) * sum(before)


def distill_on_answers(student, tokenizer, train: TeacherAnswers, held_out: Sequence[Example], *, steps: int, lr: float, seed: int,
                       batch_size: int, max_length: int, eval_every: int, patience: int, autocast: torch.dtype | None = None,
                       start_bpb: float | None = None, cast_once: bool = False, span_weight: float = 0.0,
                       on_step: Callable[[float], None] = lambda loss: None) -> DistillRun:
    """Train the student's adapter on the teacher's answers (cross-entropy per answer token, prompt
    masked). The learning rate falls linearly from ``lr`` to zero at the ``steps`` cap. The model
    stays in eval mode, so no dropout: a run reads each answer once (epochs only where prompts are
    fewer than its steps need), and the adapter's dropout took an eighth of a step on the CPU.

    Every ``eval_every`` steps the run checks whether it still gains. While every answer of those
    steps was read for the first time, the check is free: the bits per byte of those answers,
    each measured just before the student learnt from it (prequential, as held-out as the held-out
    prompts); the run stalls when the mean of the last ``patience`` such windows is no better than
    that of the ``patience`` before (``no_window_gain``). Once answers repeat (fewer prompts than
    steps need), the check runs the held-out prompts, and the run stalls after ``patience`` checks
    without an improvement of more than ``MIN_GAIN``. A stalled run ends ``eval_every`` steps
    later, its rate falling to zero over those steps. The held-out prompts
    are measured at the start and the end (and at each check that runs them); the adapter kept is
    the best of those measurements, the start included. ``train`` serves the batches. ``autocast``:
    the dtype the training steps compute in (placement.training_autocast); checks never autocast.
    ``cast_once``: the steps read copies of the frozen weights cast to ``autocast`` once
    (``FrozenCopies``; the caller checked they fit in memory). ``start_bpb``: the start's held-out
    bits per byte when the caller knows it (a fresh adapter is the target base), so it is not
    measured again."""
    params = [p for p in student.parameters() if p.requires_grad]
    copies = FrozenCopies(student, autocast if cast_once else None)
    start = decoder_start(student)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        cooldown = max(1, min(eval_every, steps))
        end = steps  # the last step: the cap, or the end of a cool-down begun early
        evaluate = lambda: bits_per_byte(student, tokenizer, held_out, max_length=max_length)  # noqa: E731
        held, unseen = [(0, evaluate() if start_bpb is None else start_bpb)], []
        best, best_step = [p.detach().clone() for p in params], 0
        window = [0.0, 0, 0]  # nats and bytes of this window's unseen answers, and its unseen steps
        loss_value, step = float("nan"), 0
        student.eval()
        while step < end:
            chunk = train.batch(batch_size)
            with copies.swapped(), torch.autocast(student.device.type, dtype=autocast, enabled=autocast is not None):
                # answers carry the teacher's likelihood (so the batch its spans) only when the span term is on
                nats, tokens, divergence = answer_nats_and_spans(student, encode_examples(tokenizer, chunk, max_length=max_length,
                                                                                          decoder_start=start))
            if train.last_unseen:
                window = [window[0] + nats.item(), window[1] + sum(len(e.answer.encode("utf-8")) for e in chunk), window[2] + 1]
            loss = (nats + span_weight * divergence) / max(tokens, 1)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = lr * decay_rate(step, steps=steps, cooldown=cooldown, early_end=end if end < steps else None)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            loss_value = loss.item()
            on_step(loss_value)
            if step % eval_every and step != end:
                continue
            if step == end or window[2] < eval_every:  # the end, or answers read before: the held-out prompts
                held.append((step, evaluate()))
                if held[-1][1] < min(v for _, v in held[:-1]):  # the best adapter measured is the one kept
                    best, best_step = [p.detach().clone() for p in params], step
                stalled = no_gain([v for _, v in held], patience)
            else:
                unseen.append((step, window[0] / math.log(2) / max(1, window[1])))
                stalled = no_window_gain([v for _, v in unseen], patience)
            window = [0.0, 0, 0]
            if stalled and step + cooldown < end:  # no more gain: cool down now, and stop after it
                end = step + cooldown
        with torch.no_grad():
            for param, kept in zip(params, best):
                param.copy_(kept)
    return DistillRun(steps=step, best_step=best_step, held_out_bpb=tuple((s, round(v, 4)) for s, v in held), final_loss=loss_value,
                      cooldown_from=end - cooldown if end < steps else None, unseen_bpb=tuple((s, round(v, 4)) for s, v in unseen))
