"""The offline demo: real MiniLM teacher and student, a briefly trained NER LoRA, a SKIP conversion."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from ..errors import SourceNotFoundError
from .minilm import build_student, build_teacher

if TYPE_CHECKING:
    from ..pipeline import PreparedConversion

DATA_FILES = ("val.conllu", "test.conllu")


def packaged_data() -> Path:
    """The WikiNEuRal sample shipped in the package (400 training + 300 test sentences,
    CC BY-NC-SA 4.0: see data/LICENSE and data/README.md beside it)."""
    return Path(str(resources.files(__package__) / "data"))


def find_data(data: Path | None = None) -> Path:
    """``data`` (a folder with val.conllu and test.conllu, such as the full WikiNEuRal set), or the
    packaged sample; never depends on the working directory."""
    folder = Path(data) if data is not None else packaged_data()
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        hint = "Pass --data FOLDER with both files, or leave --data out to use the sample shipped in the package."
        if data is None:
            hint = "The package's demo data is missing: reinstall adapter-convert, or pass --data FOLDER."
        raise SourceNotFoundError(f"No WikiNEuRal data at {str(folder)!r} (missing {', '.join(missing)}).", hint)
    return folder


def train_example_adapter(teacher: Path, out: Path, *, data: Path, steps: int, reporter=None, seed: int = 0) -> Path:
    """Train the example NER LoRA (query, value, classifier head) on the teacher and save it."""
    from . import ner

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    sentences = ner.read_conll(data / "val.conllu")
    model = ner.new_lora_model(teacher, seed=seed)
    if reporter is None:
        ner.train(model, tokenizer, sentences, steps=steps, seed=seed)
    else:
        with reporter.progress("Training the example teacher LoRA", steps) as advance:
            ner.train(model, tokenizer, sentences, steps=steps, seed=seed, on_step=lambda step, loss: advance(f"loss {loss:.3f}"))
    model.save_pretrained(out)
    _set_base(out, teacher)
    return out


def _set_base(adapter: Path, base: Path) -> None:
    import json

    from ..adapter_io import CONFIG_NAME

    config_path = adapter / CONFIG_NAME
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config, indent=2))


def run_demo(workdir: Path, *, steps: int, console: Console, reporter, show_plan: Callable[[PreparedConversion], None] = lambda prepared: None,
             data: Path | None = None, eval_sentences: int = 300) -> Path:
    """Build the models, train the teacher's LoRA, convert it (``show_plan`` gets the prepared
    conversion before it runs: the CLI prints its plan table) and print the scores."""
    from ..pipeline import ConversionRequest, execute, prepare
    from . import ner

    data = find_data(data)
    workdir = Path(workdir)
    teacher, student = workdir / "teacher-minilm-l6", workdir / "student-distilbert-l3"
    adapter, converted = workdir / "teacher-ner-lora", workdir / "student-ner-lora"
    reporter.stage("Building the teacher (all-MiniLM-L6-v2, 6 layers) and a 3-layer DistilBERT student from its layers 0, 2, 4")
    if not teacher.is_dir():
        build_teacher(teacher)
    if not student.is_dir():
        build_student(student, model_type="distilbert")
    if not adapter.is_dir():
        train_example_adapter(teacher, adapter, data=data, steps=steps, reporter=reporter)
    request = ConversionRequest(adapter=str(adapter), target=str(student), out=converted, layer_map="skip", force=True)
    prepared = prepare(request, reporter)
    show_plan(prepared)
    execute(prepared, reporter)

    test = ner.read_conll(data / "test.conllu", limit=eval_sentences)
    reporter.stage(f"Scoring token F1 on {len(test)} WikiNEuRal test sentences")
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    scores = Table(title="NER token F1 (no training on the student)", title_justify="left")
    scores.add_column("model")
    scores.add_column("F1", justify="right")
    scores.add_row("teacher + its LoRA (6 layers)", f"{ner.token_f1(ner.load_lora_model(teacher, adapter), tokenizer, test):.3f}")
    scores.add_row("student + fresh LoRA", f"{ner.token_f1(ner.new_lora_model(student), tokenizer, test):.3f}")
    scores.add_row("student + converted LoRA (SKIP)", f"{ner.token_f1(ner.load_lora_model(student, converted), tokenizer, test):.3f}")
    console.print(scores)
    console.print(f"Converted adapter: {converted}\nModel card:        {converted / 'README.md'}", highlight=False)
    return converted
