"""Output-space distillation of a causal LM across tokenizers (align/generative.py, align/fresh.py):
known answers for the pure pieces, and a tiny teacher with a learnt answer moved onto a model of
another family, width and tokenizer with only its prompts."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from typer.testing import CliRunner

from adapter_convert.align.generative import (IGNORE, Example, answer_nats, answer_nats_and_spans, answer_positions, binary_kl, cut_at_stop,
                                              SURE, _student_spans, cut_before, encode_examples, generate, likelihood_at_boundaries,
                                              shared_spans,
                                              masked_nats, token_f1)
from adapter_convert.align.session import restart_marker
from adapter_convert.cli import app
from helpers import all_module_names, tiny_config

WORDS = "red green blue cat dog bird tree river stone cloud apple bread water fire light night".split()
ANSWER = " blue sky\n"


def byte_bpe(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) trained on the test's words; two sizes cut text differently."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [f"Text: {a} {b}\nAnswer:{ANSWER}" for a in WORDS for b in WORDS]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")


def prompts(count: int, offset: int = 0) -> list[str]:
    return [f"Text: {WORDS[(i + offset) % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]}\nAnswer:" for i in range(count)]


# ---- pure pieces ---------------------------------------------------------------------------------


def test_answer_positions_take_the_tokens_that_start_in_the_answer():
    prompt = "Q: hi\nA:"
    #        Q     :      " hi"   "\n"    "A:"    " ye"    "s"     special
    offsets = [(0, 1), (1, 2), (2, 5), (5, 6), (6, 8), (8, 11), (11, 12), (0, 0)]
    assert answer_positions(offsets, len(prompt)) == [False] * 5 + [True, True, False]
    # a token straddling the boundary ("A:" merged with " ye") belongs to the prompt
    assert answer_positions([(0, 6), (6, 11), (11, 12)], len(prompt)) == [False, False, True]


def test_answer_positions_on_a_real_tokenization():
    tokenizer = byte_bpe(300)
    prompt, answer = "Text: red cat\nAnswer:", " blue sky\n"
    encoded = tokenizer(prompt + answer, return_offsets_mapping=True)
    keep = answer_positions(encoded["offset_mapping"], len(prompt))
    answer_ids = [i for i, k in zip(encoded["input_ids"], keep) if k]
    assert tokenizer.decode(answer_ids) == answer


def test_masked_nats_is_the_cross_entropy_of_the_labelled_next_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 5], [IGNORE, 1, IGNORE, 6]])
    expected = (F.cross_entropy(logits[0, 1], torch.tensor(3), reduction="sum") + F.cross_entropy(logits[0, 2], torch.tensor(5))
                + F.cross_entropy(logits[1, 0], torch.tensor(1)) + F.cross_entropy(logits[1, 2], torch.tensor(6)))
    assert torch.allclose(masked_nats(logits, labels), expected)


def test_shared_spans_are_where_both_tokenizations_cut_the_answer():
    # " ORG: Tuvalu" cut by the teacher as " OR|G|:| Tu|valu" (log-probabilities -0.7, -0.1, -0.2, -0.5, -0.3)
    # and by the student as " ORG|:| Tuv|alu": both cut at 4 (after "G"), 5 (after ":") and 12
    teacher = [(3, -0.7), (4, -0.8), (5, -1.0), (8, -1.5), (12, -1.8)]
    spans = shared_spans(teacher, [4, 5, 9, 12])
    assert [(a, b) for a, b, _ in spans] == [(0, 4), (4, 5), (5, 12)]
    assert [round(lp, 6) for *_, lp in spans] == [-0.8, -0.2, -0.8]
    # the student merged the answer's first character into the prompt's last token: its answer starts at 1,
    # where the teacher does not cut, so the first shared span starts at 4
    assert [(a, b) for a, b, _ in shared_spans(teacher, [4, 5, 9, 12], student_start=1)] == [(4, 5), (5, 12)]
    assert shared_spans([], [4, 5]) == []  # no teacher likelihood: nothing to compare


def test_binary_kl_of_a_span_is_the_divergence_of_two_bernoullis():
    t, s = torch.tensor([math.log(0.5), math.log(0.9), math.log(0.3)]), torch.tensor([math.log(0.9), math.log(0.9), math.log(0.3)])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert torch.allclose(binary_kl(t, s), torch.tensor([expected, 0.0, 0.0]), atol=1e-6)
    assert float(binary_kl(torch.tensor(0.0), torch.tensor(-20.0))) > 10  # a sure span the student finds unlikely costs much
    assert torch.isfinite(binary_kl(torch.tensor(0.0), torch.tensor(0.0)))  # both sure: finite (clamped), not nan
    # a student sure where the teacher hesitated: pushed down (a positive gradient on its log-probability), never by a spike
    for sure in (0.0, -1e-7, -1e-5):
        s = torch.tensor(sure, requires_grad=True)
        binary_kl(torch.tensor(math.log(0.5)), s).backward()
        assert 0 < float(s.grad) <= 0.5 / SURE + 1


def test_a_span_over_a_character_split_into_byte_tokens_takes_all_of_them():
    # "日" is three byte tokens for a byte-level BPE that never saw it, each with the character's span
    tokenizer = byte_bpe(300)
    prompt, answer = "Text: red cat\nAnswer:", " 日 sky\n"
    encoded = tokenizer(prompt + answer, return_offsets_mapping=True)
    start = len(prompt)
    pieces = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if (a - start, b - start) == (1, 2)]
    assert len(pieces) == 3
    likelihood = tuple((end, -0.1 * end) for end in range(1, len(answer) + 1))  # a teacher that cut every character
    spans = _student_spans(Example(prompt, answer, likelihood=likelihood), encoded["offset_mapping"],
                           answer_positions(encoded["offset_mapping"], start))
    assert (pieces[0], pieces[-1]) in [(a, b) for a, b, _ in spans]


def test_spans_between_two_tokenizations_that_cut_the_answer_differently():
    teacher, student = byte_bpe(300), byte_bpe(420)
    prompt, answer = "Text: green river\nAnswer:", " blue sky over the green river\n"
    ids = teacher(answer, add_special_tokens=False)["input_ids"]
    likelihood = likelihood_at_boundaries(teacher, ids, [-0.5] * len(ids), answer)
    student_ends = [b - len(prompt) for a, b in student(prompt + answer, return_offsets_mapping=True)["offset_mapping"] if a >= len(prompt)]
    assert [e for e, _ in likelihood] != student_ends  # the two cut the answer differently
    spans = shared_spans(likelihood, student_ends)
    # the spans tile the answer from its start to its end, each where both cut, each the teacher's sum over its tokens
    assert spans[0][0] == 0 and spans[-1][1] == len(answer) and all(a == b for (_, a, _), (b, _, _) in zip(spans, spans[1:]))
    teacher_ends, cut = {e for e, _ in likelihood}, set(student_ends)
    assert all(b in teacher_ends and b in cut for _, b, _ in spans)
    assert all(math.isclose(lp, -0.5 * sum(a < e <= b for e in teacher_ends)) for a, b, lp in spans)
    assert len(spans) < len(ids)  # some spans hold several teacher tokens


def test_the_teachers_likelihood_is_kept_at_its_token_boundaries_inside_the_answer():
    tokenizer = byte_bpe(300)
    text = " blue sky\nText: red"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    logprobs = [-0.1 * (i + 1) for i in range(len(ids))]
    answer = " blue sky\n"  # cut at its first line: boundaries past it are dropped
    found = likelihood_at_boundaries(tokenizer, ids, logprobs, answer)
    ends = [len(tokenizer.decode(ids[:k])) for k in range(1, len(ids) + 1)]
    assert [e for e, _ in found] == [e for e in ends if e <= len(answer)] and found[-1][0] == len(answer)
    assert all(math.isclose(lp, sum(logprobs[: ends.index(e) + 1])) for e, lp in found)


def test_the_span_term_reads_the_students_log_probability_of_each_shared_span():
    torch.manual_seed(0)
    tokenizer = byte_bpe(300)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", 2, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                                         bos_token_id=1, max_position_embeddings=64)).eval()
    answers = [" blue sky\n", " red\n"]
    examples = []
    for prompt, answer in zip(["Text: red cat\nAnswer:", "Text: a longer green river\nAnswer:"], answers):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        likelihood = likelihood_at_boundaries(tokenizer, ids, [-0.2] * len(ids), answer)
        examples.append(Example(prompt, answer, ended=True, likelihood=likelihood))
    batch = encode_examples(tokenizer, examples, max_length=64)
    # the student's own tokenization is the teacher's here: every token is a span of its own
    assert batch["span_columns"].shape[0] == sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    with torch.no_grad():
        nats, tokens, divergence = answer_nats_and_spans(model, batch)
        plain, plain_tokens = answer_nats(model, batch)
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       position_ids=batch["position_ids"]).logits.float(), -1)
    assert torch.allclose(nats, plain, atol=1e-4) and tokens == plain_tokens
    by_hand = [logp[r, a - 1 : b, :].gather(-1, batch["input_ids"][r, a : b + 1, None]).sum() for r, a, b in batch["span_columns"].tolist()]
    assert torch.allclose(divergence, binary_kl(batch["span_teacher"], torch.stack(by_hand)).sum(), atol=1e-4)


def test_token_f1_exact_and_partial():
    assert token_f1("PER: Ada Lovelace", "PER: Ada Lovelace") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # predicted "per : ada" (3 words), reference "per : ada lovelace" (4): precision 1, recall 3/4
    assert math.isclose(token_f1("PER: Ada", "PER: Ada Lovelace"), 2 * 0.75 / 1.75)


def test_stop_strings_and_restart_markers():
    assert cut_at_stop(" PER: Ada\nSentence: x", ["\n"]) == (" PER: Ada\n", True)
    assert cut_at_stop(" PER: Ada", ["\n"]) == (" PER: Ada", False)
    assert cut_before(" PER: Ada\nSentence: x", ["Sentence:"]) == " PER: Ada\n"
    assert restart_marker(["Sentence: a b\nEntities:", "Sentence: c\nEntities:"]) == ("Sentence:",)
    assert restart_marker(["Apple pie", "Apples"]) == ()  # a shared first word's start is no marker
    assert restart_marker(["### Q: one", "### Q: two"]) == ("### Q:",)


def test_encoded_examples_are_left_padded_with_labels_on_the_answer_and_eos_where_the_teacher_stopped():
    tokenizer = byte_bpe(300)
    short, long = Example("Text: red cat\nAnswer:", " blue", ended=True), Example("Text: green river\nAnswer:", " blue sky\n")
    batch = encode_examples(tokenizer, [short, long], max_length=64)
    assert batch["input_ids"].shape == batch["labels"].shape
    for row, example in enumerate((short, long)):
        labelled = [int(i) for i in batch["labels"][row] if i != IGNORE]
        if example.ended:
            assert labelled[-1] == tokenizer.eos_token_id
            labelled = labelled[:-1]
        assert tokenizer.decode(labelled) == example.answer
        assert batch["attention_mask"][row, -1] == 1  # left padding: every row ends with its answer
    pads = int((batch["attention_mask"][0] == 0).sum())
    assert batch["position_ids"][0, pads] == 0 and batch["position_ids"][0, -1] == batch["attention_mask"][0].sum() - 1


def test_teacher_answers_are_written_only_as_training_reaches_them():
    from adapter_convert.align.answer_training import TeacherAnswers

    asked: list[list[str]] = []

    def write(prompts):  # a teacher that writes nothing for "p3"
        asked.append(list(prompts))
        return [Example(p, "" if p == "p3" else f" a{p}") for p in prompts]

    prompts = [f"p{i}" for i in range(10)]
    answers = TeacherAnswers(prompts, write, seed=0, chunk=4)
    first = answers.batch(3)
    assert len(asked) == 1 and len(asked[0]) == 4 and answers.prompts_left == 6  # one chunk written, no more
    assert [e.prompt for e in first] == asked[0][:3] and all(e.answer == f" a{e.prompt}" for e in first)
    seen = first + answers.batch(3) + answers.batch(3)
    assert sum(map(len, asked)) == 10 and answers.prompts_left == 0 and answers.empty == 1
    assert sorted(e.prompt for e in seen) == sorted(e.prompt for e in answers.written) == [p for p in prompts if p != "p3"]
    epoch = answers.batch(9)  # after the first pass: an epoch over what was written, nothing written again
    assert sum(map(len, asked)) == 10 and sorted(e.prompt for e in epoch) == sorted(e.prompt for e in seen)
    # the probe's answers, written beforehand, are served first and not written again
    probe = [Example("p0", " x"), Example("p1", " y")]
    ahead = TeacherAnswers(["p0", "p1", "p2"], lambda ps: [Example(p, " z") for p in ps], seed=0, chunk=8)
    ahead.add(["p0", "p1"], probe)
    assert ahead.batch(2) == probe and ahead.prompts_left == 1 and [e.answer for e in ahead.batch(1)] == [" z"]
    # a batch is unseen while all its answers are first reads: the student's loss on it is a held-out measurement
    fresh = TeacherAnswers(["p0", "p1", "p2"], lambda ps: [Example(p, " z") for p in ps], seed=0, chunk=8)
    fresh.batch(2)
    assert fresh.last_unseen
    fresh.batch(2)  # the third answer, then the first of an epoch: read before
    assert not fresh.last_unseen
    with pytest.raises(ValueError, match="no answer"):
        TeacherAnswers(["p3"], write, seed=0, chunk=1).batch(1)


def test_teacher_answers_come_in_runs_of_alike_length():
    """With ``group``, each chunk written is served in runs of ``group`` answers of about the same
    length (a batch of one run pads little); every answer still comes once."""
    from adapter_convert.align.answer_training import TeacherAnswers

    prompts_by_length = ["p" * n for n in (1, 9, 2, 8, 3, 7, 4, 6)]
    answers = TeacherAnswers(prompts_by_length, lambda ps: [Example(p, " a") for p in ps], seed=0, chunk=4, group=2)
    served = [frozenset(e.prompt for e in answers.batch(2)) for _ in range(4)]
    chunks = [sorted((e.prompt for e in answers.written[i : i + 4]), key=len) for i in (0, 4)]  # as written: chunk by chunk
    runs = {frozenset(chunk[i : i + 2]) for chunk in chunks for i in (0, 2)}
    assert set(served) == runs and len(served) == 4  # the two shortest of a chunk together, the two longest together
    plain = TeacherAnswers(prompts_by_length, lambda ps: [Example(p, " a") for p in ps], seed=0, chunk=4)
    assert [e.prompt for e in plain.batch(4)] == [e.prompt for e in plain.written]  # group 1: as written
    # an empty answer leaves a short run: it is served last and grouped again with what comes next,
    # so the full runs stay whole (shuffled in among them, it would split every batch after it)
    for seed in range(6):
        lengths = (1, 2, 3, 4, 10, 11, 12, 13)
        leftover = TeacherAnswers(["p" * n for n in lengths], lambda ps: [Example(p, "" if len(p) == 13 else " a") for p in ps],
                                  seed=seed, chunk=8, group=2)
        first = {frozenset(len(e.prompt) for e in leftover.batch(2)) for _ in range(3)}
        assert first == {frozenset((1, 2)), frozenset((3, 4)), frozenset((10, 11))}, (seed, first)


def test_frozen_copies_give_autocasts_numbers_and_leave_the_model_as_it_was():
    """The frozen linear weights' copies in the autocast dtype give the very logits and adapter
    gradients autocast gives when it casts them itself; the tied output head is untied only while
    swapped, the adapter's weights are never copied."""
    from adapter_convert.align.generative import FrozenCopies

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config("llama", 2, tie_word_embeddings=True))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embedding.weight
    before = dict(model.named_parameters())
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    assert FrozenCopies.extra_bytes(model, torch.bfloat16) == {torch.device("cpu"): sum(m.weight.numel() * 2 for m in frozen)}
    copies = FrozenCopies(model, torch.bfloat16)
    ids = torch.randint(3, 128, (2, 7))

    def logits_and_grads(swapped: bool):
        with copies.swapped() if swapped else contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16):
            if swapped:
                assert head.weight.dtype == torch.bfloat16 and embedding.weight.dtype == torch.float32
                assert all(m.weight.dtype == torch.bfloat16 for m in frozen)
                assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
            logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        return logits, grads

    plain, plain_grads = logits_and_grads(swapped=False)
    cast, cast_grads = logits_and_grads(swapped=True)
    assert torch.equal(plain, cast) and plain_grads.keys() == cast_grads.keys()
    assert all(torch.equal(plain_grads[n], cast_grads[n]) for n in plain_grads)
    assert dict(model.named_parameters()) == before and head.weight is embedding.weight  # the originals, tied again


def test_frozen_copies_cover_the_gpt2_familys_conv1d():
    """gpt2's projections are transformers' Conv1D, not nn.Linear: they are copied too (else autocast
    casts them on every decoding step), with autocast's own numbers."""
    from adapter_convert.align.generative import FrozenCopies

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", 2)).eval()
    conv = model.transformer.h[0].attn.c_attn
    copies = FrozenCopies(model.requires_grad_(False), torch.bfloat16)
    ids = torch.randint(3, 128, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids).logits
        with copies.swapped():
            assert conv.weight.dtype == torch.bfloat16
            cast = model(input_ids=ids).logits
    assert torch.equal(plain, cast) and conv.weight.dtype == torch.float32


def test_distillation_steps_run_without_dropout():
    """The steps keep the model in eval mode: with the adapter's dropout at 0.9 and a learning rate
    of 0, the step's loss is the loss of the answers measured in eval mode, to the last digit."""
    from adapter_convert.align.generative import answer_nats
    from adapter_convert.align.answer_training import TeacherAnswers, distill_on_answers

    tokenizer = byte_bpe(300)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config("llama", 2, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                                        bos_token_id=1))
    student = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.9, target_modules=all_module_names("llama"),
                                              task_type="CAUSAL_LM", init_lora_weights=False))
    train = TeacherAnswers(prompts(4), lambda ps: [Example(p, ANSWER) for p in ps], seed=0, chunk=4)
    run = distill_on_answers(student, tokenizer, train, [Example(p, ANSWER) for p in prompts(2, offset=7)], steps=1, lr=0.0, seed=0,
                             batch_size=4, max_length=64, eval_every=10, patience=3)
    with torch.no_grad():
        nats, tokens = answer_nats(student.eval(), encode_examples(tokenizer, train.written, max_length=64))
    assert run.final_loss == pytest.approx(float(nats / tokens), rel=1e-6)
    student.train()  # the same answers with dropout on score otherwise
    with torch.no_grad():
        dropped, _ = answer_nats(student, encode_examples(tokenizer, train.written, max_length=64))
    assert float(dropped / tokens) != pytest.approx(run.final_loss, rel=1e-3)


def test_the_learning_rate_falls_to_zero_at_the_cap_or_at_an_early_end():
    from adapter_convert.align.answer_training import decay_rate

    to_cap = [decay_rate(done, steps=10, cooldown=4) for done in range(11)]
    assert to_cap == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])  # linear, as transformers' Trainer
    # a run that ends early, at step 60 of 100: from 0.44 at step 56 down to zero at 60, over its last 4 steps
    early = [decay_rate(done, steps=100, cooldown=4, early_end=60) for done in range(50, 61)]
    assert early == pytest.approx([0.5, 0.49, 0.48, 0.47, 0.46, 0.45, 0.44, 0.33, 0.22, 0.11, 0.0])


def test_a_run_stalls_on_a_fixed_set_after_patience_checks_and_on_windows_only_by_their_mean():
    from adapter_convert.align.answer_training import no_gain, no_window_gain

    assert not no_gain([1.0, 0.5, 0.5, 0.5], patience=3)  # two checks without a gain
    assert no_gain([1.0, 0.5, 0.5, 0.5, 0.499], patience=3)  # three: 0.499 is no 1% gain on 0.5
    assert not no_gain([1.0, 0.5, 0.5, 0.5, 0.49], patience=3)  # 2% is
    # measured windows of the real ner run: a lucky window (0.1767) would stop a best-so-far rule at step 60
    # while a fixed held-out set still fell 0.19 -> 0.11; the means of three windows still gain
    windows = [0.6712, 0.2864, 0.1767, 0.181, 0.1988, 0.1804]
    assert no_gain(windows, patience=3) and not no_window_gain(windows, patience=3)
    assert no_window_gain(windows[:3] + [0.2, 0.2, 0.2, 0.2, 0.2, 0.199], patience=3)  # a plateau over six windows
    assert not no_window_gain([0.3, 0.3, 0.3, 0.3, 0.3], patience=3)  # too few windows to say


# ---- end to end: a teacher that learnt an answer, moved across families and tokenizers ---------------


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> Path:
    """A tiny llama teacher whose LoRA learnt to answer ANSWER; a tiny qwen2 target of other widths
    and another tokenizer; the prompts (no answers) in a .jsonl file."""
    root = tmp_path_factory.mktemp("taught")
    teacher_tok, student_tok = byte_bpe(300), byte_bpe(420)
    assert teacher_tok.get_vocab() != student_tok.get_vocab()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", 2, vocab_size=len(teacher_tok), pad_token_id=0, eos_token_id=1,
                                                           bos_token_id=1, max_position_embeddings=64))
    teacher.save_pretrained(root / "teacher")
    teacher_tok.save_pretrained(root / "teacher")
    student = AutoModelForCausalLM.from_config(tiny_config("qwen2", 2, vocab_size=len(student_tok), hidden_size=48, num_attention_heads=6,
                                                           num_key_value_heads=3, head_dim=8, intermediate_size=96, pad_token_id=0,
                                                           eos_token_id=1, bos_token_id=1, max_position_embeddings=64))
    student.save_pretrained(root / "student")
    student_tok.save_pretrained(root / "student")
    model = get_peft_model(teacher, LoraConfig(r=4, lora_alpha=8, target_modules=all_module_names("llama"), task_type="CAUSAL_LM"))
    teach_answer(model, teacher_tok, [Example(p, ANSWER) for p in prompts(48)], steps=80, adapter=root / "adapter", base=root / "teacher")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(40, offset=2)))
    return root


def teach_answer(model, tokenizer, examples: list[Example], *, steps: int, adapter: Path, base: Path, check: list[str] | None = None,
                 answer: str = ANSWER) -> None:
    """Train the peft ``model``'s adapter on ``examples`` (8 a step), check that it writes ``answer`` to
    prompts it never saw (``check``; default: ``prompts``), and save it to ``adapter`` naming ``base`` as its base model."""
    from adapter_convert.align.generative import answer_nats, decoder_start

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    for step in range(steps):
        batch = encode_examples(tokenizer, examples[(step * 8) % len(examples):][:8], max_length=64, decoder_start=decoder_start(model))
        nats, tokens = answer_nats(model, batch)
        (nats / tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
    written = generate(model, tokenizer, check or prompts(8, offset=5), max_new_tokens=len(tokenizer(answer)["input_ids"]) + 2, stops=("\n",),
                       max_length=64)
    assert all(w.answer == answer for w in written), [w.answer for w in written]  # the teacher does its task
    model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(base)}))


def convert(root: Path, out: Path, *options: str):
    return CliRunner().invoke(app, ["convert", str(root / "adapter"), "--target", str(root / "student"), "--out", str(out), "--json",
                                    "--calibration-data", str(root / "prompts.jsonl"), "--max-new-tokens", "6", *options])


def test_auto_distils_a_fresh_adapter_on_the_teachers_answers_and_it_writes_them(taught, tmp_path):
    out = tmp_path / "out"
    # this tiny student's held-out bits per byte fall about 1% a check while its greedy answers flip to the
    # teacher's, so early stopping can end on a plateau before they flip, depending on the order the
    # prompts come in (seed 0: step 30, F1 0.5; seeds 1 and 2: F1 1.0); the real models fall 10-80% a check
    result = convert(taught, out, "--stop", "\n", "--distill-steps", "60", "--lr", "2e-2", "--seed", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "fresh adapter + distillation"
    report = summary["alignment"]
    assert report["modules"] is None  # nothing calibrated: a fresh start
    fidelity = report["fidelity"]
    # 40 prompts: 8 held out; the teacher answers a training prompt only when distillation reaches it
    assert fidelity["held_out_prompts"] == 8 and fidelity["train_prompts"] <= 32 and fidelity["stop"] == ["\n"]
    assert report["calibration"]["prompts"] == fidelity["train_prompts"] + fidelity["held_out_prompts"]
    assert fidelity["bits_per_byte"]["converted"] < fidelity["bits_per_byte"]["start"] == fidelity["bits_per_byte"]["target base"]
    assert fidelity["token_f1"]["converted"] > fidelity["token_f1"]["target base"]
    assert fidelity["token_f1"]["converted"] >= 0.9 and report["agreement"]["value"] == fidelity["token_f1"]["converted"]
    # what each part computed in: checks in the weights' own dtype, the rest autocast where the machine is fast at it
    assert fidelity["computed_in"]["bits per byte"] == "float32"
    assert set(fidelity["computed_in"]) == {"teacher answers", "training steps", "held-out generations", "bits per byte"}
    assert f"Computed in: teacher answers {fidelity['computed_in']['teacher answers']};" in (out / "README.md").read_text()
    assert report["distill"]["best_step"] > 0
    # the run ends at the cap, or 10 steps (a cool-down) after held-out fidelity stopped improving
    cooldown_from = report["distill"]["cooldown_from"]
    assert report["distill"]["steps"] == (60 if cooldown_from is None else cooldown_from + 10)
    # the written adapter, loaded with peft on the target, writes the teacher's answer to new prompts
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "student"), out)
    from transformers import AutoTokenizer

    written = generate(model, AutoTokenizer.from_pretrained(taught / "student"), prompts(6, offset=11), max_new_tokens=6,
                       stops=("\n",), max_length=64)
    assert sum(w.answer == ANSWER for w in written) >= 5, [w.answer for w in written]
    card = (out / "README.md").read_text()
    assert "### Output-space distillation" in card and "Bits per byte of the teacher's answers" in card
    assert "The start was a new adapter, which changes nothing" in card  # a fresh start is no head start, and the card says so
    # the measured fidelity is the card's model-index, as huggingface_hub parses it, and the summary's fidelity
    results = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert results == {"token_f1_vs_source_adapter": fidelity["token_f1"]["converted"],
                       "exact_match_vs_source_adapter": fidelity["exact_match"]["converted"],
                       "bits_per_byte_of_source_adapter_answers": fidelity["bits_per_byte"]["converted"]}
    assert summary["fidelity"] == {"name": "token F1 of greedy generations vs the source adapter's", "type": "token_f1_vs_source_adapter",
                                   "value": fidelity["token_f1"]["converted"], "data": summary["fidelity"]["data"], "higher_is_better": True}
    assert summary["fidelity"]["data"].startswith(f"{fidelity['held_out_prompts']} held-out prompts")
    assert "--max-new-tokens 6 --batch-size 4 --stop" in card
    # the prompts file was given by its absolute path: the card and the summary name it by its name and
    # content hash, never the machine's folders; the reproduce command passes the name
    digest = hashlib.sha256((taught / "prompts.jsonl").read_bytes()).hexdigest()[:12]
    assert fidelity["prompts"] == report["calibration"]["source"] == f"prompts.jsonl (sha256 {digest})"
    assert str(taught / "prompts.jsonl") not in card and f"prompts.jsonl (sha256 {digest})" in card and "--calibration-data prompts.jsonl" in card


def test_the_span_term_learns_from_the_likelihood_the_teacher_recorded_and_the_card_says_so(taught, tmp_path, monkeypatch):
    from adapter_convert.align import answer_training

    seen = []  # spans the steps compared (the teacher's likelihood came through to the student's batches)

    def spy(model, batch):
        seen.append(len(batch.get("span_columns", ())))
        return answer_nats_and_spans(model, batch)

    monkeypatch.setattr(answer_training, "answer_nats_and_spans", spy)
    out = tmp_path / "out"
    result = convert(taught, out, "--stop", "\n", "--distill-steps", "20", "--lr", "2e-2", "--seed", "1", "--span-weight", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["alignment"]
    assert len(seen) == report["distill"]["steps"] and min(seen) > 0  # every step read spans, of every answer
    assert report["distill"]["span_weight"] == 1.0
    fidelity = report["fidelity"]
    assert fidelity["bits_per_byte"]["converted"] < fidelity["bits_per_byte"]["target base"]
    card = (out / "README.md").read_text()
    assert "with the span likelihood term at weight 1.0" in card and "--span-weight 1.0" in card  # and its command redoes it
    # the term changes what is learnt: the same run without it ends with other weights
    assert convert(taught, tmp_path / "plain", "--stop", "\n", "--distill-steps", "20", "--lr", "2e-2", "--seed", "1").exit_code == 0
    with_term, without = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "plain" / "adapter_model.safetensors")
    assert with_term.keys() == without.keys() and any(not torch.equal(with_term[k], without[k]) for k in with_term)
    assert convert(taught, tmp_path / "bad", "--span-weight", "-1").exit_code == 2 and not (tmp_path / "bad").exists()


def test_output_distillation_caps_at_its_own_default_and_the_command_that_redoes_it_says_so(taught, tmp_path):
    from adapter_convert.pipeline import ConversionRequest, distill_cap, prepare, reproduce_command

    request = ConversionRequest(adapter=str(taught / "adapter"), target=str(taught / "student"), out=tmp_path / "out",
                                calibration_data=str(taught / "prompts.jsonl"), dry_run=True)
    prepared = prepare(request)
    assert prepared.plan.alignment.refine and prepared.request.distill_steps == 200  # early stopping usually ends it first
    assert "--distill-steps 200" in reproduce_command(prepared)
    assert prepare(dataclasses.replace(request, distill_steps=30)).request.distill_steps == 30  # given: kept
    assert distill_cap("TOKEN_CLS") == distill_cap(None) == 100 and distill_cap("SEQ_2_SEQ_LM") == 200  # logits: a fixed 100


def test_too_few_prompts_or_tokens_stop_with_exit_17_saying_how_many(taught, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("hello\n")
    result = CliRunner().invoke(app, ["convert", str(taught / "adapter"), "--target", str(taught / "student"), "--out",
                                      str(tmp_path / "a"), "--calibration-data", str(one)])
    assert result.exit_code == 17, result.output
    assert "at least 4 prompts" in result.output and "holds 1" in result.output
    result = CliRunner().invoke(app, ["convert", str(taught / "adapter"), "--target", str(taught / "student"), "--out",
                                      str(tmp_path / "b"), "--align", "lstsq", "--calibration-data", str(one)])
    assert result.exit_code == 17, result.output
    assert "paired tokens" in result.output and "at least 64" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_one_line_answers_are_measured_from_the_teachers_loops():
    from adapter_convert.align.answer_ends import LineEffect, first_line, one_line_answers, repeats_after_first_line

    looping = Example("p", " PER: Ada\nLOC: Paris\nLOC: Paris\nLOC: Par")
    assert repeats_after_first_line(looping.answer) and not repeats_after_first_line(" PER: Ada\nLOC: Paris\nORG: UN")
    # four words written again, though no whole line repeats (the budget cut the last one short)
    assert repeats_after_first_line(" none\n\nThe premiere aired on February 9, on CBS; none\n\nThe premiere aired on Feb")
    assert repeats_after_first_line(" none\n\nIt was written by Ada Byron King Lovelace, and by Ada Byron King Love")
    assert not repeats_after_first_line(" Ada Byron King Lovelace\nShe wrote the first program for the engine.")
    assert not repeats_after_first_line(" Ada Byron King Lovelace; Ada Byron King Lovelace")  # one line: nothing after it
    assert first_line(looping).answer == " PER: Ada\n" and first_line(Example("p", "\nyes\nno")).answer == "\nyes\n"
    assert "repeated itself after the first line in 5" in one_line_answers([looping] * 5)
    # answers that end by themselves (EOS or a stop string), or do not loop, are left whole
    assert one_line_answers([Example("p", looping.answer, finished=True)] * 5) is None
    assert one_line_answers([Example("p", " a\nb c d\ne f g")] * 5) is None
    # cut inside their first line: no line break, so nothing after it to tell a run-on by, whatever the effect
    assert one_line_answers([Example("p", " a long answer cut")] * 5, effect=lambda: LineEffect(first_line=1.0, after=0.0)) is None


def test_a_loop_is_cut_to_its_run_once_and_ends_its_row():
    from adapter_convert.align.generative import LoopStop, loop_cut

    #            Sl  ade  ;   Bright man  ;   Bright man  ;   Bright man  ;   Bright man  ;
    written = [5, 6, 7] + [8, 9, 7] * 4
    assert loop_cut(written) == 6  # " Slade; Brightman;"
    assert loop_cut(written[:-3]) is None  # three times is not yet a loop
    assert loop_cut([1, 2, 3, 4, 5, 6, 7, 8, 9]) is None and loop_cut([]) is None
    assert loop_cut([4, 4, 4, 4, 4]) == 1 and loop_cut([1, 2, 1, 2, 1, 2, 1, 2]) == 2
    assert loop_cut([1] + [2, 3, 4, 5, 6, 7, 8, 9, 10] * 4) is None  # a run longer than 8 tokens is not looked for
    prompt = [[0, 0, 1], [0, 0, 1]]
    rows = torch.tensor([prompt[0] + written, prompt[1] + [5, 6, 7, 8, 9, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18]])
    assert LoopStop(3)(rows, None).tolist() == [True, False]


def test_the_taught_teacher_stops_where_it_loops(taught):
    """Its adapter learnt " blue sky" and a line break, never to stop, so it writes that line over
    and over: generation ends that row after four runs, well before the budget, keeping one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(taught / "teacher")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher"), taught / "adapter").eval()
    written = generate(model, tokenizer, prompts(4, offset=9), max_new_tokens=40, stops=(), max_length=64)
    assert all(w.answer == ANSWER and w.loop == ANSWER * 3 and not w.finished and not w.ended for w in written), written


def test_one_line_answers_without_loops_are_decided_by_the_adapters_effect_after_the_first_line():
    from adapter_convert.align.answer_ends import LineEffect, one_line_answers

    def never():
        raise AssertionError("the loops (or the finished answers) decide; the effect is not measured")

    prose = [Example("p", " Ada\nShe wrote the first program."), Example("p", " Ada\nAda\nAda")]  # one loops, one runs on
    ran_on = one_line_answers(prose * 2, effect=lambda: LineEffect(first_line=1.3, after=0.3))
    assert "saves 0.30 bits per byte after the first line against 1.30 on it" in ran_on and "repeated itself in 2" in ran_on
    # the adapter shapes the later lines as much as the first: a multi-line answer, left whole
    assert one_line_answers(prose * 2, effect=lambda: LineEffect(first_line=1.0, after=0.8)) is None
    assert one_line_answers(prose * 2, effect=lambda: LineEffect(first_line=-0.1, after=-0.5)) is None  # no effect to compare
    assert one_line_answers([Example("p", " Ada\nAda\nAda")] * 4, effect=never) is not None
    assert one_line_answers([Example("p", prose[0].answer, finished=True)] * 4, effect=never) is None


def test_the_adapters_effect_is_measured_on_the_first_line_and_after_it(taught):
    """The tiny teacher's adapter learnt " blue sky" and a line break: it saves bits on that line,
    none on a line of words it never learnt to write next, and as many on the learnt line again."""
    from transformers import AutoTokenizer

    from adapter_convert.align.answer_ends import AFTER_SHARE, line_effect

    tokenizer = AutoTokenizer.from_pretrained(taught / "teacher")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher"), taught / "adapter").eval()
    run_on = line_effect(model, tokenizer, [Example(p, ANSWER + "river stone cloud apple") for p in prompts(6, offset=9)], max_length=64)
    assert run_on.first_line > 0.1 and abs(run_on.after) < 0.05 and run_on.after < AFTER_SHARE * run_on.first_line, run_on
    again = line_effect(model, tokenizer, [Example(p, ANSWER + ANSWER) for p in prompts(6, offset=9)], max_length=64)
    assert again.first_line == pytest.approx(run_on.first_line) and again.after > AFTER_SHARE * again.first_line, again


def test_a_fresh_start_converts_onto_fused_projections(taught, tmp_path):
    """phi3 fuses q, k and v into qkv_proj and gate and up into gate_up_proj, which the fitted maps
    refuse: a fresh adapter reads no source tensor, so it converts, loads with peft, and learns the
    teacher's answers."""
    from transformers import AutoTokenizer

    target = tmp_path / "phi3"
    tokenizer = AutoTokenizer.from_pretrained(taught / "student")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("phi3", 2, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                                 max_position_embeddings=64)).save_pretrained(target)
    tokenizer.save_pretrained(target)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(taught / "adapter"), "--target", str(target), "--out", str(out), "--json",
                                      "--align", "fresh", "--calibration-data", str(taught / "prompts.jsonl"), "--max-new-tokens",
                                      "6", "--stop", "\n", "--distill-steps", "30", "--lr", "2e-2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "fresh adapter + distillation"
    operations = {row["role"]: row["operation"] for row in summary["modules"]}
    assert operations["attn.qkv"] == operations["mlp.gate_up"] == "fuse"
    fidelity = summary["alignment"]["fidelity"]
    assert fidelity["bits_per_byte"]["converted"] < fidelity["bits_per_byte"]["target base"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(target), out)
    assert model.base_model.model.model.layers[0].self_attn.qkv_proj.lora_A["default"].weight.shape == (4, 32)


def test_a_merged_adapter_generates_the_same_answers_and_is_unmerged_after(taught):
    from transformers import AutoTokenizer

    from adapter_convert.align.generative import merged_adapter

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher"), taught / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(taught / "teacher")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    asked = dict(max_new_tokens=6, stops=("\n",), max_length=64)
    unmerged = generate(model, tokenizer, prompts(8, offset=5), **asked)
    with merged_adapter(model):
        assert any(m.merged for m in model.modules() if hasattr(m, "merged"))
        merged = generate(model, tokenizer, prompts(8, offset=5), **asked)
    assert [m.answer for m in merged] == [u.answer for u in unmerged] and sum(u.answer == ANSWER for u in unmerged) >= 7
    after = model.state_dict()
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged"))
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in before.items())
    # half precision: merging would round the adapter's change away, so it stays unmerged
    half = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher", dtype=torch.bfloat16), taught / "adapter")
    with merged_adapter(half):
        assert not any(m.merged for m in half.modules() if hasattr(m, "merged"))


def test_the_teachers_likelihood_recorded_while_it_writes_is_its_own_score_of_the_answer(taught):
    from transformers import AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher"), taught / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(taught / "teacher")
    written = generate(model, tokenizer, prompts(6, offset=3), max_new_tokens=6, stops=("\n",), max_length=64, likelihood=True)
    plain = generate(model, tokenizer, prompts(6, offset=3), max_new_tokens=6, stops=("\n",), max_length=64)
    assert [w.answer for w in written] == [p.answer for p in plain] and not any(p.likelihood for p in plain)
    for example in written:
        assert example.likelihood and example.likelihood[-1][0] == len(example.answer)
        with torch.no_grad():  # the same answer scored afterwards, teacher-forced
            nats, _ = answer_nats(model, encode_examples(tokenizer, [dataclasses.replace(example, ended=False)], max_length=64))
        assert math.isclose(example.likelihood[-1][1], -float(nats), rel_tol=1e-3, abs_tol=1e-4)


def test_checks_on_answers_not_yet_read_run_no_held_out_pass(taught, tmp_path):
    # 32 training prompts, one per step: the first 20 steps read each answer once, so the check at
    # step 10 is the bits per byte of those answers measured before learning them; the held-out
    # prompts are measured at the start and the end only
    result = convert(taught, tmp_path / "out", "--stop", "\n", "--distill-steps", "20", "--batch-size", "1", "--lr", "2e-2")
    assert result.exit_code == 0, result.output
    fidelity = json.loads(result.stdout)["alignment"]["fidelity"]
    assert [step for step, _ in fidelity["unseen_curve"]] == [10]
    assert [step for step, _ in fidelity["held_out_curve"]] == [0, 20]
    assert fidelity["held_out_curve"][1][1] == fidelity["bits_per_byte"]["converted"] < fidelity["bits_per_byte"]["start"]


def test_answers_longer_than_the_budget_are_counted_and_the_user_told(taught, tmp_path):
    """cut_by_budget says which answers the budget cut (not a loop, not an answer that ended); where the
    answers are their first lines, only those cut inside it (not a run-on after a line break). A
    conversion whose probe answers mostly ran to the budget says so in its output and in the
    card's answer_end, with the option to raise."""
    from adapter_convert.align.answer_ends import cut_by_budget

    answers = [Example("p", " a long answer cut"), Example("p", " done\n", finished=True), Example("p", " line\nrun on"),
               Example("p", " x;", loop=" x; x; x;"), Example("p", "\n second cut")]
    assert cut_by_budget(answers, first_lines=True) == [True, False, False, False, True]  # a leading line break is no first line
    assert cut_by_budget(answers, first_lines=False) == [True, False, True, False, True]  # and the answer of two lines
    result = convert(taught, tmp_path / "out", "--max-new-tokens", "2", "--distill-steps", "2")
    assert result.exit_code == 0, result.output
    fidelity = json.loads(result.stdout)["alignment"]["fidelity"]
    assert "probe answers were longer than 2 tokens and were cut there" in fidelity["answer_end"]
    assert "raise --max-new-tokens" in fidelity["answer_end"] and "raise --max-new-tokens" in result.stderr
    assert fidelity["answer_end"].startswith("EOS") and "first line break" not in fidelity["answer_end"]  # no line break: no one-line rule
    short = json.loads(convert(taught, tmp_path / "short", "--stop", "\n", "--distill-steps", "2").stdout)["alignment"]["fidelity"]
    assert "longer than" not in short["answer_end"]  # the learnt answer ends at its line break, within 6 tokens


def test_fitting_budget_holds_the_longest_answer_with_room_in_steps_of_16_up_to_its_cap():
    from adapter_convert.align.answer_ends import fitting_budget

    words = lambda text: len(text.split())  # noqa: E731 (a token a word, for the known answer)
    ended = [Example("p", " a b c\n", finished=True), Example("p", " " + "w " * 40 + "\n", finished=True), Example("p", " x y", finished=True)]
    assert fitting_budget(ended, words, cap=256) == 64  # the longest, 40 words: half again is 60, up to a step of 16
    assert fitting_budget(ended, words, cap=48) == 48  # never past the cap
    assert fitting_budget(ended[:1], words, cap=256) == 16  # never under a step


def test_the_budget_note_counts_what_ran_past_the_first_budget_and_what_ended_within_the_second():
    from adapter_convert.align.answer_ends import budget_note

    first, again = [True, True, True, False], [False, True, False, False]  # 3 of 4 ran past 64; of those, 2 ended within 256
    assert budget_note(first, again, first_budget=64, budget=192, raise_to=256, adopted=True) == (
        "the budget rose from 64 to 192 tokens: 3 of 4 probe answers ran past 64, 2 of them ended within 256")
    # longer answers kept, but a one-line rule seen only in them left first lines within the first budget: nothing to say
    assert budget_note(first, again, first_budget=64, budget=64, raise_to=256, adopted=True) is None
    assert budget_note(first, [True, True, True, False], first_budget=64, budget=64, raise_to=256, adopted=False) == (
        "3 of 4 probe answers were longer than 64 tokens (and 3 longer than 256 too) and were cut there: "
        "raise --max-new-tokens if the task's answers are longer")
    assert budget_note(first, None, first_budget=16, budget=16, raise_to=None, adopted=False).startswith(
        "3 of 4 probe answers were longer than 16 tokens and were cut there")  # a budget given: no second probe
    assert budget_note([True, False, False, False], None, first_budget=64, budget=64, raise_to=None, adopted=False) is None
    assert budget_note([], None, first_budget=64, budget=64, raise_to=None, adopted=False) is None


LONG_ANSWER = " " + " ".join(WORDS[:8]) + "\n"  # about 20 tokens: longer than the tiny models' default budget of 16


@pytest.fixture(scope="module")
def taught_long(taught, tmp_path_factory) -> Path:
    """``taught``'s models and prompts, with a teacher that learnt an answer of 8 words (it never learnt to stop)."""
    root = tmp_path_factory.mktemp("taught_long")
    for part in ("teacher", "student", "prompts.jsonl"):
        (root / part).symlink_to(taught / part)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(taught / "teacher")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(taught / "teacher"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=all_module_names("llama"), task_type="CAUSAL_LM"))
    teach_answer(model, tokenizer, [Example(p, LONG_ANSWER) for p in prompts(48)], steps=200, adapter=root / "adapter",
                 base=root / "teacher", answer=LONG_ANSWER)
    return root


def test_the_default_budget_rises_to_fit_answers_longer_than_it_and_a_budget_given_stays(taught_long, tmp_path):
    """Without --max-new-tokens, a teacher whose probe answers all run past the default budget (16
    tokens in the tiny models' 64-token window) writes them again with up to 32 (half the window);
    they end there (a line break), so the budget rises to fit them and the student learns whole
    answers. A budget the user gave is kept, cut answers and all, and the run says to raise it."""
    teacher_tokens = len(PreTrainedTokenizerFast.from_pretrained(taught_long / "teacher")(LONG_ANSWER)["input_ids"])
    assert 16 < teacher_tokens <= 24  # so half again the longest is within the most it may rise to
    common = ["convert", str(taught_long / "adapter"), "--target", str(taught_long / "student"), "--json",
              "--calibration-data", str(taught_long / "prompts.jsonl"), "--distill-steps", "30", "--lr", "2e-2"]
    result = CliRunner().invoke(app, common + ["--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    fidelity = json.loads(result.stdout)["alignment"]["fidelity"]
    assert fidelity["max_new_tokens"] == 32
    assert "the budget rose from 16 to 32 tokens: 32 of 32 probe answers ran past 16, 32 of them ended within 32" in fidelity["answer_end"]
    assert "probe prompts again, up to 32 tokens" in result.stderr and "The budget rose from 16 to 32" in result.stderr
    card = (tmp_path / "auto" / "README.md").read_text()
    assert "the budget rose from 16 to 32 tokens" in card and "--max-new-tokens" not in card  # the command chooses it again alike
    assert fidelity["token_f1"]["converted"] > 0.9 > fidelity["token_f1"]["target base"]  # it writes the whole answer

    given = CliRunner().invoke(app, common + ["--out", str(tmp_path / "given"), "--max-new-tokens", "16"])
    assert given.exit_code == 0, given.output
    kept = json.loads(given.stdout)["alignment"]["fidelity"]
    assert kept["max_new_tokens"] == 16 and "again" not in given.stderr
    assert "32 of 32 probe answers were longer than 16 tokens and were cut there: raise --max-new-tokens" in kept["answer_end"]
    assert "--max-new-tokens 16" in (tmp_path / "given" / "README.md").read_text()

    # the built-in text (no prompts given) has no answers to fit: the budget stays, and the run says it cut them
    builtin = [a for a in common if a not in ("--calibration-data", str(taught_long / "prompts.jsonl"))]
    unfitted = CliRunner().invoke(app, builtin + ["--out", str(tmp_path / "builtin"), "--distill-steps", "2"])
    assert unfitted.exit_code == 0, unfitted.output
    assert json.loads(unfitted.stdout)["alignment"]["fidelity"]["max_new_tokens"] == 16 and "again" not in unfitted.stderr


def test_no_steps_says_so_in_what_each_part_computed_in(taught, tmp_path):
    result = convert(taught, tmp_path / "out", "--stop", "\n", "--distill-steps", "0")
    assert result.exit_code == 0, result.output
    fidelity = json.loads(result.stdout)["alignment"]["fidelity"]
    assert fidelity["computed_in"]["training steps"] == "none (--distill-steps 0)"
    assert fidelity["bits_per_byte"]["converted"] == fidelity["bits_per_byte"]["target base"]  # a fresh start, untrained


def test_bfloat16_autocast_steps_learn_the_answers_and_keep_float32_weights(taught):
    """Steps computed under bfloat16 autocast (the default where the device is fast at it) learn the
    teacher's answers as float32 steps do; the adapter's parameters and the checks stay float32."""
    from transformers import AutoTokenizer

    from adapter_convert.align.answer_training import TeacherAnswers, distill_on_answers

    tokenizer = AutoTokenizer.from_pretrained(taught / "student")
    held = [Example(p, ANSWER) for p in prompts(4, offset=60)]
    results = {}
    for autocast in (None, torch.bfloat16):
        torch.manual_seed(0)
        student = get_peft_model(AutoModelForCausalLM.from_pretrained(taught / "student"),
                                 LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        train = TeacherAnswers(prompts(32), lambda ps: [Example(p, ANSWER) for p in ps], seed=0, chunk=8)
        run = distill_on_answers(student, tokenizer, train, held, steps=20, lr=2e-2, seed=0, batch_size=4, max_length=64,
                                 eval_every=10, patience=3, autocast=autocast)
        assert all(p.dtype == torch.float32 for p in student.parameters() if p.requires_grad)
        results[autocast] = [v for _, v in run.held_out_bpb]
    for curve in results.values():
        assert curve[-1] < 0.95 * curve[0], results  # both learnt
    assert results[None][0] == results[torch.bfloat16][0]  # the first check, before any step: float32 both times
    assert abs(results[torch.bfloat16][-1] - results[None][-1]) < 0.01 * results[None][-1], results  # and alike


def test_an_answer_ends_at_any_eos_of_the_generation_config(taught):
    """An instruct model ends its turn with a token that is not its tokenizer's EOS (gemma's
    <end_of_turn>): listed in its generation config, it ends the answer there, as EOS does."""
    from transformers import AutoTokenizer

    from adapter_convert.align.generative import end_ids

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher"), taught / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(taught / "teacher")
    asked = dict(max_new_tokens=6, stops=(), max_length=64)
    plain = generate(model, tokenizer, prompts(4, offset=5), **asked)
    assert all(a.answer.startswith(ANSWER) and not a.ended for a in plain), [a.answer for a in plain]
    # the token after " blue" ends a turn in this model's generation config
    turn_end = tokenizer(ANSWER, add_special_tokens=False)["input_ids"][1]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, turn_end]
    assert end_ids(model, tokenizer) == [tokenizer.eos_token_id, turn_end]
    ended = generate(model, tokenizer, prompts(4, offset=5), **asked)
    prefix = tokenizer.decode(tokenizer(ANSWER, add_special_tokens=False)["input_ids"][:1])
    assert all(a.answer == prefix and a.ended and a.finished for a in ended), [a.answer for a in ended]


def test_steps_autocast_where_fast_unless_a_dtype_is_given(taught, tmp_path):
    """Without --dtype the steps autocast to bfloat16 where the device is fast at it (the progress
    line says so); a --dtype given is what they compute in, the same on every machine."""
    from adapter_convert.align.placement import training_autocast

    fast = training_autocast(AutoModelForCausalLM.from_pretrained(taught / "student")) is not None
    base = ["convert", str(taught / "adapter"), "--target", str(taught / "student"), "--calibration-data", str(taught / "prompts.jsonl"),
            "--max-new-tokens", "6", "--distill-steps", "2"]
    default = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")])
    asked = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--dtype", "float32"])
    assert default.exit_code == 0 and asked.exit_code == 0, default.output + asked.output
    assert ("Distilling on the teacher's answers (bfloat16 autocast)" in default.output) == fast
    assert "Distilling on the teacher's answers" in asked.output and "autocast)" not in asked.output


def test_a_long_prompt_loses_its_beginning_never_its_end():
    """keep_last keeps a text's last tokens (after its BOS); encode_examples cuts a long row the
    same way, so the answer and the prompt's end right before it stay, labelled as before."""
    from adapter_convert.align.generative import keep_last

    assert keep_last([1, 2, 3, 4, 5], 3, bos=None) == [3, 4, 5]
    assert keep_last([9, 2, 3, 4, 5], 3, bos=9) == [9, 4, 5]  # the BOS stays first
    assert keep_last([2, 3], 3, bos=9) == [2, 3] and keep_last([9, 2, 3], 1, bos=9) == [3]
    tokenizer = byte_bpe(300)
    short = Example("Text: red cat\nAnswer:", ANSWER, ended=True)
    long = Example(" ".join(WORDS * 4) + "\n" + short.prompt, ANSWER, ended=True)
    whole = encode_examples(tokenizer, [short], max_length=64)
    cut = encode_examples(tokenizer, [long], max_length=whole["input_ids"].shape[1])
    # the long row, cut to the short one's length, ends exactly as it does: the prompt's end, the answer, EOS
    assert len(tokenizer(long.prompt)["input_ids"]) > 64
    assert torch.equal(cut["input_ids"][0, -8:], whole["input_ids"][0, -8:])
    assert torch.equal(cut["labels"], whole["labels"]) and (cut["labels"] != IGNORE).sum() >= 3


def test_the_teacher_reads_the_end_of_a_prompt_longer_than_its_window(taught):
    """A prompt longer than the window (the tiny models hold 64 positions) keeps its end: the teacher
    still reads the cue it answers ("Answer:") and writes its answer."""
    from transformers import AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(taught / "teacher"), taught / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(taught / "teacher")
    long = [" ".join(WORDS * 3) + "\n" + p for p in prompts(8, offset=5)]
    assert all(len(tokenizer(p)["input_ids"]) > 64 for p in long)
    written = generate(model, tokenizer, long, max_new_tokens=6, stops=("\n",), max_length=64)
    assert sum(w.answer == ANSWER for w in written) >= 6, [w.answer for w in written]


def test_a_run_says_how_many_prompts_lose_their_beginning(taught, tmp_path):
    """Prompts longer than the window leaves them (the tiny models hold 64 positions, answers 6
    tokens) are cut from the left, and the run says how many."""
    long = tmp_path / "long.jsonl"
    texts = [" ".join(WORDS * 3) + "\n" + p for p in prompts(6, offset=3)] + prompts(6, offset=20)
    long.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    options = ["convert", str(taught / "adapter"), "--target", str(taught / "student"), "--calibration-data", str(long),
               "--max-new-tokens", "6", "--distill-steps", "2"]
    result = CliRunner().invoke(app, [*options, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    # 12 prompts: 2 held out, and 2 steps of 4 read 8: the 6 long ones are among those 10
    assert "6 of 10 prompts are longer than 58 tokens: the teacher reads their last 58" in " ".join(result.output.split())
    # --json and the card say it too
    summary = json.loads(CliRunner().invoke(app, [*options, "--out", str(tmp_path / "j"), "--json"]).stdout)
    assert summary["alignment"]["fidelity"]["prompts_cut"] == 6
    assert "6 of them longer than the window, read without their beginnings" in " ".join((tmp_path / "j" / "README.md").read_text().split())
