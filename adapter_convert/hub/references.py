"""What the Hub side names: a ``user/name@revision`` reference, and the files each kind of repo
contributes to a conversion (download patterns) or to a publication."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..adapter_io import CONFIG_NAME, PICKLE_WEIGHTS_NAME, WEIGHTS_NAME

ADAPTER_FILES = [CONFIG_NAME, WEIGHTS_NAME]
PICKLE_ADAPTER_FILES = [PICKLE_WEIGHTS_NAME]
ADAPTER_CARD_FILES = ["README.md"]  # the source adapter's card, for its license (optional)
CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "*.model"]
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json"]
INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint's tensor -> shard map
ADAPTER_WEIGHT_FILES = (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME)  # an adapter needs one of these
PUBLISHED_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")  # all that `push` uploads

_HUB_REFERENCE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[^@\s]+))?$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_PR_REF = re.compile(r"^refs/pr/(?P<num>[1-9][0-9]*)$")
_BAD_BRANCH = re.compile(r"[\s~^:?*\[\\]|\.\.|@\{|//|^[-/.]|[/.]$|\.lock$")  # git's ref-name rules, roughly


@dataclass(frozen=True)
class HubReference:
    repo_id: str
    revision: str | None  # as asked for: a branch, tag or commit sha; None for main


def parse_hub_reference(reference: str) -> HubReference | None:
    """``user/repo`` or ``user/repo@revision``; None for anything that cannot be a Hub id."""
    match = _HUB_REFERENCE.match(reference)
    if match is None or reference.startswith((".", "/", "~")):
        return None
    return HubReference(match["repo"], match["revision"])
