"""A wrong architecture data file (data/<model_type>.json) is refused as it is read, naming the
file and the field: exit 4 with one message, never an internal error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_convert import architectures
from adapter_convert.cli import app
from adapter_convert.errors import UnsupportedError

PACKAGED = Path(architectures.__file__).parent


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    """A copy of the package's architecture data that a test may break; caches cleared around it."""
    folder = tmp_path / "architectures"
    shutil.copytree(PACKAGED, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(architectures, "_DATA", folder)
    architectures._architecture.cache_clear()
    yield folder / "data"
    architectures._architecture.cache_clear()


@pytest.mark.parametrize(("content", "message"), [
    ('{"fused_layout": {"attn.qkv": "concat"},', "bert.json is not valid JSON"),
    ('["modules"]', "bert.json holds a JSON list, not an object"),
    ('{"modulez": {}}', "bert.json sets unknown field 'modulez'"),
    ('{"modules": ["attention.self.query"]}', "bert.json sets 'modules' to ['attention.self.query'], but it must be an object of strings"),
    ('{"heads": {"TOKEN_CLS": 5}}', "bert.json sets 'heads' to {'TOKEN_CLS': 5}, but it must be an object of strings"),
    ('{"conv1d": "yes"}', "bert.json sets 'conv1d' to 'yes', but it must be true or false"),
    ('{"model_type": "roberta"}', "bert.json sets 'model_type' to 'roberta', but the file is for 'bert'"),
])
def test_bad_data_file_is_refused_naming_file_and_field(data_folder, content, message):
    (data_folder / "bert.json").write_text(content)
    with pytest.raises(UnsupportedError, match="adapter_convert/architectures/data/") as caught:
        architectures.load_override("bert")
    assert message in str(caught.value)


def test_good_data_file_still_reads(data_folder):
    (data_folder / "bert.json").write_text(json.dumps({"_why": "a test", "config": {"kv_heads": None}, "conv1d": False}))
    assert architectures.load_override("bert")["config"] == {"kv_heads": None}
    assert architectures.load_override("gpt2")["fused_layout"]  # the packaged files pass


def test_convert_with_a_bad_data_file_exits_4_not_internal(data_folder, tiny_pair):
    (data_folder / "bert.json").write_text('{"modules": ["attention.self.query"]}')
    result = CliRunner().invoke(app, ["convert", str(tiny_pair / "adapter"), "--target", str(tiny_pair / "student"),
                                      "--out", str(tiny_pair / "out"), "--align", "none"])
    assert result.exit_code == 4, result.output
    assert "Internal error" not in result.output
    assert "bert.json sets 'modules'" in result.output
