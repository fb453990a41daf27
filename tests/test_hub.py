"""The Hub, end to end: the real CLI and the real huggingface_hub client against the local
server in hub_server.py (HF_ENDPOINT points there; see conftest.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants, snapshot_download
from peft import PeftModel
from safetensors.torch import load_file
from typer.testing import CliRunner
from transformers import AutoModelForTokenClassification

from adapter_convert.cli import app

SHA = re.compile(r"^[0-9a-f]{40}$")
TOKEN = "tok-alice"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_subprocess(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed CLI in a fresh process: for settings huggingface_hub reads at import time."""
    return subprocess.run(
        [sys.executable, "-m", "adapter_convert", *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def on_hub(hub, tiny_pair):
    """alice/teacher, alice/student (base models) and alice/ner-lora (adapter naming alice/teacher)."""
    config_path = tiny_pair / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"base_model_name_or_path": "alice/teacher"}))
    hub.upload_folder("alice/teacher", tiny_pair / "teacher")
    hub.upload_folder("alice/student", tiny_pair / "student")
    hub.upload_folder("alice/ner-lora", tiny_pair / "adapter")
    return tiny_pair


def head_sha(hub, repo_id, ref="main"):
    return hub.repos[("model", repo_id)].refs[ref]


def test_pull_convert_push_download_and_load(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    result = run("convert", "alice/ner-lora@main", "--target", "alice/student", "--out", out,
                 "--push", "alice/ner-lora-distilbert", "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)

    # every source is pinned to the commit it resolved to
    assert summary["source_adapter"] == {"id": "alice/ner-lora", "revision": head_sha(hub, "alice/ner-lora"), "bytes": summary["source_adapter"]["bytes"]}
    assert summary["source_base"]["id"] == "alice/teacher" and summary["source_base"]["revision"] == head_sha(hub, "alice/teacher")
    assert summary["target_base"]["revision"] == head_sha(hub, "alice/student")
    assert f"alice/ner-lora@{head_sha(hub, 'alice/ner-lora')}" in summary["command_line"]
    assert summary["push"]["changed"] and SHA.match(summary["push"]["commit"])

    # only adapter files and the bases' configs were downloaded: no base weights
    fetched = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert fetched and not [p for p in fetched if p.endswith("model.safetensors") and "ner-lora" not in p]

    # what was pushed loads with peft onto the student, fetched from the Hub
    pushed = Path(snapshot_download("alice/ner-lora-distilbert", token=TOKEN))
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in pushed.iterdir()}
    student = AutoModelForTokenClassification.from_pretrained(snapshot_download("alice/student"))
    model = PeftModel.from_pretrained(student, pushed)
    loaded = model.base_model.model.distilbert.transformer.layer[1].attention.q_lin.lora_A["default"].weight
    source = load_file(on_hub / "adapter" / "adapter_model.safetensors")["base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.weight"]
    torch.testing.assert_close(loaded, source)
    assert json.loads((pushed / "adapter_config.json").read_text())["revision"] == head_sha(hub, "alice/student")

    # the card passes huggingface_hub's own parsing and records the pinned provenance
    card = ModelCard.load("alice/ner-lora-distilbert", token=TOKEN)
    assert card.data.base_model == "alice/student"
    assert card.data.library_name == "peft"
    assert {"peft", "adapter-convert", "lora", "bert", "distilbert"} <= set(card.data.tags)
    assert head_sha(hub, "alice/teacher") in card.text and head_sha(hub, "alice/ner-lora") in card.text


def test_second_run_is_served_offline_from_the_cache(hub, on_hub, tmp_path):
    first = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    before = len(hub.requests)
    second = run_subprocess("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "b",
                            env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE})
    assert second.returncode == 0, second.stderr
    assert len(hub.requests) == before  # not one request
    assert (tmp_path / "b" / "README.md").read_text() == (tmp_path / "a" / "README.md").read_text().replace(str(tmp_path / "a"), str(tmp_path / "b"))


def test_offline_without_cache_says_so(hub, on_hub, tmp_path):
    result = run_subprocess("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 15
    assert "HF_HUB_OFFLINE is set" in result.stderr and "not in the Hub cache" in result.stderr


def test_network_down(tmp_path, tiny_pair):
    with socket_closed_port() as port:
        result = run_subprocess("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o",
                                env={"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert result.returncode == 15, result.stderr
    assert "Could not reach the Hub at http://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


class socket_closed_port:
    """A port on 127.0.0.1 with nothing listening (bound, never listened, closed on exit)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "setup,args,code,message",
    [
        ("none", ["alice/missing"], 11, "was not found, or it is private and no token was given"),
        ("none", ["alice/missing", "--token", TOKEN], 10, "was not found, or the token given may not read it"),
        ("private", ["alice/ner-lora"], 11, "--token"),
        ("private", ["alice/ner-lora", "--token", "tok-bob"], 10, "may not read it"),
        ("gated", ["alice/ner-lora", "--token", "tok-bob"], 12, "is gated"),
        ("none", ["alice/ner-lora@v9"], 13, "has no revision 'v9'"),
        ("no-config", ["alice/ner-lora"], 14, "has no adapter_config.json on the Hub"),
    ],
)
def test_hub_failures_have_clear_messages_and_codes(hub, on_hub, tmp_path, setup, args, code, message):
    repo = hub.repos[("model", "alice/ner-lora")]
    if setup == "private":
        repo.private = True
    elif setup == "gated":
        repo.gated = True
    elif setup == "no-config":
        commit = repo.resolve("main")
        repo.add_commit("main", {k: v for k, v in commit.files.items() if k != "adapter_config.json"}, "break it")
    adapter, *options = args
    result = run("convert", adapter, "--target", "alice/student", "--out", tmp_path / "o", *options)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_gated_repo_with_access_downloads(hub, on_hub, tmp_path):
    repo = hub.repos[("model", "alice/ner-lora")]
    repo.gated, repo.gated_allowed = True, {"bob"}
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o", "--token", "tok-bob")
    assert result.exit_code == 0, result.output


def test_push_identical_content_twice_makes_no_commit(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    assert run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out).exit_code == 0
    first = run("push", out, "alice/pushed", "--token", TOKEN)
    assert first.exit_code == 0, first.output
    assert "Pushed commit" in first.output
    commits = len(hub.repos[("model", "alice/pushed")].commits)
    second = run("push", out, "alice/pushed", "--token", TOKEN)
    assert second.exit_code == 0
    assert "No changes" in second.output and "no commit was made" in second.output
    assert len(hub.repos[("model", "alice/pushed")].commits) == commits


def test_push_options_pr_branch_private_message(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    assert run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out).exit_code == 0
    assert run("push", out, "alice/pushed", "--private", "--token", TOKEN).exit_code == 0
    repo = hub.repos[("model", "alice/pushed")]
    assert repo.private
    main_before = repo.refs["main"]

    (out / "README.md").write_text((out / "README.md").read_text() + "\nEdited.\n")
    pr = run("push", out, "alice/pushed", "--create-pr", "--token", TOKEN, "--json")
    assert pr.exit_code == 0, pr.output
    result = json.loads(pr.stdout)
    assert result["pr_url"].endswith("/alice/pushed/discussions/1")
    assert "Opened pull request" in pr.output
    assert repo.refs["main"] == main_before
    assert repo.resolve("refs/pr/1").files["README.md"].endswith(b"Edited.\n")

    branch = run("push", out, "alice/pushed", "--branch", "release", "--commit-message", "Release 1", "--token", TOKEN)
    assert branch.exit_code == 0, branch.output
    assert repo.resolve("release").message == "Release 1"
    assert repo.refs["main"] == main_before


def test_the_token_never_appears(hub, on_hub, tmp_path):
    secret = "hf_SecretTokenValue0123456789"
    hub.tokens[secret] = "alice"
    out = tmp_path / "converted"
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", out,
                 "--push", "alice/pushed", "--token", secret, "--json")
    assert result.exit_code == 0, result.output
    assert secret not in result.output and secret not in result.stdout
    for path in out.iterdir():
        assert secret.encode() not in path.read_bytes()
    failure = run("push", out, "bob/elsewhere", "--token", secret)  # a refused write
    assert failure.exit_code == 11, failure.output
    assert secret not in failure.output


def test_push_refuses_an_incomplete_folder(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    assert run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out).exit_code == 0
    (out / "README.md").unlink()
    result = run("push", out, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 3
    assert "no README.md model card" in result.output
    assert ("model", "alice/pushed") not in hub.repos


def test_failed_conversion_pushes_nothing(hub, on_hub, tmp_path):
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o",
                 "--layer-map", "0:0,9:1", "--push", "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 5
    assert ("model", "alice/pushed") not in hub.repos
    assert not any(method == "POST" for method, _ in hub.requests)


def test_download_survives_a_server_error_and_a_cut_connection(hub, on_hub, tmp_path):
    hub.fail("HEAD", "/alice/ner-lora/resolve/", "500", times=1)  # metadata: retried
    hub.fail("GET", "adapter_model.safetensors", "cut", times=1)  # body cut: resumed with a Range request
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    cached = Path(constants.HF_HUB_CACHE) / "models--alice--ner-lora" / "snapshots" / head_sha(hub, "alice/ner-lora")
    assert (cached / "adapter_model.safetensors").read_bytes() == (on_hub / "adapter" / "adapter_model.safetensors").read_bytes()


def test_file_server_error_fails_cleanly_and_a_rerun_succeeds(hub, on_hub, tmp_path):
    hub.fail("GET", "adapter_model.safetensors", "500", times=1)  # huggingface_hub does not retry file GETs on 5xx
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 15, result.output
    assert "The Hub answered HTTP 500 while downloading a file of the adapter alice/ner-lora" in result.output
    assert not (tmp_path / "o").exists()
    again = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert again.exit_code == 0, again.output


def test_download_cut_for_good_fails_cleanly_and_leaves_no_broken_file(hub, on_hub, tmp_path):
    hub.fail("GET", "adapter_model.safetensors", "cut", times=100)
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 15, result.output
    assert "Traceback" not in result.output
    snapshots = Path(constants.HF_HUB_CACHE) / "models--alice--ner-lora" / "snapshots"
    assert not list(snapshots.rglob("adapter_model.safetensors"))
    assert not (tmp_path / "o").exists()


def test_commit_dropped_mid_way_leaves_no_partial_commit(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    assert run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out).exit_code == 0
    hub.create_repo("alice/pushed")
    before = dict(hub.repos[("model", "alice/pushed")].refs)
    hub.fail("POST", "/commit/", "drop", times=100)
    result = run("push", out, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 15, result.output
    assert "Could not reach the Hub" in result.output or "HTTP" in result.output
    assert hub.repos[("model", "alice/pushed")].refs == before


def test_commit_server_error_is_retried_then_succeeds(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    assert run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out).exit_code == 0
    hub.fail("POST", "/commit/", "500", times=1)
    result = run("push", out, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert b"adapter_config.json" in b"".join(k.encode() for k in hub.repos[("model", "alice/pushed")].resolve("main").files)


def test_a_hub_that_times_out_fails_cleanly(hub, on_hub, tmp_path):
    hub.fail("GET", "/alice/ner-lora/resolve/", "hang", times=100)  # file downloads use HF_HUB_DOWNLOAD_TIMEOUT
    started = time.monotonic()
    result = run_subprocess("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o",
                            env={"HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"})
    attempts = sum(1 for method, path in hub.requests if method == "GET" and "/alice/ner-lora/resolve/" in path)
    print(f"gave up after {time.monotonic() - started:.1f}s and {attempts} attempts:", result.stderr.replace(chr(10), " ")[-400:])
    assert result.returncode == 15, result.stderr
    files = 2  # adapter_config.json and adapter_model.safetensors: each one first attempt, the rest retries
    assert "timed out" in result.stderr.lower() and f"after {attempts - files} retries" in result.stderr
    assert "Trying to resume download" not in result.stderr  # the client's own chatter stays out of the output
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_token_from_the_environment_reads_a_private_repo(hub, on_hub, tmp_path):
    hub.repos[("model", "alice/ner-lora")].private = True
    result = run_subprocess("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o", env={"HF_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
