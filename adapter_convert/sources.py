"""Resolve what the user named (a local folder; Hub ids come later) to a local folder and config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from .architectures import get_architecture
from .errors import BadAdapterError, SourceNotFoundError


@dataclass(frozen=True)
class ResolvedSource:
    reference: str  # what the user typed
    path: Path  # local folder holding the files
    revision: str | None = None  # commit sha, when it came from the Hub


def resolve(reference: str, *, what: str) -> ResolvedSource:
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise SourceNotFoundError(
            f"The {what} {reference!r} is not a folder on this machine.",
            "Give the path of a local folder (Hub ids are not supported in this version).",
        )
    return ResolvedSource(reference=reference, path=path.resolve())


def read_model_config(source: ResolvedSource, *, what: str) -> PretrainedConfig:
    """The model's transformers config; the model_type must be one adapter-convert knows."""
    path = source.path / "config.json"
    if not path.is_file():
        raise SourceNotFoundError(f"The {what} {source.reference!r} has no config.json.", "Point it at a transformers model folder.")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise BadAdapterError(f"{str(path)!r} is not valid JSON ({err}).", "Re-save the model's config.") from None
    get_architecture(str(model_type))  # unknown model types fail here, naming the supported ones
    return AutoConfig.from_pretrained(source.path)
