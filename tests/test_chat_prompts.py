"""Prompts given as chat messages (a .jsonl ``messages`` field): each model reads them in its own
chat template, so a teacher and a target of other families each see their own format; an answer
given with the prompts is left out. Known answers for the parsing and the rendering, and a tiny
teacher taught in one chat format moved onto a target with another."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapter_convert.align.generative import Example, generate, prompt_text
from adapter_convert.calibration import ChatPrompt, load_texts
from adapter_convert.errors import CalibrationDataError
from helpers import all_module_names, run_cli, tiny_config
from test_output_distillation import ANSWER, WORDS, byte_bpe, teach_answer

TEACHER_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
TARGET_TEMPLATE = ("{{ bos_token }}{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
                   "{% if add_generation_prompt %}### answer:{% endif %}")


def chats(count: int, offset: int = 0) -> list[ChatPrompt]:
    return [ChatPrompt([{"role": "user", "content": f"{WORDS[(i + offset) % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]}"}])
            for i in range(count)]


def test_messages_lines_are_chat_prompts_without_their_answer(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "red cat"},
                                             {"role": "assistant", "content": "a label, left out"}]}) + "\n"
                    + json.dumps({"prompt": "plain"}) + "\n")
    chat, plain = load_texts(path)
    assert isinstance(chat, ChatPrompt) and chat == "Be brief.\nred cat" and [m["role"] for m in chat.messages] == ["system", "user"]
    assert plain == "plain" and not isinstance(plain, ChatPrompt)
    for copied in (copy.deepcopy(chat), pickle.loads(pickle.dumps(chat))):  # rebuilt from its messages
        assert isinstance(copied, ChatPrompt) and copied == chat and copied.messages == chat.messages
    for bad in ([{"role": "assistant", "content": "only an answer"}], [{"role": "user"}], "red cat"):
        path.write_text(json.dumps({"messages": bad}) + "\n")
        with pytest.raises(CalibrationDataError, match="Line 1 .* chat 'messages'"):
            load_texts(path)


def test_each_model_reads_chat_messages_in_its_own_template_and_plain_prompts_as_they_are():
    teacher, target = byte_bpe(300), byte_bpe(420)
    teacher.chat_template, target.chat_template = TEACHER_TEMPLATE, TARGET_TEMPLATE
    target.bos_token = "<eos>"  # a target whose tokenizer adds no BOS keeps the template's
    chat = chats(1)[0]
    assert prompt_text(chat, teacher, side="source base") == f"<user>{chat}\n<assistant>"
    assert prompt_text(chat, target, side="target base") == f"<eos>### user: {chat}\n### answer:"
    # one whose tokenizer adds its BOS leaves it to the tokenizer: one BOS, not two
    target.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 1)])
    assert target("")["input_ids"] == [1]
    text = prompt_text(chat, target, side="target base")
    assert text == f"### user: {chat}\n### answer:" and target(text)["input_ids"].count(1) == 1
    assert prompt_text("Text: red\nAnswer:", teacher, side="source base") == "Text: red\nAnswer:"
    with pytest.raises(CalibrationDataError, match="the target base's tokenizer has no chat template"):
        prompt_text(chat, byte_bpe(420), side="target base")
    strict = byte_bpe(420)  # a template that refuses a role (gemma's takes no system message)
    strict.chat_template = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x"
    system = ChatPrompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "red"}])
    with pytest.raises(CalibrationDataError, match="target base's chat template cannot write these chat messages.*System role"):
        prompt_text(system, strict, side="target base")


def test_an_adapter_taught_in_one_chat_format_is_distilled_into_another(tmp_path, monkeypatch):
    teacher_tok, target_tok = byte_bpe(300), byte_bpe(420)
    teacher_tok.chat_template, target_tok.chat_template = TEACHER_TEMPLATE, TARGET_TEMPLATE
    torch.manual_seed(0)
    config = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1, max_position_embeddings=64)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", 2, vocab_size=len(teacher_tok), **config))
    teacher.save_pretrained(tmp_path / "teacher")
    teacher_tok.save_pretrained(tmp_path / "teacher")
    AutoModelForCausalLM.from_config(tiny_config("qwen2", 2, vocab_size=len(target_tok), hidden_size=48, num_attention_heads=6,
                                                 num_key_value_heads=3, head_dim=8, intermediate_size=96, **config)
                                     ).save_pretrained(tmp_path / "target")
    target_tok.save_pretrained(tmp_path / "target")
    model = get_peft_model(teacher, LoraConfig(r=4, lora_alpha=8, target_modules=all_module_names("llama"), task_type="CAUSAL_LM"))
    rendered = [Example(prompt_text(c, teacher_tok, side="source base"), ANSWER) for c in chats(48)]
    teach_answer(model, teacher_tok, rendered, steps=80, adapter=tmp_path / "adapter", base=tmp_path / "teacher",
                 check=[prompt_text(c, teacher_tok, side="source base") for c in chats(8, offset=5)])
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"messages": list(c.messages)}) + "\n" for c in chats(40, offset=2)))
    # what each model is given: the teacher's generations and the target's steps, spied on
    from adapter_convert.align import answer_training, generative

    seen: dict[str, list[str]] = {}  # by the reading tokenizer's chat template
    real_generate, real_encode = generative.generate, generative.encode_examples
    monkeypatch.setattr(generative, "generate", lambda model, tok, texts, **kw: seen.setdefault(tok.chat_template, []).extend(texts)
                        or real_generate(model, tok, texts, **kw))
    spy_encode = lambda tok, examples, **kw: seen.setdefault(tok.chat_template, []).extend(e.prompt for e in examples) or real_encode(  # noqa: E731
        tok, examples, **kw)
    monkeypatch.setattr(generative, "encode_examples", spy_encode)  # the checks
    monkeypatch.setattr(answer_training, "encode_examples", spy_encode)  # the steps
    result = run_cli("convert", tmp_path / "adapter", "--target", tmp_path / "target", "--out", tmp_path / "out", "--json",
                     "--calibration-data", tmp_path / "prompts.jsonl", "--max-new-tokens", "6", "--stop", "\n",
                     "--distill-steps", "60", "--lr", "2e-2", "--seed", "1")
    assert result.exit_code == 0, result.output
    fidelity = json.loads(result.stdout)["alignment"]["fidelity"]
    assert fidelity["prompts"].endswith("chat messages, each model reading them in its own chat template")
    assert fidelity["token_f1"]["converted"] >= 0.9 > fidelity["token_f1"]["target base"]
    # the teacher wrote its answers to its own format, the target learnt and wrote in its own
    assert set(seen) == {TEACHER_TEMPLATE, TARGET_TEMPLATE}
    # each of the 40 prompts written once at most: the probe's answers are not written again
    assert len(seen[TEACHER_TEMPLATE]) <= 40 and fidelity["train_prompts"] <= 32
    assert all(p.startswith("<user>") and p.endswith("<assistant>") for p in seen[TEACHER_TEMPLATE])
    assert all(p.startswith("### user: ") and p.endswith("### answer:") for p in seen[TARGET_TEMPLATE])
    # the target answers its own format: new chats in the target's template
    converted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "target"), tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "target")
    assert tokenizer.chat_template == TARGET_TEMPLATE
    written = generate(converted, tokenizer, [prompt_text(c, tokenizer, side="target base") for c in chats(6, offset=11)],
                       max_new_tokens=6, stops=("\n",), max_length=64)
    assert sum(w.answer == ANSWER for w in written) >= 5, [w.answer for w in written]
