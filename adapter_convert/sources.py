"""Resolve what the user named, a local folder or a Hub id (``user/repo@revision``), to a local
folder holding just the files a step needs, and read each base model once into a ``Base``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from .adapter_io import CONFIG_NAME, AdapterCheckpoint, read_adapter
from .architectures import Architecture, Dims, check_known_model_type, get_architecture
from .calibration import load_texts
from .errors import AdapterConvertError, BadModelConfigError, HubFileMissingError, SourceNotFoundError
from .hub import (ADAPTER_CARD_FILES, ADAPTER_FILES, CONFIG_FILES, INDEX_FILE, PICKLE_ADAPTER_FILES, TOKENIZER_FILES, WEIGHT_FILES,
                  download, parse_hub_reference)

# what planning reads of a base: its config, its tokenizer (the compatibility probe's vocabulary) and
# its shard index (where the probe finds the embedding rows); never the weights
BASE_FILES = CONFIG_FILES + TOKENIZER_FILES + [INDEX_FILE]


@dataclass(frozen=True)
class ResolvedSource:
    reference: str  # what the user typed
    path: Path  # local folder holding the files
    repo_id: str | None = None  # set when it came from the Hub
    revision: str | None = None  # the commit sha it resolved to, when it came from the Hub

    @property
    def id(self) -> str:
        """The Hub repo id, or the local path as typed."""
        return self.repo_id or self.reference

    @property
    def pinned(self) -> str:
        """A reference that names exactly this content again."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else self.reference


def resolve(reference: str, *, what: str, patterns: list[str], required: str, token: str | None = None) -> ResolvedSource:
    """A local folder as it is, or a Hub repo downloaded (only ``patterns``) through the cache."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return ResolvedSource(reference=reference, path=path.resolve())
    hub_ref = parse_hub_reference(reference)
    if hub_ref is None:
        raise SourceNotFoundError(
            f"The {what} {reference!r} is neither a folder on this machine nor a Hub repo id.",
            "Give a local folder, or a Hub id such as user/name or user/name@revision.",
        )
    folder = download(hub_ref, what=what, patterns=patterns, token=token)
    at = f"{hub_ref.repo_id}@{hub_ref.revision or 'main'}" + ("" if hub_ref.revision == folder.name else f" (commit {folder.name})")
    if not (folder / required).is_file():
        raise HubFileMissingError(
            f"The {what} {at} has no {required} on the Hub.",
            "Check that the repo id names the right repo (an adapter repo for ADAPTER, a model repo for the bases).",
        )
    from .hub import ADAPTER_WEIGHT_FILES

    weights = [p for p in patterns if p in ADAPTER_WEIGHT_FILES]  # an adapter's weights: one of them must be there
    if weights and not any((folder / name).is_file() for name in weights):
        raise HubFileMissingError(
            f"The {what} {at} has {required} but no {' or '.join(weights)} on the Hub: its weights are missing.",
            "Check the repo id and revision (the weights may be on another branch), or upload the adapter's weights.",
        )
    return ResolvedSource(reference=reference, path=folder, repo_id=hub_ref.repo_id, revision=folder.name)


def read_adapter_source(reference: str, *, allow_pickle: bool = False, token: str | None = None) -> tuple[ResolvedSource, AdapterCheckpoint]:
    """The adapter resolved (its config, weights and card; a pickle only when allowed) and read once."""
    patterns = ADAPTER_FILES + ADAPTER_CARD_FILES + (PICKLE_ADAPTER_FILES if allow_pickle else [])
    source = resolve(reference, what="adapter", patterns=patterns, required=CONFIG_NAME, token=token)
    return source, read_adapter(source.path, allow_pickle=allow_pickle)


@dataclass(frozen=True)
class Base:
    """A base model, read once per run: where its files are (pinned to a commit when from the Hub),
    its transformers config, and the architecture and sizes derived from that config. Every later
    stage takes this value; none resolves or reads the config again."""

    source: ResolvedSource
    config: PretrainedConfig
    arch: Architecture
    dims: Dims
    what: str  # how messages name it: "source base", "target base"
    named: str = ""  # how the user named it, when messages about finding it should say so

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def revision(self) -> str | None:
        return self.source.revision

    @property
    def pinned(self) -> str:
        return self.source.pinned

    @property
    def path(self) -> Path:
        return self.source.path


def read_base(reference: str, *, what: str, named: str = "", token: str | None = None) -> Base:
    """The base's config, tokenizer and shard index (no weights), its config read and checked: a
    model_type adapter-convert knows, and sizes it can build from. ``named``: how the user named
    it, for messages about finding it ("(the adapter's base_model_name_or_path)")."""
    source = resolve(reference, what=f"{what} {named}".strip(), patterns=BASE_FILES, required="config.json", token=token)
    path = source.path / "config.json"
    if not path.is_file():
        raise SourceNotFoundError(f"The {what} {source.reference!r} has no config.json.", "Point it at a transformers model folder.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadModelConfigError(f"The {what}'s {str(path)!r} is not valid JSON ({err}).", "Re-save the model's config.") from None
    if not isinstance(raw, dict):
        raise BadModelConfigError(
            f"The {what}'s {str(path)!r} holds a JSON {type(raw).__name__}, not an object of settings.", "Re-save the model's config."
        )
    try:
        model_type = check_known_model_type(raw.get("model_type"))  # unknown types fail here, before transformers reads it
        config = AutoConfig.from_pretrained(source.path)
        arch = get_architecture(model_type, config)  # derived from this config's structure; refusals name the blocking module
        dims = arch.dims(config)  # sizes checked before anything is built from them
    except BadModelConfigError as err:
        raise BadModelConfigError(f"The {what} ({str(path)!r}): {err.problem}", err.fix) from None
    except AdapterConvertError:
        raise
    except Exception as err:  # transformers' own checks of the values raise many types (strict dataclass validation too)
        raise BadModelConfigError(
            f"transformers cannot read the {what}'s {str(path)!r}: {type(err).__name__}: {err}", "Fix the model's config.json."
        ) from None
    return Base(source, config, arch, dims, what, named)


def with_weights(base: Base, *, token: str | None = None) -> Base:
    """The same base (the same commit) with its weights fetched too: alignment runs the models."""
    source = resolve(base.pinned, what=f"{base.what} {base.named}".strip(), patterns=BASE_FILES + WEIGHT_FILES, required="config.json", token=token)
    return dataclasses.replace(base, source=source)


CALIBRATION_SUFFIXES = (".txt", ".jsonl", ".conll", ".conllu")


@dataclass(frozen=True)
class CalibrationSource:
    reference: str  # as the user gave it
    file: Path
    revision: str | None = None  # the dataset's commit sha, when it came from the Hub
    sha256: str = ""  # of the local file's bytes: what pins a local file
    texts: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # what it holds, read once (calibration.load_texts)

    @property
    def pinned(self) -> str:
        """How summaries and cards name it: a Hub dataset at its commit; a local file by its name
        and the start of its sha256, never its path (a published card must not show the machine's folders)."""
        if self.revision:
            return f"{self.reference.split('@')[0]}@{self.revision}"
        return f"{self.file.name} (sha256 {self.sha256[:12]})" if self.sha256 else self.file.name

    @property
    def argument(self) -> str:
        """What a reproduce command passes: the pinned dataset, or the local path as typed when it is
        relative (an absolute one is cut to the file's name: run the command beside the file)."""
        if self.revision:
            return self.pinned
        return self.reference if not Path(self.reference).expanduser().is_absolute() else self.file.name

    @property
    def hub_dataset(self) -> str | None:
        """The Hub dataset repo id it came from; None for a local file."""
        return self.reference.split("@")[0] if self.revision else None


def read_calibration_data(reference: str, *, token: str | None = None) -> CalibrationSource:
    """A local text file, or a Hub dataset repo holding one (the first .txt/.jsonl/.conll/.conllu
    file), and its texts: a bad file fails here, before any base weights are downloaded."""
    reference = str(reference)
    path = Path(reference).expanduser()
    if path.is_file():
        return CalibrationSource(reference, path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), texts=tuple(load_texts(path)))
    hub_ref = parse_hub_reference(reference)
    if hub_ref is None:
        raise SourceNotFoundError(
            f"Calibration data {reference!r} is neither a file on this machine nor a Hub dataset id.",
            "Give a .txt, .jsonl, .conll or .conllu file, or a dataset id such as user/name.",
        )
    folder = download(hub_ref, what="calibration dataset", patterns=[f"*{s}" for s in CALIBRATION_SUFFIXES], token=token, repo_type="dataset")
    files = sorted(p for p in folder.rglob("*") if p.suffix in CALIBRATION_SUFFIXES)
    if not files:
        raise HubFileMissingError(
            f"The dataset {hub_ref.repo_id}@{folder.name} has no .txt, .jsonl, .conll or .conllu file.",
            "Point --calibration-data at a dataset with plain-text files, or at a local file.",
        )
    return CalibrationSource(reference, files[0], revision=folder.name, texts=tuple(load_texts(files[0])))
