"""The composite GitHub Action (action.yml), run without GitHub: its steps' commands with the
environment the runner would give them (inputs as INPUT_* variables through each step's env,
GITHUB_OUTPUT, the action's path), against the local Hub server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
TOKEN = "tok-alice"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def evaluate(value: str, context: dict[str, str]) -> str:
    """``${{ name }}`` expressions replaced; an expression the test does not know fails the test,
    so the action cannot grow a construct this harness silently skips."""
    def lookup(match: re.Match) -> str:
        assert match.group(1) in context, f"action.yml uses ${{{{ {match.group(1)} }}}}, unknown to this harness"
        return context[match.group(1)]

    return EXPRESSION.sub(lookup, str(value))


def condition(expression: str, context: dict[str, str]) -> bool:
    """The ``if:`` forms action.yml uses: ``inputs.x == 'value'``."""
    name, value = re.fullmatch(r"(\S+) == '([^']*)'", expression.strip()).groups()
    return context[name] == value


def run_action(inputs: dict[str, str], workdir: Path) -> tuple[dict[str, str], str]:
    """Run the action's steps as a runner would; the action's outputs and everything the steps printed."""
    unknown = set(inputs) - set(ACTION["inputs"])
    assert not unknown, unknown
    given = {name: spec.get("default", "") for name, spec in ACTION["inputs"].items()} | inputs
    missing = [name for name, spec in ACTION["inputs"].items() if spec.get("required") and not given[name]]
    assert not missing, missing
    context = {f"inputs.{name}": str(value) for name, value in given.items()} | {"github.action_path": str(ROOT)}
    log = []
    for step in ACTION["runs"]["steps"]:
        if "if" in step and not condition(step["if"], context):
            continue
        output_file = workdir / f"output-{step['id']}"
        output_file.write_text("")
        env = {key: value for key, value in os.environ.items() if not key.startswith("INPUT_") and key != "HF_TOKEN"}
        env |= {key: evaluate(value, context) for key, value in step.get("env", {}).items()}
        env |= {"GITHUB_OUTPUT": str(output_file), "GITHUB_ACTION_PATH": str(ROOT)}
        assert step["shell"] == "bash"
        done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        log.append(done.stdout + done.stderr)
        context |= {f"steps.{step['id']}.outputs.{key}": value
                    for key, _, value in (line.partition("=") for line in output_file.read_text().splitlines())}
        if done.returncode != 0:
            context |= {f"steps.{step['id']}.outputs.exit-code": str(done.returncode)} if step["id"] != "convert" else {}
            break
    outputs = {name: evaluate(spec["value"], {k: "" for k in EXPRESSION.findall(spec["value"])} | context)
               for name, spec in ACTION["outputs"].items()}
    return outputs, "\n".join(log)


def inputs_for(**more: str) -> dict[str, str]:
    return {"adapter": "alice/ner-lora", "target": "alice/student", "output-repo": "alice/ner-lora-student", "token": TOKEN,
            "extra-args": "--distill-steps 5 --calibration-tokens 256", "install": "false", "python": sys.executable} | more


def no_token_anywhere(log: str, *folders: Path) -> None:
    assert TOKEN not in log
    for folder in folders:
        for path in folder.rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_the_action_publishes_measures_and_gates(hub, unrelated_on_hub, tmp_path):
    repo = ("model", "alice/ner-lora-student")
    first, log = run_action(inputs_for(), tmp_path)
    logs = [log]
    assert first["exit-code"] == "0", log
    assert first["changed"] == "true" and first["commit-url"].endswith(hub.repos[repo].refs["main"]) and first["pr-url"] == ""
    assert first["method"] == "lstsq alignment + distillation"
    fidelity = float(first["fidelity"])
    assert 0 < fidelity < 1 and first["fidelity-metric"] == "predicted-label agreement"  # 5 steps leave room for a gate above it
    summary = json.loads((tmp_path / first["summary-file"]).read_text())
    assert summary["schema_version"] == 1 and summary["fidelity"]["value"] == fidelity
    pushed = hub.repos[repo].resolve("main").files
    assert set(pushed) >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}

    # the pushed card carries the measured fidelity as model-index, parsed by huggingface_hub itself
    card = ModelCard(pushed["README.md"].decode())
    model_name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert model_name == "ner-lora on student" and card.data.license is None
    assert [(r.metric_type, r.metric_value) for r in results] == [("agreement_with_source_adapter", fidelity)]
    assert results[0].source_name.startswith("adapter-convert ") and results[0].task_type == "token-classification"
    assert card.data.base_model == "alice/student" and card.data.base_model_relation == "adapter"

    # side by side (each run is mostly its imports): the same inputs again, and a minimum above what was measured
    commits = len(hub.repos[repo].commits)
    gate = {"min-fidelity": str(min(1.0, fidelity + 0.01)), "output-repo": "alice/gated"}
    (tmp_path / "again").mkdir(), (tmp_path / "gated").mkdir()
    with ThreadPoolExecutor(2) as pool:
        runs = pool.map(lambda args: run_action(*args), [(inputs_for(), tmp_path / "again"), (inputs_for(**gate), tmp_path / "gated")])
        (again, again_log), (gated, log) = runs
    logs.append(again_log)

    # nothing changed: no commit
    assert again["exit-code"] == "0", again_log
    assert again["changed"] == "false" and len(hub.repos[repo].commits) == commits
    assert again["fidelity"] == first["fidelity"]

    # the step fails with exit 20, and nothing is pushed
    assert gated["exit-code"] == "20", log
    assert "below --min-fidelity" in log and "nothing was pushed" in log
    assert gated["changed"] == "false" and gated["commit-url"] == "" and gated["fidelity"] == first["fidelity"]
    assert ("model", "alice/gated") not in hub.repos
    no_token_anywhere("\n".join(logs + [log]), tmp_path)
    assert all(TOKEN.encode() not in content for content in pushed.values())


def test_the_action_refuses_a_gate_on_a_copy_before_any_work(hub, on_hub, tmp_path):
    """A student cut from its teacher (conftest's on_hub): auto copies, which measures nothing to gate on."""
    outputs, log = run_action(inputs_for(**{"min-fidelity": "0.5", "extra-args": ""}), tmp_path)
    assert outputs["exit-code"] == "20", log
    assert "measures none" in log and "--align distill" in log
    assert ("model", "alice/ner-lora-student") not in hub.repos and not (tmp_path / "adapter-convert-output").exists()
    no_token_anywhere(log, tmp_path)


def test_the_install_step_pins_cpu_torch_then_installs_the_actions_checkout(tmp_path):
    """The install step's commands, with a stand-in python that records what pip was asked."""
    recorder = tmp_path / "python"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    recorder.chmod(0o755)
    run_action({"adapter": "a/b", "target": "c/d", "python": str(recorder), "token": TOKEN}, tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].endswith("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert calls[1].endswith(f"install --disable-pip-version-check {ROOT}") and calls[2] == "-m adapter_convert version"
    (tmp_path / "calls").unlink()
    run_action({"adapter": "a/b", "target": "c/d", "python": str(recorder), "version": "0.1.0", "torch-version": ""}, tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not any("torch" in call for call in calls) and calls[0].endswith("adapter-convert==0.1.0")


def test_inputs_reach_the_scripts_only_through_the_environment():
    """No ${{ ... }} inside a run: script, so an input holding shell code cannot run; every input is passed on."""
    steps = ACTION["runs"]["steps"]
    assert all("${{" not in step["run"] for step in steps)
    passed = {name for step in steps for value in step.get("env", {}).values() for name in re.findall(r"inputs\.([\w-]+)", value)}
    assert passed | {"install"} == set(ACTION["inputs"])


def test_the_example_workflow_uses_the_action_with_its_inputs():
    workflow = yaml.safe_load((ROOT / "examples" / "publish-adapter.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    action = next(step for step in steps if step.get("uses", "").endswith("/adapter-convert@v1"))
    assert set(action["with"]) <= set(ACTION["inputs"]) and {"adapter", "target", "output-repo", "token"} <= set(action["with"])
    assert action["with"]["token"] == "${{ secrets.HF_TOKEN }}"
    used = set(re.findall(r"steps\.convert\.outputs\.([\w-]+)", (ROOT / "examples" / "publish-adapter.yml").read_text()))
    assert used and used <= set(ACTION["outputs"])


def test_the_workflow_snippets_in_the_docs_parse():
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "ci.md").read_text(), re.S)
    assert blocks
    steps = [step for block in blocks for step in yaml.safe_load(block)]
    action = next(step for step in steps if step.get("uses", "").endswith("/adapter-convert@v1"))
    assert set(action["with"]) <= set(ACTION["inputs"])
