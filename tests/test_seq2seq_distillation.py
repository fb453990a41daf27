"""Output-space distillation of an encoder-decoder (a seq2seq LM): the prompt read by the encoder,
the answer written by the decoder. Known answers for its batches, and a tiny t5 teacher with a
learnt answer moved onto a bart of other widths and another tokenizer with only its prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer
from typer.testing import CliRunner

from adapter_convert.align.generative import IGNORE, Example, answer_nats, decoder_start, encode_examples, generate
from adapter_convert.cli import app
from test_output_distillation import ANSWER, byte_bpe, prompts, teach_answer

T5 = dict(d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0,
          eos_token_id=1)
BART = dict(d_model=48, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2,
            decoder_layers=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1,
            forced_eos_token_id=None)


def seq2seq(model_type: str, spec: dict, vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(model_type, vocab_size=vocab_size, **spec))


def test_a_batch_for_the_decoder_holds_the_answer_after_its_start_and_labels_it_as_a_causal_lm_would():
    tokenizer = byte_bpe(300)
    examples = [Example("Text: red cat\nAnswer:", " blue sky\n", ended=True), Example("Text: dog\nAnswer:", " blue")]
    batch = encode_examples(tokenizer, examples, max_length=64, decoder_start=7)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    first = tokenizer(" blue sky\n")["input_ids"] + [eos]  # the teacher stopped: its EOS is learnt
    second = tokenizer(" blue")["input_ids"]  # cut by the budget: no EOS
    assert batch["input_ids"][0].tolist()[:3] == tokenizer("Text: red cat\nAnswer:")["input_ids"][:3]  # the prompt, for the encoder
    assert batch["decoder_input_ids"].tolist() == [[7] + first, [7] + second + [pad] * (len(first) - len(second))]
    assert batch["labels"].tolist() == [[IGNORE] + first, [IGNORE] + second + [IGNORE] * (len(first) - len(second))]
    assert batch["decoder_attention_mask"].tolist()[1] == [1] * (1 + len(second)) + [0] * (len(first) - len(second))
    # padding on the right: the prompts' real tokens come first
    assert batch["attention_mask"][1].tolist()[0] == 1 and batch["attention_mask"][1].tolist()[-1] == 0


def test_answer_nats_are_the_models_own_loss_on_the_answer():
    tokenizer = byte_bpe(300)
    model = seq2seq("t5", T5, len(tokenizer)).eval()
    examples = [Example(p, ANSWER, ended=True) for p in prompts(3)]
    batch = encode_examples(tokenizer, examples, max_length=64, decoder_start=decoder_start(model))
    with torch.no_grad():
        nats, count = answer_nats(model, batch)
        # transformers' own: labels are the answer (its EOS included), shifted right after the start token inside the model
        labels = batch["labels"][:, 1:].contiguous()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    assert count == int((labels != IGNORE).sum())
    torch.testing.assert_close(nats, expected)


@pytest.fixture(scope="module")
def taught_t5(tmp_path_factory) -> Path:
    """A tiny t5 teacher whose LoRA learnt to answer ANSWER; targets of other widths and another
    tokenizer, a bart and a wider t5; the prompts (no answers) in a .txt file."""
    root = tmp_path_factory.mktemp("taught-t5")
    teacher_tok, student_tok = byte_bpe(300), byte_bpe(420)
    teacher = seq2seq("t5", T5, len(teacher_tok))
    teacher.save_pretrained(root / "teacher")
    teacher_tok.save_pretrained(root / "teacher")
    seq2seq("bart", BART, len(student_tok), seed=1).save_pretrained(root / "bart")
    student_tok.save_pretrained(root / "bart")
    seq2seq("t5", T5 | {"d_model": 48, "d_kv": 12}, len(student_tok), seed=1).save_pretrained(root / "t5")  # a wider t5
    student_tok.save_pretrained(root / "t5")
    model = get_peft_model(teacher, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "k", "v", "o", "wi", "wo"], task_type="SEQ_2_SEQ_LM"))
    teach_answer(model, teacher_tok, [Example(p, ANSWER, ended=True) for p in prompts(48)], steps=60, adapter=root / "adapter",
                 base=root / "teacher")
    (root / "prompts.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in prompts(40, offset=2)))
    return root


@pytest.mark.parametrize("target", ["bart", "t5"])
def test_a_seq2seq_adapter_is_distilled_onto_other_widths_on_its_own_answers(taught_t5, tmp_path, target):
    """t5 -> bart (other family) and t5 -> a wider t5 (the same family, as flan-t5-large -> base),
    both with another tokenizer: auto distils a fresh adapter on both stacks on the teacher's
    answers; the written adapter loads with peft and writes the teacher's answer to prompts it never saw."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(taught_t5 / "adapter"), "--target", str(taught_t5 / target), "--out", str(out),
                                      "--json", "--calibration-data", str(taught_t5 / "prompts.txt"), "--max-new-tokens", "6",
                                      "--stop", "\n", "--distill-steps", "60", "--lr", "2e-2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "fresh adapter + distillation" and summary["alignment"]["reason"].startswith("shapes differ")
    fidelity = summary["alignment"]["fidelity"]
    assert fidelity["bits_per_byte"]["converted"] < fidelity["bits_per_byte"]["target base"]
    assert fidelity["token_f1"]["converted"] > fidelity["token_f1"]["target base"] and fidelity["token_f1"]["converted"] >= 0.9
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and config["r"] == 4
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(taught_t5 / target), out)
    # both stacks carry the new adapter, the decoder's cross-attention included
    inner = model.base_model.model
    if target == "bart":
        assert inner.model.encoder.layers[0].self_attn.q_proj.lora_A["default"].weight.shape == (4, 48)
        assert inner.model.decoder.layers[1].encoder_attn.v_proj.lora_B["default"].weight.abs().sum() > 0
    else:
        assert inner.encoder.block[0].layer[0].SelfAttention.q.lora_A["default"].weight.shape == (4, 48)
        assert inner.decoder.block[1].layer[1].EncDecAttention.v.lora_B["default"].weight.abs().sum() > 0
    written = generate(model, AutoTokenizer.from_pretrained(taught_t5 / target), prompts(6, offset=11), max_new_tokens=6,
                       stops=("\n",), max_length=64)
    assert sum(w.answer == ANSWER for w in written) >= 5, [w.answer for w in written]
    assert "### Output-space distillation" in (out / "README.md").read_text()


def test_a_copy_between_compatible_seq2seq_bases_is_refined_on_the_teachers_answers(taught_t5, tmp_path):
    """--align distill onto the teacher's own base (compatible, equal shapes): the tensors are
    copied, then distilled on the teacher's answers; the copy already writes them."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(taught_t5 / "adapter"), "--target", str(taught_t5 / "teacher"), "--out", str(out),
                                      "--json", "--align", "distill", "--calibration-data", str(taught_t5 / "prompts.txt"),
                                      "--max-new-tokens", "6", "--stop", "\n", "--distill-steps", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["alignment"]["reason"].startswith("shapes agree and the bases share a hidden space (measured)")
    fidelity = summary["alignment"]["fidelity"]
    assert fidelity["bits_per_byte"]["start"] < fidelity["bits_per_byte"]["target base"]  # the copy starts where the teacher is
    assert fidelity["token_f1"]["converted"] == 1.0


def test_the_decoder_starts_from_the_configs_token_else_the_generation_configs_else_pad():
    tokenizer = byte_bpe(300)
    model = seq2seq("t5", T5, len(tokenizer))
    assert decoder_start(model) == 0
    model.config.decoder_start_token_id, model.generation_config.decoder_start_token_id = None, 5
    assert decoder_start(model) == 5
    model.generation_config.decoder_start_token_id = None
    assert decoder_start(model) == model.config.pad_token_id == 0
