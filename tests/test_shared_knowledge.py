"""Knowledge kept once: task type -> model class and pipeline tag (tasks.py), the adapter file
names (peft's), one CoNLL reader for calibration files and the demo."""

from __future__ import annotations

import peft.utils
import transformers

from adapter_convert import adapter_io, hub, tasks, writer
from adapter_convert.calibration import conll_sentences, load_texts
from adapter_convert.card import build_model_card
from adapter_convert.demo.ner import read_conll
from adapter_convert.summary import (AdapterSummary, AlignmentSummary, ArchitectureSummary, BaseModelSummary, CompatibilitySummary,
                                     ConversionSummary)
from adapter_convert.verify import empty_target_model


def test_task_table_names_real_classes_and_verify_uses_them():
    for task, spec in tasks.TASKS.items():
        assert tasks.model_class(task) is getattr(transformers, spec.model_class)
    assert tasks.model_class_name(None) == tasks.model_class_name("FEATURE_EXTRACTION") == "AutoModel"
    assert tasks.model_class("SEQ_CLS") is transformers.AutoModelForSequenceClassification
    assert tasks.pipeline_tag("TOKEN_CLS") == "token-classification" and tasks.pipeline_tag(None) is None


def test_verify_builds_the_tasks_model_on_meta():
    config = transformers.AutoConfig.for_model("bert", vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=16)
    model = empty_target_model(config, task_type="SEQ_CLS", bare=False, num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 3
    assert type(empty_target_model(config, task_type="SEQ_CLS", bare=True, num_labels=3)).__name__ == "BertModel"


def test_card_takes_model_class_and_pipeline_tag_from_the_task_table():
    architecture = ArchitectureSummary(origin="derived", layers="layers", modules={}, fused_layout={}, unsupported={})
    base = BaseModelSummary(id="b", revision=None, model_type="bert", layers=2, hidden=8, architecture=architecture)
    summary = ConversionSummary(
        tool_version="0", command_line="adapter-convert", peft_type="LORA", task_type="SEQ_CLS",
        source_adapter=AdapterSummary(id="a", revision=None, bytes=0), source_base=base, target_base=base, method="copy",
        layer_map={"strategy": "skip", "rows": []}, modules=(), heads={}, dropped=(), num_labels=2,
        alignment=AlignmentSummary(method="direct", reason="copy"), compatibility=CompatibilitySummary.of(None), resources=None)
    card = build_model_card(summary)
    assert card.data.pipeline_tag == tasks.pipeline_tag("SEQ_CLS")
    assert f"{tasks.model_class_name('SEQ_CLS')}.from_pretrained" in card.text


def test_adapter_file_names_are_peft_s():
    assert adapter_io.CONFIG_NAME == peft.utils.CONFIG_NAME == "adapter_config.json"
    assert adapter_io.WEIGHTS_NAME == peft.utils.SAFETENSORS_WEIGHTS_NAME
    assert adapter_io.PICKLE_WEIGHTS_NAME == peft.utils.WEIGHTS_NAME
    assert set(hub.ADAPTER_FILES) | set(hub.PICKLE_ADAPTER_FILES) | {"README.md"} == set(writer.ADAPTER_OUTPUT_FILES)


CONLL = "# a comment\n1\tJohn\tB-PER\n2\tlives\tO\r\n\n\n1\tin\tO\n2\tParis\tB-LOC\n\n1\t#1\tO\n"


def test_conll_sentences_known_answer():
    assert list(conll_sentences(CONLL.splitlines(keepends=True))) == [
        [["1", "John", "B-PER"], ["2", "lives", "O"]],
        [["1", "in", "O"], ["2", "Paris", "B-LOC"]],
        [["1", "#1", "O"]],  # a token may be '#'; only a line starting with it is a comment
    ]


def test_demo_and_calibration_read_conll_through_the_same_reader(tmp_path):
    path = tmp_path / "sample.conllu"
    path.write_text(CONLL, encoding="utf-8")
    assert load_texts(path) == ["John lives", "in Paris", "#1"]
    assert [(s.words, s.tags) for s in read_conll(path)] == [(["John", "lives"], ["B-PER", "O"]), (["in", "Paris"], ["O", "B-LOC"]),
                                                            (["#1"], ["O"])]
    assert [s.words for s in read_conll(path, limit=1)] == [["John", "lives"]]
