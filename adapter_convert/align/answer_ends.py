"""How the teacher's answers end, read from its first answers (the probe): whether they are their
first lines (a teacher that never learnt to stop runs on after them), and which the token budget
cut short, so the budget can rise to fit them. Pure rules on written answers, and the one
measurement that decides between them (``line_effect``: the adapter's own effect past the first
line)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .generative import Example, bits_per_byte

# the teacher's answers are one line when its adapter's effect after their first line (bits per byte
# saved) is under this share of its effect on it (measured 0.07 to 0.46 on three one-line tasks'
# probes; a multi-line answer keeps the adapter's effect on every line)
AFTER_SHARE = 0.5


def repeats_after_first_line(text: str, *, words: int = 4) -> bool:
    """Whether the text after the first line repeats itself, as greedy decoding does once a model
    has run on past its answer: one of its lines (of 3+ visible characters) again, or ``words``
    consecutive words that the answer (its first line included) has already written."""
    body = text.lstrip("\n")
    first, _, rest = body.partition("\n")
    lines = [line.strip() for line in rest.split("\n")]
    lines = [line for line in lines if len(line) >= 3]
    if len(lines) != len(set(lines)):
        return True
    written, start = re.findall(r"\w+", body.lower()), len(re.findall(r"\w+", first.lower()))
    seen = set()
    for index in range(len(written) - words + 1):
        gram = tuple(written[index : index + words])
        if index >= start and gram in seen:
            return True
        seen.add(gram)
    return False


def cut_by_budget(answers: Sequence[Example], *, first_lines: bool) -> list[bool]:
    """Which answers the token budget cut (no EOS, stop string or loop ended them): answers longer
    than the budget. With ``first_lines`` (the answers are their first lines: the teacher runs on
    after them), only those cut inside their first line."""
    return [not a.finished and not a.loop and not (first_lines and "\n" in a.answer.lstrip("\n")) for a in answers]


def fitting_budget(answers: Sequence[Example], tokens: Callable[[str], int], *, cap: int) -> int:
    """A token budget for answers (as they will be learnt) that the teacher wrote with a budget of
    ``cap`` and that mostly ended within it: half again the longest, in steps of 16, at most ``cap``."""
    longest = max((tokens(a.answer) for a in answers), default=0)
    return min(cap, max(16, -(-3 * longest // 32) * 16))


def budget_note(cut_first: Sequence[bool], cut_again: Sequence[bool] | None, *, first_budget: int, budget: int, raise_to: int | None,
                adopted: bool) -> str | None:
    """What the run and the card say of the answer budget, or None. ``cut_first``: which probe
    answers the first budget cut (``cut_by_budget``); ``cut_again``: which the budget of
    ``raise_to`` cut when the probe was written again (None: it was not); ``adopted``: those longer
    answers were kept, and ``budget`` fitted to them. A budget that rose says from what to what and
    why; half or more of the answers cut (and not adopted) says to raise ``--max-new-tokens``."""
    too_long, count = sum(cut_first), len(cut_first)
    if budget > first_budget:
        ended = sum(first and not again for first, again in zip(cut_first, cut_again or ()))
        return (f"the budget rose from {first_budget} to {budget} tokens: {too_long} of {count} probe answers ran past "
                f"{first_budget}, {ended} of them ended within {raise_to}")
    if adopted or not count or 2 * too_long < count:
        return None
    beyond = f" (and {sum(cut_again)} longer than {raise_to} too)" if cut_again is not None else ""
    return (f"{too_long} of {count} probe answers were longer than {budget} tokens{beyond} and were cut there: "
            "raise --max-new-tokens if the task's answers are longer")


def one_line_answers(answers: Sequence[Example], *, effect: Callable[[], LineEffect] | None = None, share: float = 0.8) -> str | None:
    """Why the teacher's answers are its first lines, or None. Only when most answers (``share``)
    ran to the token budget, so the teacher never learnt to stop; then the text after the first
    line is shown to be a run-on, not more answer, by either of: at least ``share`` of those
    answers repeat themselves after it (``repeats_after_first_line``, loops cut by ``loop_cut``
    included), or the adapter's own effect
    there, ``effect()`` (measured only when the repeats do not decide), is under ``AFTER_SHARE`` of
    its effect on the first line: past it the base model writes on, the adapter barely shapes it."""
    # ran to the budget past a line break (an answer cut inside its first line has no run-on to tell)
    unfinished = [a for a in answers if not a.finished and "\n" in (a.answer + a.loop).lstrip("\n")]
    if not unfinished or len(unfinished) < share * len(answers):
        return None
    looping = sum(repeats_after_first_line(a.answer + a.loop) for a in unfinished)
    ran_on = f"the first line break: the teacher ran on to the token budget in {len(unfinished)} of {len(answers)} probe answers and "
    if looping >= share * len(unfinished):
        return ran_on + f"repeated itself after the first line in {looping}"
    measured = effect() if effect is not None else None
    if measured is not None and measured.first_line > 0 and measured.after < AFTER_SHARE * measured.first_line:
        return ran_on + (f"its adapter saves {measured.after:.2f} bits per byte after the first line against {measured.first_line:.2f} "
                         f"on it (repeated itself in {looping})")
    return None


@dataclass(frozen=True)
class LineEffect:
    """What the teacher's adapter does to its own answers, in bits per byte it saves (the answer's
    cost without the adapter minus with it): on their first lines (the line break included) and on
    what follows them."""

    first_line: float
    after: float


@torch.no_grad()
def line_effect(model, tokenizer, answers: Sequence[Example], *, max_length: int) -> LineEffect:
    """The adapter's effect on the first lines of ``answers`` and on the text after them (``model``
    a peft model; four scoring passes, for the few probe answers). Per byte, so the two parts compare."""
    firsts = [first_line(a) for a in answers]
    first_bytes = sum(len(a.answer.encode("utf-8")) for a in firsts)
    after_bytes = sum(len(a.answer.encode("utf-8")) for a in answers) - first_bytes

    def bits(examples) -> float:  # summed bits of the answers, given their prompts
        return bits_per_byte(model, tokenizer, examples, max_length=max_length) * sum(len(e.answer.encode("utf-8")) for e in examples)

    with_first, with_all = bits(firsts), bits(answers)
    with model.disable_adapter():
        without_first, without_all = bits(firsts), bits(answers)
    first = (without_first - with_first) / max(1, first_bytes)
    after = ((without_all - without_first) - (with_all - with_first)) / max(1, after_bytes)
    return LineEffect(first_line=first, after=after)


def first_line(example: Example) -> Example:
    text = example.answer
    start = len(text) - len(text.lstrip("\n"))  # an answer may open with its line break
    end = text.find("\n", start)
    if end < 0:  # one line, up to a loop or the budget
        return dataclasses.replace(example, finished=True)
    return dataclasses.replace(example, answer=text[: end + 1], finished=True, loop="")
