"""The CLI through typer's runner: exit codes, messages, what is (not) written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from adapter_convert.cli import app
from helpers import run_cli as run, save_tiny_model

runner = CliRunner()


def convert_args(pair, *extra):
    return ("convert", pair / "adapter", "--target", pair / "student", "--out", pair / "out", *extra)


def test_convert_writes_a_loadable_adapter_with_a_card(tiny_pair):
    result = run(*convert_args(tiny_pair, "--layer-map", "skip"))
    assert result.exit_code == 0, result.output
    assert "Conversion plan" in result.output and "attention.q_lin" in result.output
    out = tiny_pair / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_pair / "student")
    assert sorted(config["target_modules"]) == ["q_lin", "v_lin"]
    tensors = load_file(out / "adapter_model.safetensors")
    source = load_file(tiny_pair / "adapter" / "adapter_model.safetensors")
    torch.testing.assert_close(
        tensors["base_model.model.distilbert.transformer.layer.1.attention.q_lin.lora_A.weight"],
        source["base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.weight"],
    )
    # no temporary folders left beside the output
    assert not [p for p in tiny_pair.iterdir() if p.name.startswith(".out.")]


def test_model_card_metadata_and_provenance(tiny_pair):
    from huggingface_hub import ModelCard

    assert run(*convert_args(tiny_pair)).exit_code == 0
    card = ModelCard.load(tiny_pair / "out" / "README.md")
    assert card.data.base_model == str(tiny_pair / "student")
    assert card.data.library_name == "peft"
    assert card.data.base_model_relation == "adapter"
    assert {"peft", "adapter-convert", "lora", "bert", "distilbert"} <= set(card.data.tags)
    text = card.text
    assert "| 1 | 2 |" in text  # the layer map table: target 1 <- source 2
    assert f"adapter-convert convert {tiny_pair / 'adapter'} --target {tiny_pair / 'student'}" in text
    assert str(tiny_pair / "teacher") in text and "0.1.0" in text


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_pair):
    result = run(*convert_args(tiny_pair, "--dry-run", "--layer-map", "avg"))
    assert result.exit_code == 0, result.output
    assert "layer map (avg)" in result.output and "0+1, 2+3" in result.output
    assert "nothing written" in result.output
    assert not (tiny_pair / "out").exists()


def test_json_summary_is_the_only_stdout(tiny_pair):
    result = CliRunner().invoke(app, [str(a) for a in convert_args(tiny_pair, "--json")])
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["layer_map"] == {"strategy": "skip", "rows": [{"target": 0, "sources": [0]}, {"target": 1, "sources": [2]}]}
    assert summary["source_base"]["model_type"] == "bert" and summary["target_base"]["model_type"] == "distilbert"
    assert summary["output"]["tensors"] == 8 + 2  # 2 layers x (q, v) x (A, B) + classifier weight, bias
    assert summary["dry_run"] is False and summary["push"] is None
    dry = json.loads(CliRunner().invoke(app, [str(a) for a in convert_args(tiny_pair, "--json", "--dry-run")]).stdout)
    assert dry.keys() == summary.keys() and dry["alignment"].keys() == summary["alignment"].keys()  # one shape, nulls where not run
    assert dry["alignment"] == summary["alignment"] and summary["alignment"]["device"] is None  # a direct mapping runs no alignment


def test_existing_output_needs_force_and_force_spares_other_files(tiny_pair):
    (tiny_pair / "out").mkdir()
    (tiny_pair / "out" / "keep.txt").write_text("mine")
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 6
    assert "already exists" in result.output and "--force" in result.output
    result = run(*convert_args(tiny_pair, "--force"))  # not a previous output: refused, listing what it would delete
    assert result.exit_code == 6, result.output
    assert "would have deleted: keep.txt" in result.output
    assert (tiny_pair / "out" / "keep.txt").read_text() == "mine"


def test_force_replaces_a_previous_output(tiny_pair):
    assert run(*convert_args(tiny_pair)).exit_code == 0
    (tiny_pair / "out" / "adapter_model.bin").write_bytes(b"stale")  # a file a previous output may hold
    result = run(*convert_args(tiny_pair, "--force", "--layer-map", "0:0,1:1"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tiny_pair / "out").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(tiny_pair / "out" / "adapter_model.safetensors")
    source = load_file(tiny_pair / "adapter" / "adapter_model.safetensors")
    torch.testing.assert_close(  # the new layer map's tensors, not the first run's
        tensors["base_model.model.distilbert.transformer.layer.1.attention.q_lin.lora_A.weight"],
        source["base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight"],
    )


def corrupt(pair, what):
    adapter = pair / "adapter"
    weights = adapter / "adapter_model.safetensors"
    config = adapter / "adapter_config.json"
    if what == "missing config":
        config.unlink()
    elif what == "malformed config":
        config.write_text("{not json")
    elif what == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:200])
    elif what == "nan":
        tensors = load_file(weights)
        next(iter(tensors.values()))[0, 0] = float("nan")
        save_file(tensors, weights)
    elif what == "wrong shapes":
        tensors = load_file(weights)
        key = next(k for k in tensors if "lora_A" in k)
        tensors[key] = torch.zeros(4, 48)
        save_file(tensors, weights)
    elif what == "keys of another base":
        tensors = load_file(weights)
        tensors = {k.replace("encoder.layer.3.", "encoder.layer.9."): v for k, v in tensors.items()}
        save_file(tensors, weights)
    elif what == "pickle only":
        torch.save(load_file(weights), adapter / "adapter_model.bin")
        weights.unlink()
    elif what == "unsupported type":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"peft_type": "PROMPT_TUNING"}))


@pytest.mark.parametrize(
    "what,code,message",
    [
        ("missing config", 3, "has no adapter_config.json"),
        ("malformed config", 3, "is not valid JSON"),
        ("truncated weights", 3, "corrupt or truncated"),
        ("nan", 3, "NaN or Inf"),
        ("wrong shapes", 3, "has shape (4, 48), which disagrees with the base config"),
        ("keys of another base", 3, "layer 9 does not exist, the base has 4 layers"),
        ("pickle only", 3, "--allow-pickle"),
        ("unsupported type", 4, "'PROMPT_TUNING' is not supported"),
    ],
)
def test_bad_adapters_fail_cleanly(tiny_pair, what, code, message):
    corrupt(tiny_pair, what)
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tiny_pair / "out").exists()
    assert not [p for p in tiny_pair.iterdir() if p.name.startswith(".out")]


def test_pickled_adapter_loads_when_allowed(tiny_pair):
    corrupt(tiny_pair, "pickle only")
    result = run(*convert_args(tiny_pair, "--allow-pickle"))
    assert result.exit_code == 0, result.output
    assert (tiny_pair / "out" / "adapter_model.safetensors").is_file()


def test_unknown_model_type(tiny_pair):
    config = tiny_pair / "student" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_type": "no_such_model"}))
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 4, result.output
    assert "Unknown model_type 'no_such_model'" in result.output and "distilbert" in result.output


@pytest.mark.parametrize(
    "layer_map,message",
    [
        ("0:0,9:1", "Source layer 9 in the layer map is out of range: the source has layers 0..3"),
        ("0:0,1:5", "Target layer 5 in the layer map is out of range"),
        ("0:0,1:0", "Target layer 0 appears twice"),
        ("zigzag", "Unknown layer map 'zigzag'"),
        ("0-0", "Unknown layer map"),
    ],
)
def test_bad_layer_maps(tiny_pair, layer_map, message):
    result = run(*convert_args(tiny_pair, "--layer-map", layer_map))
    assert result.exit_code == 5, result.output
    assert message in result.output


def test_skip_needs_a_multiple(tiny_pair):
    save_tiny_model(tiny_pair / "student3", "distilbert", 3)
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "student3", "--out", tiny_pair / "out", "--layer-map", "skip")
    assert result.exit_code == 5
    assert "--layer-map uniform" in result.output


def test_missing_source_base(tiny_pair):
    result = run(*convert_args(tiny_pair, "--source-base", tiny_pair / "nowhere"))
    assert result.exit_code == 9
    assert "is neither a folder on this machine nor a Hub repo id" in result.output


def test_verification_failure_leaves_nothing(tiny_pair, monkeypatch):
    """If peft cannot load the result, the command fails and the output never appears."""
    from adapter_convert import peft_config

    real = peft_config.target_module_names
    monkeypatch.setattr(peft_config, "target_module_names", lambda *a, **k: real(*a, **k)[:1])
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 7, result.output
    assert "missing" in result.output
    assert not (tiny_pair / "out").exists()
    assert not [p for p in tiny_pair.iterdir() if p.name.startswith(".out")]


def test_help_teaches():
    result = run("convert", "--help")
    assert result.exit_code == 0
    for word in ("--target", "--layer-map", "skip", "--dry-run", "--json", "--force", "Exit codes"):
        assert word in result.output


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["convert", "--help"], 0), (["version"], 0), (["--version"], 0), (["convert", "x"], 2),
                                        (["convert", "x", "--target", "y", "--out", "z", "--lr", "fast"], 2)])
def test_help_version_and_usage_errors_load_no_heavy_library(args, code):
    """Start-up stays light: torch, transformers and peft load only inside a command that runs
    (start-up time itself is a benchmark: benchmarks/startup.py)."""
    probe = ("import sys\nfrom adapter_convert.cli import app\nfrom typer.testing import CliRunner\n"
             f"result = CliRunner().invoke(app, {args!r})\n"
             "print(result.exit_code, sorted(m for m in ('torch', 'transformers', 'peft', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [str(code), "[]"], done.stdout + done.stderr
