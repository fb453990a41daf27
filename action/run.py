"""The action's convert step (action.yml): INPUT_* variables -> one ``adapter-convert convert --json``
run -> the step's outputs (``$GITHUB_OUTPUT``) and the JSON summary file. Standard library only,
so it runs with whatever Python the job has.

Exits with adapter-convert's own exit code, so a job can tell a fidelity gate (20) from a Hub
failure (10-15) or bad input. The token travels as ``HF_TOKEN`` in the environment: it is never
on the command line this prints, in the outputs or in the summary.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path


def flag(name: str) -> bool:
    value = os.environ.get(f"INPUT_{name}", "").strip().lower()
    if value not in ("", "true", "false"):
        sys.exit(f"Error: input {name.lower().replace('_', '-')} is {value!r}; give 'true' or 'false'.")
    return value == "true"


def text(name: str) -> str:
    return os.environ.get(f"INPUT_{name}", "").strip()


def command() -> list[str]:
    """The convert command the inputs ask for (no token: that goes through the environment)."""
    for required in ("ADAPTER", "TARGET"):
        if not text(required):
            sys.exit(f"Error: input {required.lower()} is required.")
    args = ["convert", text("ADAPTER"), "--target", text("TARGET"), "--out", text("OUT") or "adapter-convert-output", "--json"]
    options = {"--source-base": "SOURCE_BASE", "--align": "ALIGN", "--layer-map": "LAYER_MAP",
               "--calibration-data": "CALIBRATION_DATA", "--min-fidelity": "MIN_FIDELITY"}
    args += [word for option, name in options.items() if text(name) for word in (option, text(name))]
    if text("OUTPUT_REPO"):
        args += ["--push", text("OUTPUT_REPO")]
        args += ["--branch", text("BRANCH")] if text("BRANCH") else []
        args += ["--commit-message", text("COMMIT_MESSAGE")] if text("COMMIT_MESSAGE") else []
        args += ["--create-pr"] if flag("CREATE_PR") else []
        args += ["--private"] if flag("PRIVATE") else []
    return args + shlex.split(text("EXTRA_ARGS"))


def outputs(summary: dict | None, summary_file: Path, code: int) -> dict[str, str]:
    """The step's outputs from the summary (all present; empty where the run did not get that far)."""
    summary = summary or {}
    push, fidelity = summary.get("push") or {}, summary.get("fidelity") or {}
    return {
        "changed": "true" if push.get("changed") else "false",
        "commit-url": push.get("commit_url") or "",
        "pr-url": push.get("pr_url") or "",
        "method": summary.get("method") or "",
        "fidelity": "" if fidelity.get("value") is None else str(fidelity["value"]),
        "fidelity-metric": fidelity.get("name") or "",
        "summary-file": str(summary_file) if summary else "",
        "exit-code": str(code),
    }


def main() -> int:
    args = command()
    env = dict(os.environ)
    if not env.get("HF_TOKEN"):  # an empty token input: the tool's own lookup (a cached login), not an empty token
        env.pop("HF_TOKEN", None)
    print("adapter-convert " + shlex.join(args), flush=True)
    run = subprocess.run([sys.executable, "-m", "adapter_convert", *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        summary = json.loads(run.stdout) if run.stdout.strip() else None
    except json.JSONDecodeError:
        summary = None
        sys.stderr.write(run.stdout)
    summary_file = Path(text("SUMMARY_FILE") or "adapter-convert-summary.json")
    if summary is not None:
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    values = outputs(summary, summary_file, run.returncode)
    output_file = os.environ.get("GITHUB_OUTPUT")
    if output_file:
        with open(output_file, "a", encoding="utf-8") as handle:
            handle.writelines(f"{key}={value}\n" for key, value in values.items())
    for key, value in values.items():
        print(f"{key}: {value}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
