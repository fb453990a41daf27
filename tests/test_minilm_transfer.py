"""The real model: all-MiniLM-L6-v2 teacher, 3-layer students from its layers 0, 2, 4, NER on
WikiNEuRal. A briefly trained teacher LoRA, converted with SKIP, must clearly beat a fresh
student LoRA with no training at all; the bert and distilbert students must score the same.

The trained teacher adapter is cached in pytest's cache folder, so only the first run trains.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from adapter_convert.demo import ner, train_example_adapter
from adapter_convert.demo.minilm import build_student, build_teacher
from adapter_convert.pipeline import ConversionRequest, execute, prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikineural-en"
TEACHER_STEPS = 200
TEST_SENTENCES = 500


@pytest.fixture(scope="module")
def minilm(request) -> dict[str, Path]:
    if not (DATA / "val.conllu").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"WikiNEuRal data missing at {DATA}: CI must run with ../shared beside the repository")
        pytest.skip(f"no WikiNEuRal data at {DATA}")
    cache = Path(request.config.cache.mkdir(f"minilm-ner-{TEACHER_STEPS}"))
    paths = {
        "teacher": cache / "teacher",
        "student_bert": cache / "student-bert",
        "student_distilbert": cache / "student-distilbert",
        "adapter": cache / "teacher-lora",
    }
    if not paths["teacher"].is_dir():
        build_teacher(paths["teacher"])
    for key, model_type in (("student_bert", "bert"), ("student_distilbert", "distilbert")):
        if not paths[key].is_dir():
            build_student(paths[key], layers=(0, 2, 4), model_type=model_type)
    if not paths["adapter"].is_dir():
        partial = cache / "teacher-lora.partial"
        shutil.rmtree(partial, ignore_errors=True)
        train_example_adapter(paths["teacher"], partial, data=DATA, steps=TEACHER_STEPS)
        partial.rename(paths["adapter"])
    return paths


def test_skip_transfer_beats_a_fresh_student_lora(minilm, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm["teacher"])
    test = ner.read_conll(DATA / "test.conllu", limit=TEST_SENTENCES)
    scores = {"teacher": ner.token_f1(ner.load_lora_model(minilm["teacher"], minilm["adapter"]), tokenizer, test)}
    for student in ("student_bert", "student_distilbert"):
        out = tmp_path / student
        execute(prepare(ConversionRequest(adapter=str(minilm["adapter"]), target=str(minilm[student]), out=out, layer_map="skip")))
        scores[student] = ner.token_f1(ner.load_lora_model(minilm[student], out), tokenizer, test)
    scores["fresh"] = ner.token_f1(ner.new_lora_model(minilm["student_bert"]), tokenizer, test)
    print("token F1:", {k: round(v, 3) for k, v in scores.items()})

    assert scores["teacher"] > 0.6, scores  # the teacher adapter learned the task
    assert scores["student_bert"] > scores["fresh"] + 0.2, scores
    # the distilbert student is the bert student in another architecture: the same function
    assert abs(scores["student_distilbert"] - scores["student_bert"]) < 0.005, scores


def test_demo_command_runs_offline(tmp_path):
    """The README's first command: builds, trains briefly, converts, scores, and says where things are."""
    from typer.testing import CliRunner

    from adapter_convert.cli import app

    if not (DATA / "val.conllu").is_file():
        pytest.skip(f"no WikiNEuRal data at {DATA}")
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--steps", "5", "--data", str(DATA)])
    assert result.exit_code == 0, result.output
    assert "Conversion plan" in result.output and "attention.q_lin" in result.output
    assert "student + converted LoRA (SKIP)" in result.output
    converted = tmp_path / "student-ner-lora"
    assert (converted / "adapter_model.safetensors").is_file() and (converted / "README.md").is_file()
    assert str(converted) in result.output.replace("\n", "")


def test_demo_without_data_says_where_to_find_it(tmp_path):
    from typer.testing import CliRunner

    from adapter_convert.cli import app

    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--data", str(tmp_path / "none")])
    assert result.exit_code == 9
    assert "No WikiNEuRal data" in result.output and "--data" in result.output
