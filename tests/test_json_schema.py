"""The --json fields docs/ci.md promises a pipeline (schema 1) are in the output, every one: read
from the doc itself, so the list and the code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from adapter_convert.summary import SCHEMA_VERSION
from helpers import cli_json as run

DOC = (Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text()
PATH = re.compile(r"`([a-z_]+(?:\.[a-z_]+)*)`")


def documented(block: str) -> list[str]:
    section = DOC.split(f"<!-- schema:{block} -->")[1].split(f"<!-- /schema:{block} -->")[0]
    return PATH.findall(section)


def missing_paths(data: dict, paths: list[str]) -> list[str]:
    """The documented paths ``data`` lacks; a path under a null value is present (documented as nullable)."""
    missing = []
    for path in paths:
        node = data
        for part in path.split("."):
            if node is None:
                break
            if not isinstance(node, dict) or part not in node:
                missing.append(path)
                break
            node = node[part]
    return missing


def test_the_documented_lists_are_read():
    assert len(documented("convert")) > 30 and "fidelity" in documented("convert") and "push.changed" in documented("convert")
    assert "recommended.command" in documented("inspect")


def test_convert_and_inspect_json_hold_every_documented_field(hub, on_hub, tmp_path):
    adapter, student = on_hub / "adapter", on_hub / "student"
    dry = run("convert", adapter, "--target", student, "--out", tmp_path / "dry", "--dry-run", "--json")
    done = run("convert", "alice/ner-lora", "--target", "alice/student", "--out", tmp_path / "out", "--json",
               "--push", "alice/converted", "--token", "tok-alice")
    inspected = run("inspect", adapter, "--target", student, "--json")
    for data in (dry, done):
        assert data["schema_version"] == SCHEMA_VERSION == 1
        assert missing_paths(data, documented("convert")) == []
    assert dry["output"] is None and dry["measurements"] == [] and dry["fidelity"] is None and dry["push"] is None
    assert done["push"]["changed"] is True and done["output"]["tensors"] > 0
    assert inspected["schema_version"] == 1 and missing_paths(inspected, documented("inspect")) == []
    # a path the doc would promise and the output lacks is caught
    assert missing_paths(done, ["output.no_such_field"]) == ["output.no_such_field"]
