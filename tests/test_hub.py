"""The Hub, end to end: the real CLI and the real huggingface_hub client against the local
server in hub_server.py (HF_ENDPOINT points there; see conftest.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard, constants, snapshot_download
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification

from helpers import run_cli as run

SHA = re.compile(r"^[0-9a-f]{40}$")
TOKEN = "tok-alice"


def run_subprocess(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed CLI in a fresh process: for settings huggingface_hub reads at import time."""
    return subprocess.run(
        [sys.executable, "-m", "adapter_convert", *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def head_sha(hub, repo_id, ref="main"):
    return hub.repos[("model", repo_id)].refs[ref]


def seen(hub, method, part):
    """The requests the server saw with this method and this text in their path."""
    return [path for m, path in hub.requests if m == method and part in path]


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The back-off waits between retries, recorded and made instant: those of huggingface_hub's
    http_backoff and adapter-convert's own. Faults that last every try then cost no time."""
    import huggingface_hub.utils._http as hf_http

    from adapter_convert.hub import retry

    recorded: list[float] = []
    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=recorded.append))
    monkeypatch.setattr(retry, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def converted(hub, on_hub, tmp_path) -> Path:
    """A converted adapter folder (config, weights, card), ready to push; the server's request log is emptied."""
    out = tmp_path / "converted"
    result = run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out)
    assert result.exit_code == 0, result.output
    hub.requests.clear()
    return out


def test_pull_convert_push_download_and_load(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    result = run("convert", "alice/ner-lora@main", "--target", "alice/student", "--out", out,
                 "--push", "alice/ner-lora-distilbert", "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "names its base by a local path" not in result.output  # converted from Hub ids: no warning

    # every source is pinned to the commit it resolved to
    adapter_sha = head_sha(hub, "alice/ner-lora")
    assert summary["source_adapter"] == {"id": "alice/ner-lora", "revision": adapter_sha, "bytes": summary["source_adapter"]["bytes"],
                                         "url": f"{os.environ['HF_ENDPOINT']}/alice/ner-lora/tree/{adapter_sha}", "license": None}
    assert summary["source_base"]["id"] == "alice/teacher" and summary["source_base"]["revision"] == head_sha(hub, "alice/teacher")
    assert summary["target_base"]["revision"] == head_sha(hub, "alice/student")
    assert f"alice/ner-lora@{head_sha(hub, 'alice/ner-lora')}" in summary["command_line"]
    assert summary["push"]["changed"] and SHA.match(summary["push"]["commit"])

    # the adapter's files and the bases' configs were downloaded; of the base weights only the byte
    # ranges the compatibility probe needs (header, token-embedding rows), never the files
    assert summary["compatibility"]["verdict"] == "compatible"
    fetched = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert fetched
    size = min(len(hub.repos[("model", f"alice/{repo}")].commits[head_sha(hub, f"alice/{repo}")].files["model.safetensors"])
               for repo in ("teacher", "student"))
    weights = [n for path, n in hub.served if path == "model.safetensors"]
    assert weights and all(n < size for n in weights), (weights, size)  # byte ranges, never a whole file

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
    assert card.data.converted_from == {"adapter": "alice/ner-lora", "revision": adapter_sha, "url": summary["source_adapter"]["url"],
                                        "base_model": "alice/teacher", "base_model_revision": head_sha(hub, "alice/teacher")}
    assert card.data.license is None and "states no license" in card.text  # none stated by the source: none invented
    assert card.data.eval_results is None and "Not measured: the tensors were copied" in card.text  # a copy measures nothing


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


def test_network_down(tmp_path, tiny_pair, waits, monkeypatch):
    with socket_closed_port() as port:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # what HF_ENDPOINT sets at import
        result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 15, result.output
    assert f"Could not reach the Hub at http://127.0.0.1:{port} for the adapter alice/ner-lora" in result.output
    assert "after 5 retries" in result.output and waits == [1, 2, 4, 8, 8]  # huggingface_hub's back-off, made instant
    assert "Traceback" not in result.output


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
    assert "names its base by a local path" in first.output  # converted from local folders: said before publishing
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


@pytest.mark.parametrize(
    "method,part,kind,backoff",
    [
        ("GET", "/api/models/alice/ner-lora/revision/", "500", [1.0]),  # the first metadata request
        ("GET", "/api/models/alice/ner-lora/revision/", "drop", [1.0]),
        ("GET", "/alice/ner-lora/resolve/", "500", [1.0]),  # a file download (huggingface_hub retries only 408/429 there)
        ("GET", "/alice/ner-lora/resolve/", "drop", []),  # resumed by huggingface_hub itself (its own 1 s pause)
        ("HEAD", "/alice/ner-lora/resolve/", "drop", [1.0]),  # a file's metadata
    ],
)
def test_one_server_error_or_dropped_connection_is_retried(hub, on_hub, tmp_path, waits, method, part, kind, backoff):
    hub.fail(method, part, kind, times=1)
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert hub.faults[0].times == 0  # the fault was hit ...
    first = next(path for m, path in hub.requests if m == method and part in path)
    assert seen(hub, method, first).count(first) == 2  # ... and that same request was sent again
    assert waits == backoff


def test_file_server_error_that_persists_fails_after_retries_and_a_rerun_succeeds(hub, on_hub, tmp_path, waits):
    hub.fail("GET", "adapter_model.safetensors", "500", times=6)
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 15, result.output
    assert "The Hub answered HTTP 500 while downloading a file of the adapter alice/ner-lora, after 5 retries." in result.output
    assert len(seen(hub, "GET", "adapter_model.safetensors")) == 6 and waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert not (tmp_path / "o").exists()
    again = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert again.exit_code == 0, again.output


def test_download_cut_for_good_fails_cleanly_and_leaves_no_broken_file(hub, on_hub, tmp_path, waits):
    hub.fail("GET", "adapter_model.safetensors", "cut", times=100)
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 15, result.output
    assert "Traceback" not in result.output
    snapshots = Path(constants.HF_HUB_CACHE) / "models--alice--ner-lora" / "snapshots"
    assert not list(snapshots.rglob("adapter_model.safetensors"))
    assert not (tmp_path / "o").exists()


def test_commit_dropped_mid_way_leaves_no_partial_commit(hub, converted, waits):
    hub.create_repo("alice/pushed")
    before = dict(hub.repos[("model", "alice/pushed")].refs)
    hub.fail("POST", "/commit/", "drop", times=100)
    result = run("push", converted, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 15, result.output
    assert "Could not reach the Hub" in result.output and "after 5 retries" in result.output
    assert f"alice/pushed@main is unchanged (still at commit {before['main'][:12]})" in result.output
    assert "Check the network and HF_ENDPOINT. Then run the same command again; it creates only what is missing" in result.output
    assert "cache" not in result.output
    assert hub.repos[("model", "alice/pushed")].refs == before
    assert len(seen(hub, "POST", "/commit/")) == 6  # each retry only after reading main back: nothing had landed


def test_commit_server_error_is_retried_then_succeeds(hub, on_hub, tmp_path):
    out = tmp_path / "converted"
    assert run("convert", on_hub / "adapter", "--target", on_hub / "student", "--out", out).exit_code == 0
    hub.fail("POST", "/commit/", "500", times=1)
    result = run("push", out, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert b"adapter_config.json" in b"".join(k.encode() for k in hub.repos[("model", "alice/pushed")].resolve("main").files)


def test_a_hub_that_times_out_fails_cleanly(hub, on_hub, tmp_path, waits, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.2)  # HF_HUB_DOWNLOAD_TIMEOUT, read per download
    # one file that never answers (the others arrive)
    hub.fail("GET", "/adapter_model.safetensors", "hang", times=100)
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    attempts = sum(1 for method, path in hub.requests if method == "GET" and path.endswith("/adapter_model.safetensors"))
    print(f"gave up after {attempts} attempts, waiting {sum(waits):.0f} s in all:", result.output.replace(chr(10), " ")[-400:])
    assert result.exit_code == 15, result.output
    assert attempts > 1 and "timed out" in result.output.lower() and f"after {attempts - 1} retries" in result.output
    assert "Trying to resume download" not in result.output  # the client's own chatter stays out of the output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_token_from_the_environment_reads_a_private_repo(hub, on_hub, tmp_path, monkeypatch):
    hub.repos[("model", "alice/ner-lora")].private = True
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub reads it on each request
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output


# ---- publishing: what is uploaded, option checks, debris, truthful messages, duplicate PRs ----


def pushed_files(hub, repo_id="alice/pushed", ref="main") -> dict[str, bytes]:
    return hub.repos[("model", repo_id)].resolve(ref).files


def test_push_uploads_only_the_adapter_and_its_card(hub, converted):
    (converted / ".env").write_text("HF_TOKEN=hf_LeakedTokenValue0123456789\n")
    (converted / "notes.txt").write_text("scratch notes\n")
    (converted / "sub").mkdir()
    (converted / "sub" / "x.bin").write_bytes(b"\0" * 16)
    result = run("push", converted, "alice/pushed", "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    assert set(pushed_files(hub)) == {".gitattributes", "adapter_config.json", "adapter_model.safetensors", "README.md"}
    for commit in hub.repos[("model", "alice/pushed")].commits.values():
        assert not any(b"hf_LeakedTokenValue" in content for content in commit.files.values())
    summary = json.loads(result.stdout)
    assert summary["created"] == ["repo alice/pushed"] and summary["changed"]
    assert summary["files"] == ["adapter_config.json", "adapter_model.safetensors", "README.md"]
    assert summary["left_out"] == [".env", "notes.txt", "sub/x.bin"]
    assert "Left out (only adapter_config.json, adapter_model.safetensors, README.md are published): .env, notes.txt, sub/x.bin" in result.output


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--branch", "refs/pr/1", "--create-pr"], 2, "--create-pr would open another one"),
        (["--branch", "bad..name"], 2, "is not a valid branch name"),
        (["--branch", "0123456789abcdef0123456789abcdef01234567"], 2, "is a commit sha"),
        (["--commit-message", " "], 2, "--commit-message is empty"),
        (["--repo", "alice/pushed@v1"], 2, "Push to alice/pushed with --branch v1"),
        (["--repo", "pushed"], 2, "is not a Hub repo id of the form user/name"),
        (["--no-token"], 11, "No Hub token was found, and pushing to alice/pushed needs one with write access"),
    ],
)
def test_push_options_are_checked_before_any_request(hub, converted, args, code, message):
    repo = args[1] if args[0] == "--repo" else "alice/pushed"
    options = [] if args[0] in ("--repo", "--no-token") else args
    token = [] if args[0] == "--no-token" else ["--token", TOKEN]
    result = run("push", converted, repo, *options, *token)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert hub.requests == []  # not one request, so nothing was created


def test_check_push_options_for_convert(hub):
    from adapter_convert.errors import HubAuthError, UsageError
    from adapter_convert.hub import check_push_options

    check_push_options("alice/pushed", branch="release", create_pr=True, token=TOKEN)  # a pull request against a branch is fine
    with pytest.raises(UsageError, match="--create-pr would open another one"):
        check_push_options("alice/pushed", branch="refs/pr/2", create_pr=True, token=TOKEN)
    with pytest.raises(HubAuthError, match="No Hub token was found"):
        check_push_options("alice/pushed")
    assert hub.requests == []


def test_convert_push_with_contradicting_options_publishes_nothing(hub, on_hub, tmp_path):
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o",
                 "--push", "alice/pushed", "--branch", "refs/pr/1", "--create-pr", "--token", TOKEN)
    assert result.exit_code == 2, result.output
    assert "--create-pr would open another one" in result.output
    assert ("model", "alice/pushed") not in hub.repos
    assert not [request for request in hub.requests if request[0] in ("POST", "DELETE")]


def test_create_pr_against_a_branch(hub, converted):
    assert run("push", converted, "alice/pushed", "--branch", "release", "--token", TOKEN).exit_code == 0
    repo = hub.repos[("model", "alice/pushed")]
    main, release = repo.refs["main"], repo.refs["release"]
    (converted / "README.md").write_text((converted / "README.md").read_text() + "\nRelease notes.\n")
    result = run("push", converted, "alice/pushed", "--branch", "release", "--create-pr", "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pr_url"].endswith("/alice/pushed/discussions/1")
    [pr] = hub.pull_requests("alice/pushed")
    assert pr["changes"]["base"] == "refs/heads/release"
    assert repo.resolve("refs/pr/1").files["README.md"].endswith(b"Release notes.\n")
    assert repo.refs["main"] == main and repo.refs["release"] == release


@pytest.mark.parametrize("repo_exists", [True, False])
def test_create_pr_against_a_missing_branch_changes_nothing(hub, converted, repo_exists):
    if repo_exists:
        hub.create_repo("alice/pushed")
    refs = dict(hub.repos[("model", "alice/pushed")].refs) if repo_exists else None
    result = run("push", converted, "alice/pushed", "--branch", "release", "--create-pr", "--token", TOKEN)
    assert result.exit_code == 13, result.output
    assert "alice/pushed has no branch 'release'" in result.output and "Nothing was changed on the Hub" in result.output
    assert not [request for request in hub.requests if request[0] in ("POST", "DELETE")]
    if repo_exists:
        assert hub.repos[("model", "alice/pushed")].refs == refs and not hub.pull_requests("alice/pushed")
    else:
        assert ("model", "alice/pushed") not in hub.repos


def test_failed_push_to_a_new_repo_deletes_the_repo_it_created(hub, converted, waits):
    hub.fail("POST", "/commit/", "500", times=6)  # the first try and all 5 retries
    result = run("push", converted, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 15, result.output
    assert "The Hub answered HTTP 500 for the destination repo alice/pushed, after 5 retries." in result.output
    assert "Nothing was published: the repo alice/pushed that this run created was deleted again." in result.output
    assert "The Hub may be down: run the same command again later; it creates only what is missing" in result.output
    assert "cache" not in result.output  # the hint for a failed push is not about the download cache
    assert ("model", "alice/pushed") not in hub.repos
    assert len(seen(hub, "POST", "/commit/")) == 6 and seen(hub, "DELETE", "/api/repos/delete")


def test_failed_push_to_a_new_branch_deletes_the_branch_it_created(hub, converted, waits):
    hub.create_repo("alice/pushed")
    before = dict(hub.repos[("model", "alice/pushed")].refs)
    hub.fail("POST", "/commit/", "500", times=6)
    result = run("push", converted, "alice/pushed", "--branch", "feature", "--token", TOKEN)
    assert result.exit_code == 15, result.output
    assert "The branch 'feature' that this run created was deleted again; alice/pushed is unchanged." in result.output
    assert hub.repos[("model", "alice/pushed")].refs == before


def test_failed_create_pr_push_leaves_no_pull_request(hub, converted, waits):
    hub.create_repo("alice/pushed")
    before = dict(hub.repos[("model", "alice/pushed")].refs)
    hub.fail("POST", "/commit/", "500", times=6)
    result = run("push", converted, "alice/pushed", "--create-pr", "--token", TOKEN)
    assert result.exit_code == 15, result.output
    assert "No pull request was opened; alice/pushed is unchanged." in result.output
    assert hub.pull_requests("alice/pushed") == [] and hub.repos[("model", "alice/pushed")].refs == before
    assert not seen(hub, "POST", "/discussions")  # no pull request opened ahead of the commit


def test_read_only_token_creates_nothing(hub, converted):
    hub.tokens["tok-read"] = "alice"
    hub.read_only.add("tok-read")
    result = run("push", converted, "alice/pushed", "--token", "tok-read")
    assert result.exit_code == 11, result.output
    assert "is read-only" in result.output and "Nothing was changed on the Hub" in result.output
    assert ("model", "alice/pushed") not in hub.repos and seen(hub, "GET", "/api/whoami-v2")
    assert not [request for request in hub.requests if request[0] in ("POST", "DELETE")]


def test_token_that_may_not_write_to_an_existing_repo_creates_no_branch(hub, converted):
    hub.create_repo("bob/theirs")
    before = dict(hub.repos[("model", "bob/theirs")].refs)
    result = run("push", converted, "bob/theirs", "--branch", "mine", "--token", TOKEN)
    assert result.exit_code == 11, result.output
    assert "Nothing was changed on the Hub" in result.output
    assert hub.repos[("model", "bob/theirs")].refs == before
    assert not seen(hub, "POST", "/branch/")


@pytest.mark.parametrize("create_pr", [False, True])
def test_commit_stored_but_its_reply_lost_is_found_and_reported(hub, converted, waits, create_pr):
    hub.create_repo("alice/pushed")
    hub.fail("POST", "/commit/", "lose-reply", times=100)  # every commit lands, and its answer never arrives
    result = run("push", converted, "alice/pushed", *(["--create-pr"] if create_pr else []), "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    assert len(seen(hub, "POST", "/commit/")) == 1  # not sent again once it had landed
    repo = hub.repos[("model", "alice/pushed")]
    assert len(repo.commits) == 2  # the initial one and ours
    summary = json.loads(result.stdout)
    assert summary["changed"] and "reading the repo back showed that the commit landed" in result.output
    if create_pr:
        assert [pr["num"] for pr in hub.pull_requests("alice/pushed")] == [1]
        assert summary["pr_url"].endswith("/alice/pushed/discussions/1") and summary["commit"] == repo.refs["refs/pr/1"]
    else:
        assert summary["commit"] == repo.refs["main"] and set(ADAPTER_FILES_AND_CARD) <= set(repo.resolve("main").files)


ADAPTER_FILES_AND_CARD = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def test_commit_whose_landing_cannot_be_checked_is_not_undone(hub, converted, waits):
    hub.fail("POST", "/commit/", "lose-reply", times=1)
    hub.fail("GET", "/api/models/alice/pushed/revision/main", "500", times=6, skip=1)  # every read-back fails
    result = run("push", converted, "alice/pushed", "--token", TOKEN)
    assert result.exit_code == 15, result.output
    assert ("The commit was sent but its answer was lost, and the Hub could not be asked whether it landed, so the repo "
            "alice/pushed (created by this run) was left as it is: look at") in result.output
    assert set(ADAPTER_FILES_AND_CARD) <= set(pushed_files(hub))  # it had landed: deleting the repo would have lost it
    assert len(seen(hub, "POST", "/commit/")) == 1 and not seen(hub, "DELETE", "")


def test_create_pr_twice_with_the_same_files_reports_the_open_pull_request(hub, converted):
    hub.create_repo("alice/pushed")
    first = run("push", converted, "alice/pushed", "--create-pr", "--token", TOKEN, "--json")
    assert first.exit_code == 0, first.output
    second = run("push", converted, "alice/pushed", "--create-pr", "--token", TOKEN, "--json")
    assert second.exit_code == 0, second.output
    assert [pr["num"] for pr in hub.pull_requests("alice/pushed")] == [1]
    result = json.loads(second.stdout)
    assert result["pr_url"] == json.loads(first.stdout)["pr_url"] and result["existing_pr"] and not result["changed"]
    assert "No new pull request: the open pull request" in second.output
    hub.pull_requests("alice/pushed")[0]["status"] = "closed"  # a closed one is not reused
    third = run("push", converted, "alice/pushed", "--create-pr", "--token", TOKEN, "--json")
    assert json.loads(third.stdout)["pr_url"].endswith("/discussions/2")
    (converted / "README.md").write_text((converted / "README.md").read_text() + "\nChanged.\n")  # other files: a new one
    fourth = run("push", converted, "alice/pushed", "--create-pr", "--token", TOKEN, "--json")
    assert json.loads(fourth.stdout)["pr_url"].endswith("/discussions/3")


def test_push_to_a_new_branch_of_identical_content_creates_only_the_branch(hub, converted):
    assert run("push", converted, "alice/pushed", "--token", TOKEN).exit_code == 0
    repo = hub.repos[("model", "alice/pushed")]
    commits = len(repo.commits)
    result = run("push", converted, "alice/pushed", "--branch", "feature", "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    assert repo.refs["feature"] == repo.refs["main"] and len(repo.commits) == commits
    summary = json.loads(result.stdout)
    assert summary["changed"] and summary["created"] == ["branch 'feature'"] and summary["commit"] == repo.refs["main"]
    assert f"Created branch 'feature' at commit {repo.refs['main']}, which already holds these files; no commit was made." in result.output


def test_push_into_an_open_pull_request(hub, converted):
    hub.create_repo("alice/pushed")
    assert run("push", converted, "alice/pushed", "--create-pr", "--token", TOKEN).exit_code == 0
    (converted / "README.md").write_text((converted / "README.md").read_text() + "\nFixed.\n")
    result = run("push", converted, "alice/pushed", "--branch", "refs/pr/1", "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert "to pull request" in result.output and "/alice/pushed/discussions/1" in result.output
    assert pushed_files(hub, ref="refs/pr/1")["README.md"].endswith(b"Fixed.\n")
    assert len(hub.pull_requests("alice/pushed")) == 1


def test_adapter_repo_without_weights_is_a_missing_file(hub, on_hub, tmp_path):
    repo = hub.repos[("model", "alice/ner-lora")]
    repo.add_commit("main", {k: v for k, v in repo.resolve("main").files.items() if k != "adapter_model.safetensors"}, "drop weights")
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "o")
    assert result.exit_code == 14, result.output
    assert (f"The adapter alice/ner-lora@main (commit {repo.refs['main']}) has adapter_config.json but no "
            "adapter_model.safetensors on the Hub") in result.output
    assert constants.HF_HUB_CACHE not in result.output.replace("\n", "")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("failure", ["500", "401"])
def test_cached_snapshot_used_when_the_hub_fails_is_announced(hub, on_hub, tmp_path, waits, failure):
    first = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    cached = head_sha(hub, "alice/ner-lora")
    if failure == "500":
        hub.fail("GET", "/api/models/alice/ner-lora/revision/", "500", times=6)
    else:
        hub.repos[("model", "alice/ner-lora")].private = True  # no token: the Hub answers 401
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    why = "the Hub answered HTTP 500" if failure == "500" else "the Hub refused access (HTTP 401"
    assert f"Warning: {why}" in result.stderr
    assert f"for the adapter alice/ner-lora@main, so the cached snapshot of commit {cached} is used" in result.stderr


def test_inspect_from_the_hub_lists_downloads_and_reads_only_byte_ranges(hub, on_hub):
    result = run("inspect", "alice/ner-lora", "--target", "alice/student", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["compatibility"]["verdict"] == "compatible" and report["recommended"]["align"] == "none"
    assert f"alice/ner-lora@{head_sha(hub, 'alice/ner-lora')}" in report["recommended"]["command"]
    downloads = {(f["repo"], f["file"]) for f in report["costs"]["downloads"]["files"]}
    assert {("alice/ner-lora", "adapter_config.json"), ("alice/ner-lora", "adapter_model.safetensors"),
            ("alice/student", "config.json"), ("alice/teacher", "config.json")} <= downloads
    assert not [f for f in downloads if f[1] == "model.safetensors"]  # a direct mapping needs no base weights
    assert report["costs"]["downloads"]["bytes"] == sum(f["bytes"] for f in report["costs"]["downloads"]["files"]) > 0
    size = len(hub.repos[("model", "alice/student")].commits[head_sha(hub, "alice/student")].files["model.safetensors"])
    assert all(n < size for path, n in hub.served if path == "model.safetensors")  # the probe read ranges only


@pytest.mark.parametrize("front_matter, carried", [("license: mit\n", "mit"), ("license: [unclosed\n", None), ("tags: [a]\n", None)])
def test_the_source_adapters_license_is_carried_never_invented(tiny_pair, tmp_path, front_matter, carried):
    (tiny_pair / "adapter" / "README.md").write_text(f"---\n{front_matter}---\n# my adapter\n")
    out = tmp_path / "out"
    result = run("convert", tiny_pair / "adapter", "--target", tiny_pair / "student", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source_adapter"]["license"] == carried
    card = ModelCard.load(out / "README.md")
    assert card.data.license == carried
    assert ("carried from the source adapter's card" in card.text) == (carried is not None)


def bytes_served_twice(hub) -> list[tuple[str, str]]:
    """(repo, file) pairs of which some byte was sent more than once in this run (overlapping ranges)."""
    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for repo, path, start, end in hub.ranges:
        spans.setdefault((repo, path), []).append((start, end))
    twice = []
    for key, ranges in spans.items():
        ranges.sort()
        if any(later_start < earlier_end for (_, earlier_end), (later_start, _) in zip(ranges, ranges[1:])):
            twice.append(key)
    return twice


def test_a_direct_hub_conversion_fetches_each_file_and_embedding_byte_once(hub, on_hub, tmp_path):
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert bytes_served_twice(hub) == []
    fetched = [(repo, path) for repo, path, _, _ in hub.ranges if path != "model.safetensors"]
    assert sorted(fetched) == sorted(set(fetched)) and {("alice/teacher", "config.json"), ("alice/student", "config.json")} <= set(fetched)
    probe = [(repo, end - start) for repo, path, start, end in hub.ranges if path == "model.safetensors"]
    assert {repo for repo, _ in probe} == {"alice/teacher", "alice/student"}  # byte ranges of both, never the files
    # each base's branch resolved to a commit once (sources.read_base); the probe reads at that commit and
    # resolves no branch itself (huggingface_hub's file system looks the pinned commit up once, for its listing)
    for repo in ("alice/teacher", "alice/student"):
        lookups = [p.rsplit("/", 1)[1] for m, p in hub.requests if m == "GET" and p.startswith(f"/api/models/{repo}/revision/")]
        assert lookups.count("main") == 1 and all(len(r) == 40 for r in lookups if r != "main"), hub.requests
        assert len(lookups) <= 2, lookups


def test_an_aligned_hub_conversion_fetches_configs_tokenizers_and_weights_once(hub, unrelated_on_hub, tmp_path):
    """Each base is resolved for its config and tokenizer, probed (embedding rows), then its weights
    downloaded for alignment: every file body once; the probe's ranges never twice."""
    result = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "out", "--distill-steps", "2",
                 "--calibration-tokens", "128")
    assert result.exit_code == 0, result.output
    size = lambda repo, path: len(hub.repos[("model", repo)].resolve("main").files[path])  # noqa: E731
    whole = [(repo, path) for repo, path, start, end in hub.ranges if (start, end) == (0, size(repo, path))]
    assert sorted(whole) == sorted(set(whole)), whole  # no file downloaded twice
    for repo in ("alice/teacher", "alice/student"):
        assert {(repo, "config.json"), (repo, "tokenizer.json"), (repo, "model.safetensors")} <= set(whole)
    # the probe's byte ranges (read before the plan knew it would align): none read twice
    hub.ranges = [r for r in hub.ranges if (r[2], r[3]) != (0, size(r[0], r[1]))]
    assert hub.ranges and bytes_served_twice(hub) == []
