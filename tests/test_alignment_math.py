"""The alignment numerics on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from adapter_convert.align.fit import fit_point
from adapter_convert.align.correlation import assign
from adapter_convert.align.fold import fold_head, fold_module, is_selection
from adapter_convert.align.stats import PairStats
from adapter_convert.calibration import load_texts, paired_batches
from adapter_convert.transform import Ia3Module, LoraModule


def stats_of(student: torch.Tensor, teacher: torch.Tensor, chunks: int = 5) -> PairStats:
    stats = PairStats(student.shape[1], teacher.shape[1])
    for s, t in zip(student.chunk(chunks), teacher.chunk(chunks)):
        stats.update(s, t)
    return stats


def test_streamed_statistics_equal_the_batch_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1000, 6, generator=g), torch.randn(1000, 9, generator=g)
    stats = stats_of(s, t, chunks=7)
    S, T = s.double(), t.double()
    torch.testing.assert_close(stats.st, S.T @ T)
    torch.testing.assert_close(stats.ss, S.T @ S)
    torch.testing.assert_close(stats.tt, T.T @ T)
    torch.testing.assert_close(stats.sum_s, S.sum(0))
    torch.testing.assert_close(stats.diagonal("t"), (T * T).sum(0))
    assert stats.n == 1000
    # the memory these statistics hold against the budget's formula: tests/test_alignment_memory.py


def test_correlation_known_answers():
    """Hand-computed Pearson correlations: a dimension against its negation is -1, against an affine
    copy of itself 1; a = (1, 2, 3, 4) and b = (1, -1, 1, -1) correlate -2 / (sqrt(5) * 2) = -1/sqrt(5);
    a constant dimension correlates with nothing (0)."""
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    student = torch.stack([a, b, torch.full_like(a, 7.0)], 1)
    teacher = torch.stack([-a, 3 * b + 1, 2 * a + 5], 1)
    given = student.clone(), teacher.clone()
    stats = PairStats(3, 3)
    stats.update(student, teacher)
    r = 5**-0.5
    expected = torch.tensor([[-1, -r, 1], [r, 1, -r], [0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(stats.correlation(), expected)
    assert torch.equal(student, given[0]) and torch.equal(teacher, given[1])  # the caller's rows are left alone
    # the assignment takes a -> 2a + 5 and b -> 3b + 1 (correlation 1 each) and the constant the rest (0)
    picked_student, picked_teacher, score = assign(stats)
    assert picked_student.tolist() == [0, 1, 2] and picked_teacher.tolist() == [2, 1, 0]
    assert score == pytest.approx(2 / 3)
    # one tensor as both sides: each dimension with itself is 1
    both = PairStats(2, 2)
    x = torch.stack([a, b], 1)
    both.update(x, x)
    torch.testing.assert_close(both.correlation(), torch.tensor([[1, -r], [-r, 1]], dtype=torch.float64))


def test_correlation_is_pearson():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(500, 4, generator=g)
    t = torch.cat([s[:, :2] * 3 + 1 + 0.1 * torch.randn(500, 2, generator=g), torch.randn(500, 3, generator=g)], 1)
    expected = np.corrcoef(s.T.numpy(), t.T.numpy())[:4, 4:]
    np.testing.assert_allclose(stats_of(s, t).correlation().numpy(), expected, atol=1e-10)


def test_correlation_recovers_a_permutation_and_selects_the_wider_teachers_dims():
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(400, 10, generator=g)
    picked = torch.tensor([7, 2, 9, 0, 4])  # the student holds these teacher dims, in this order
    fit = fit_point(stats_of(teacher[:, picked], teacher), "head", "correlation", ridge=0.0)
    assert is_selection(fit["map"]) and fit["score"] == pytest.approx(1.0) and fit["score_name"] == "mean correlation"
    assert fit["map"].shape == (10, 5)
    assert torch.equal(fit["map"].argmax(0), picked)
    # the evidence beside it: a linear map explains the 5 held teacher dims fully, the 5 others not at all
    assert fit["identity_r2"] is None and fit["linear_r2"] == pytest.approx(0.5, abs=0.02)


def test_lstsq_recovers_a_linear_map_and_reports_r2():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2000, 5, generator=g)
    mixing = torch.randn(8, 5, generator=g)
    fit = fit_point(stats_of(student, student @ mixing.T), "head", "lstsq", ridge=1e-9)
    torch.testing.assert_close(fit["map"], mixing.double(), atol=1e-5, rtol=1e-5)
    assert fit["score"] == pytest.approx(1.0, abs=1e-6) and fit["score_name"] == "R^2"
    noisy = fit_point(stats_of(student, student @ mixing.T + torch.randn(2000, 8, generator=g) * 3), "head", "lstsq", ridge=1e-2)
    assert 0.0 < noisy["score"] < 0.9 and noisy["linear_r2"] == noisy["score"]  # the default ridge: one fit serves both


def test_output_maps_run_teacher_to_student():
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(1000, 6, generator=g)
    squeeze = torch.randn(4, 6, generator=g)
    fit = fit_point(stats_of(teacher @ squeeze.T, teacher), "out", "lstsq", ridge=1e-9)
    torch.testing.assert_close(fit["map"].matrix(), squeeze.double(), atol=1e-5, rtol=1e-5)
    selection = fit_point(stats_of(teacher[:, [4, 1]], teacher), "out", "correlation", ridge=0.0)["map"]
    assert selection.shape == (2, 6) and selection.argmax(1).tolist() == [4, 1]  # teacher -> student: the transpose


def test_folding_keeps_the_rank_and_conjugates_the_delta():
    g = torch.Generator().manual_seed(5)
    lora = LoraModule(torch.randn(3, 8, generator=g), torch.randn(10, 3, generator=g), scaling=0.5)
    p_in, p_out = torch.randn(8, 6, generator=g).double(), torch.randn(7, 10, generator=g).double()
    folded = fold_module(lora, p_in, p_out)
    assert folded.rank == 3 and folded.A.shape == (3, 6) and folded.B.shape == (7, 3)
    torch.testing.assert_close(folded.delta_weight(), p_out @ lora.delta_weight() @ p_in, atol=1e-5, rtol=1e-5)


def test_selection_folds_ia3_and_dora_by_picking():
    select_in = torch.zeros(4, 3, dtype=torch.float64)
    select_in[[3, 0, 1], [0, 1, 2]] = 1  # student dim j reads teacher dim [3, 0, 1][j]
    select_out = select_in.T.clone()
    out_scaling = Ia3Module(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    assert fold_module(out_scaling, select_in, select_out).vector.flatten().tolist() == [4.0, 1.0, 2.0]
    in_scaling = Ia3Module(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert fold_module(in_scaling, select_in, select_out).vector.flatten().tolist() == [4.0, 1.0, 2.0]
    dora = LoraModule(torch.ones(2, 4), torch.ones(4, 2), 1.0, magnitude=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert fold_module(dora, select_in, select_out).magnitude.tolist() == [4.0, 1.0, 2.0]


def test_a_head_reads_through_the_hidden_map():
    weight, bias = torch.randn(3, 4), torch.randn(3)
    p = torch.randn(4, 2).double()
    folded = fold_head({"weight": weight, "bias": bias}, p)
    torch.testing.assert_close(folded["weight"], (weight.double() @ p).float())
    assert torch.equal(folded["bias"], bias)


def test_tokens_pair_by_character_spans_across_tokenizers(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from adapter_convert.demo.minilm import minilm_dir

    wordpiece = AutoTokenizer.from_pretrained(minilm_dir())
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(load_texts(), trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "[PAD]"]))
    other = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", pad_token="[PAD]")
    texts = ["Marie Curie was born in Warsaw.", "Le Louvre accueille des visiteurs."]
    batch = next(paired_batches(texts, wordpiece, other, max_tokens=1000))
    t_ids, s_ids = batch.teacher_inputs["input_ids"], batch.student_inputs["input_ids"]
    for row, t_pos, s_pos in zip(batch.teacher_index[0], batch.teacher_index[1], batch.student_index[1]):
        t_piece = wordpiece.convert_ids_to_tokens(int(t_ids[row, t_pos])).removeprefix("##")
        s_piece = other.convert_ids_to_tokens(int(s_ids[row, s_pos]))
        assert t_piece.lower() == s_piece.lower()
    assert 4 <= batch.tokens < int(batch.teacher_inputs["attention_mask"].sum())  # some, not all, tokens pair
