"""What a normal (non-editable) install gets: every data file in the wheel, a torch range instead
of a pin, and a demo that finds its packaged WikiNEuRal sample from any working directory."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from adapter_convert.demo import find_data, ner, packaged_data
from adapter_convert.errors import SourceNotFoundError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapter_convert"


def _data_files() -> list[str]:
    """Every file of the package that is not Python source, relative to the repository root."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".py", ".pyc")
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the sources, so the working tree gets no build/ or egg-info."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "adapter_convert", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(tmp / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (tmp / "dist").glob("adapter_convert-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_wheel_ships_every_data_file(wheel):
    names = set(wheel.namelist())
    for required in ("adapter_convert/calibration/default.txt", "adapter_convert/demo/data/val.conllu",
                     "adapter_convert/demo/data/test.conllu", "adapter_convert/demo/data/LICENSE",
                     "adapter_convert/demo/data/README.md", "adapter_convert/templates/model_card.md",
                     "adapter_convert/architectures/roles.json", "adapter_convert/architectures/data/phi3.json",
                     "adapter_convert/architectures/coverage.json"):
        assert required in names, required
    missing = [name for name in _data_files() if name not in names]
    assert not missing, f"data files left out of the wheel (add them to package-data): {missing}"


def test_wheel_accepts_any_recent_torch(wheel):
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist")
    (torch,) = [r for r in requires if re.match(r"torch\s*(\(|[<>=!~]|$)", r)]
    assert "==" not in torch, f"torch must be a range, not a pin: {torch!r}"


def test_demo_finds_its_packaged_sample_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared/data beside this directory
    folder = find_data()
    assert folder == packaged_data() and folder.is_absolute()
    train, test = ner.read_conll(folder / "val.conllu"), ner.read_conll(folder / "test.conllu")
    assert (len(train), len(test)) == (400, 300)
    for sentence in train + test:
        assert sentence.words and len(sentence.words) == len(sentence.tags)
        assert set(sentence.tags) <= set(ner.LABEL_IDS), sentence.tags
    for tag in ("B-PER", "B-ORG", "B-LOC", "B-MISC"):
        assert any(tag in s.tags for s in train) and any(tag in s.tags for s in test), tag


def test_demo_sample_carries_its_license_and_attribution():
    folder = packaged_data()
    for name in ("LICENSE", "README.md"):
        text = (folder / name).read_text(encoding="utf-8")
        for needle in ("CC BY-NC-SA 4.0", "Babelscape/wikineural", "Tedeschi", "EMNLP 2021", "Wikipedia"):
            assert needle in text, (name, needle)


def test_demo_data_option_still_takes_a_folder(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    for name in ("val.conllu", "test.conllu"):
        shutil.copy2(packaged_data() / name, full / name)
    assert find_data(full) == full
    (full / "test.conllu").unlink()
    with pytest.raises(SourceNotFoundError, match="test.conllu"):
        find_data(full)


def test_demo_command_runs_from_another_directory(tmp_path, monkeypatch):
    """The README's first command, from a directory with nothing beside it and no --data."""
    from typer.testing import CliRunner

    from adapter_convert.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "Scoring token F1 on 300 WikiNEuRal test sentences" in result.output
    assert (tmp_path / "adapter-convert-demo" / "student-ner-lora" / "adapter_config.json").is_file()
