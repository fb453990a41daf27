"""Data safety and bad input: the output never lands on an input or a user's files, nothing partial
survives a failure or a signal, and every bad value ends as a typed error naming it.

docs/reliability.md tabulates what these tests try."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import run_cli as run, save_tiny_model


def convert_args(pair, *extra, out=None):
    return ("convert", pair / "adapter", "--target", pair / "student", "--out", out or pair / "out", *extra)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes: equal snapshots, untouched folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def teacher_model(pair: Path):
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(pair / "teacher")


def leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --- 1. data safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["student", "adapter", "teacher", ".", "adapter/sub", "link-to-student"])
def test_out_never_lands_on_an_input(tiny_pair, victim):
    """--out that is, holds or lies inside an input (after symlinks) is refused, even with --force."""
    (tiny_pair / "train.py").write_text("print('my training script')\n")
    (tiny_pair / "link-to-student").symlink_to(tiny_pair / "student")
    before = snapshot(tiny_pair)
    result = run(*convert_args(tiny_pair, "--force", out=tiny_pair / victim))
    assert result.exit_code == 6, result.output
    # the source base is named inside the adapter, so the first check to see it may be --force's
    assert "could destroy an input" in result.output or "would have deleted: config.json, model.safetensors" in result.output
    assert snapshot(tiny_pair) == before
    assert not leftovers(tiny_pair, tiny_pair / "adapter")


def test_out_holding_the_calibration_file_is_refused(tiny_pair):
    data = tiny_pair / "calib"
    data.mkdir()
    (data / "text.txt").write_text("Some calibration sentence.\n")
    result = run(*convert_args(tiny_pair, "--force", "--calibration-data", data / "text.txt", out=data))
    assert result.exit_code == 6, result.output
    assert "calibration data" in result.output
    assert (data / "text.txt").read_text() == "Some calibration sentence.\n"


def test_force_refuses_a_folder_that_is_not_a_previous_output(tiny_pair):
    out = tiny_pair / "out"
    (out / "data").mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "notes.txt").write_text("keep")
    before = snapshot(out)
    result = run(*convert_args(tiny_pair, "--force"))
    assert result.exit_code == 6, result.output
    assert "would have deleted: data/, notes.txt" in result.output
    assert snapshot(out) == before


def test_out_dot_with_force_replaces_the_files_in_place(tiny_pair, monkeypatch):
    out = tiny_pair / "out"
    assert run(*convert_args(tiny_pair)).exit_code == 0
    monkeypatch.chdir(out)
    result = run(*convert_args(tiny_pair, "--force", out="."))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert not leftovers(out, tiny_pair)


def test_out_as_a_dangling_symlink_writes_at_its_target(tiny_pair):
    link, target = tiny_pair / "link", tiny_pair / "elsewhere" / "converted"
    link.symlink_to(target)
    result = run(*convert_args(tiny_pair, out=link))
    assert result.exit_code == 0, result.output
    assert (target / "adapter_model.safetensors").is_file() and (link / "README.md").is_file()
    assert not leftovers(tiny_pair, target.parent)


def test_output_folder_gets_the_umask_permissions(tiny_pair):
    old = os.umask(0o022)
    try:
        assert run(*convert_args(tiny_pair)).exit_code == 0
    finally:
        os.umask(old)
    assert (tiny_pair / "out").stat().st_mode & 0o777 == 0o755


def _spawn_convert(pair: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "adapter_convert", *map(str, convert_args(pair, out=out))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_partial(process: subprocess.Popen, folder: Path, timeout: float = 120) -> bool:
    """Poll until the run has a partial output folder (it is writing), or it ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if leftovers(folder):
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_writing_leaves_nothing(tiny_pair, signum, code):
    out = tiny_pair / "out"
    for _ in range(3):  # the write takes a fraction of a second: retry if the signal came too late
        process = _spawn_convert(tiny_pair, out)
        caught = _wait_for_partial(process, tiny_pair)
        if caught:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        if caught and process.returncode == code:
            break
        if out.exists():
            import shutil

            shutil.rmtree(out)
    assert process.returncode == code, stderr
    assert "nothing partial was left behind" in stderr
    assert not out.exists() and not leftovers(tiny_pair)


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tiny_pair):
    out = tiny_pair / "out"
    process = _spawn_convert(tiny_pair, out)
    caught = _wait_for_partial(process, tiny_pair)
    process.kill()  # SIGKILL: no cleanup can run
    process.communicate(timeout=60)
    if not caught:  # fall back to the state such a kill leaves: a partial folder of a dead process
        (tiny_pair / ".out.partial-999999999-dead").mkdir()
    assert leftovers(tiny_pair) or out.exists()
    result = run(*convert_args(tiny_pair, "--force"))
    assert result.exit_code == 0, result.output
    assert not leftovers(tiny_pair)


# --- 2. bad input: typed errors with their own exit codes --------------------------------------


def edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"n_layers": 0}, ["n_layers", "0"]),
        ({"n_layers": "two"}, ["n_layers", "'two'"]),
        ({"n_layers": 2.5}, ["n_layers", "2.5"]),
        ({"n_layers": None}, ["n_layers", "None"]),
        ({"n_layers": -2}, ["n_layers", "-2"]),
        ({"n_layers": 10**9}, ["n_layers", "1000000000"]),
        ({"n_heads": 0}, ["n_heads"]),
        ({"dim": 30}, ["which n_heads=4 does not divide"]),
        ({"dim": -32}, ["dim", "-32"]),
    ],
)
def test_bad_target_config_values(tiny_pair, changes, message):
    """distilbert's config names: n_layers, n_heads, dim."""
    edit_json(tiny_pair / "student" / "config.json", **changes)
    started = time.monotonic()
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 16, result.output
    assert all(word in result.output for word in message) and "target base" in result.output
    assert time.monotonic() - started < 60  # sizes are checked before anything is built from them
    assert not (tiny_pair / "out").exists()


def test_config_that_is_a_json_list(tiny_pair):
    (tiny_pair / "student" / "config.json").write_text("[1, 2]")
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 16, result.output
    assert "holds a JSON list" in result.output


@pytest.mark.parametrize("model_type", ["../roles", "../../../../elsewhere/x", "Bert/../x", 7])
def test_model_type_is_never_a_path(tiny_pair, model_type):
    edit_json(tiny_pair / "student" / "config.json", model_type=model_type)
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 16, result.output
    assert "is not a model type name" in result.output


@pytest.mark.parametrize("changes,message", [({"r": "four"}, "sets r to 'four'"), ({"r": 8}, "rank 8 (r), but its LoRA tensors have rank 4"),
                                             ({"lora_alpha": float("nan")}, "lora_alpha"), ({"rank_pattern": {"query": 0}}, "rank_pattern['query']")])
def test_adapter_config_must_agree_with_its_tensors(tiny_pair, changes, message):
    edit_json(tiny_pair / "adapter" / "adapter_config.json", **changes)
    result = run(*convert_args(tiny_pair))
    assert result.exit_code == 3, result.output
    assert message in result.output


@pytest.mark.parametrize("payload,message", [([1, 2, 3], "holds list"), ({"base_model.model.x.lora_A.weight": 5}, "non-tensor")])
def test_pickled_adapter_that_is_not_a_state_dict(tiny_pair, payload, message):
    adapter = tiny_pair / "adapter"
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(payload, adapter / "adapter_model.bin")
    result = run(*convert_args(tiny_pair, "--allow-pickle"))
    assert result.exit_code == 3, result.output
    assert message in result.output


def test_explicit_layer_map_onto_unadapted_layers(tiny_pair):
    weights = tiny_pair / "adapter" / "adapter_model.safetensors"  # keep layers 0 and 1 only
    save_file({k: v for k, v in load_file(weights).items() if "layer.2." not in k and "layer.3." not in k}, weights)
    result = run(*convert_args(tiny_pair, "--layer-map", "2:0,3:1"))
    assert result.exit_code == 5, result.output
    assert "source layer(s) 2, 3, which carry no adapter" in result.output and "'0:0,1:1'" in result.output
    assert run(*convert_args(tiny_pair, "--layer-map", "0:0,1:1")).exit_code == 0


@pytest.mark.parametrize("option,value", [("--lr", "nan"), ("--lr", "-1"), ("--lr", "inf"), ("--seed", "99999999999999999999999"), ("--seed", "-1"),
                                          ("--memory-budget", "lots"), ("--memory-budget", "10KiB"), ("--min-fidelity", "1.5"),
                                          ("--min-fidelity", "nan"), ("--span-weight", "nan"), ("--span-weight", "inf"),
                                          ("--span-weight", "-1")])
def test_bad_option_values(tiny_pair, option, value):
    result = run(*convert_args(tiny_pair, option, value))
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("content,message", [(b"", "holds no text"), (b"\n \n", "holds no text"), (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text"),
                                              (b"abc\x00def", "binary file")])
def test_bad_calibration_files(tiny_pair, content, message):
    data = tiny_pair / "calibration.txt"
    data.write_bytes(content)
    save_tiny_model(tiny_pair / "wide", "distilbert", 2, hidden_size=48, hidden_dim=96)  # other widths: alignment
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "wide", "--out", tiny_pair / "out", "--calibration-data", data)
    assert result.exit_code == 17, result.output
    assert message in result.output and "calibration" in result.output.lower()


def test_out_under_a_file(tiny_pair):
    (tiny_pair / "a-file").write_text("x")
    result = run(*convert_args(tiny_pair, out=tiny_pair / "a-file" / "sub"))
    assert result.exit_code == 18, result.output
    assert "is a file, not a folder" in result.output


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


def test_read_only_output_parent(tiny_pair):
    parent = tiny_pair / "readonly"
    if not _mount_tmpfs(parent, "ro,size=1m"):
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here, and root ignores file modes")
        parent.chmod(0o555)
    try:
        result = run(*convert_args(tiny_pair, out=parent / "out"))
    finally:
        subprocess.run(["umount", str(parent)], capture_output=True)
    assert result.exit_code == 18, result.output
    assert "permission" in result.output.lower()


def test_disk_full_says_so_and_leaves_nothing(tiny_pair):
    disk = tiny_pair / "small-disk"
    if not _mount_tmpfs(disk, "size=12k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        result = run(*convert_args(tiny_pair, out=disk / "out"))
        assert result.exit_code == 18, result.output
        assert "The disk is full" in result.output
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("layer_map", ["auto", "uniform", "0:0,0:1,1:2,1:3,2:4,2:5,3:6,3:7"])
def test_deeper_target_gets_independent_copies(tiny_pair, layer_map):
    """A 4-layer adapter onto an 8-layer target: each source layer feeds two target layers."""
    save_tiny_model(tiny_pair / "deep", "distilbert", 8, embeddings_from=teacher_model(tiny_pair))
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "deep", "--out", tiny_pair / "out", "--layer-map", layer_map)
    assert result.exit_code == 0, result.output
    tensors = load_file(tiny_pair / "out" / "adapter_model.safetensors")
    source = load_file(tiny_pair / "adapter" / "adapter_model.safetensors")
    for target_layer in range(8):
        torch.testing.assert_close(
            tensors[f"base_model.model.distilbert.transformer.layer.{target_layer}.attention.q_lin.lora_B.weight"],
            source[f"base_model.model.bert.encoder.layer.{target_layer // 2}.attention.self.query.lora_B.weight"],
        )


def test_skip_onto_a_deeper_target_is_a_layer_map_error(tiny_pair):
    save_tiny_model(tiny_pair / "deep", "distilbert", 8, embeddings_from=teacher_model(tiny_pair))
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "deep", "--out", tiny_pair / "out", "--layer-map", "skip")
    assert result.exit_code == 5, result.output
    assert "--layer-map uniform" in result.output


# --- 3. identical inputs, byte-identical outputs --------------------------------------------------


def test_same_conversion_gives_byte_identical_files(tiny_pair):
    """Across hash seeds (peft keeps target_modules in a set) and --out names."""
    names = ("first", "second", "third")
    runs = [subprocess.Popen([sys.executable, "-m", "adapter_convert", *map(str, convert_args(tiny_pair, out=tiny_pair / name))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": str(seed)})
            for seed, name in enumerate(names, start=1)]  # side by side: each run is mostly its imports
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    outputs = [snapshot(tiny_pair / name) for name in names]
    assert outputs[0] == outputs[1] == outputs[2]
    card = (tiny_pair / "first" / "README.md").read_text()
    assert str(tiny_pair / "first") not in card and "--out ./converted-adapter" in card


def test_every_exit_code_is_documented():
    from adapter_convert.cli import EXIT_CODES
    from adapter_convert.errors import SIGNAL_EXIT_CODES, exit_code_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text()
    section = docs.split("## Exit codes")[1].split("\n## ")[0]
    table = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    documented = {int(code) for cell in table[1:] for code in cell.split(",")}  # after the header row
    assert documented == {code for code, _ in exit_code_table()} | set(SIGNAL_EXIT_CODES)  # none missing, none stale
    for code, label in [*exit_code_table(), *SIGNAL_EXIT_CODES.items()]:
        assert f"{code} {label}" in EXIT_CODES
