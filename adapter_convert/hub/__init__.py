"""Every Hugging Face Hub call adapter-convert makes: pull with ``snapshot_download``, push with
``create_commit``. Each Hub failure becomes one typed error with a next step. One module a job:
``pull`` (downloads, listings), ``ranges`` (byte ranges of a safetensors file), ``push`` (publishing), ``errors`` (the Hub's failures
as typed errors), ``retry`` (retries and their count), ``references`` (repo ids, and the files each
kind of repo holds).

Downloads go through the Hub cache (``HF_HOME``), so a second run is served from disk, and
``HF_HUB_OFFLINE=1`` works for anything already cached. Tokens come from ``--token``, else
``HF_TOKEN``, else a cached ``hf auth login``; they are passed to the client and never printed.

Retries. Every request is retried on 408/429/5xx answers and dropped connections, 5 times with
huggingface_hub's back-off (1, 2, 4, 8, 8 s): the client's own ``http_backoff`` for the revision
lookup, the client itself for HEAD, listing and the resumable file GETs, and a loop here around
what the client does not retry (a file GET answered 5xx, a HEAD that drops, the API calls of a
push). A commit is never re-sent blindly: after a failed commit the branch (or the open pull
requests) is read back, and a commit with our files that landed is reported as the result.

Warnings (a cached snapshot used because the Hub failed or refused) go to the
``adapter_convert.hub`` logger, which prints them to stderr.
"""

from .errors import hub_error
from .pull import download, repo_file_sizes
from .push import TOOL_MARKER, PushResult, check_push_options, publishable_files, push_folder
from .references import (ADAPTER_CARD_FILES, ADAPTER_FILES, ADAPTER_WEIGHT_FILES, CONFIG_FILES, INDEX_FILE, PICKLE_ADAPTER_FILES,
                         PUBLISHED_FILES, TOKENIZER_FILES, WEIGHT_FILES, HubReference, parse_hub_reference)

__all__ = ["ADAPTER_CARD_FILES", "ADAPTER_FILES", "ADAPTER_WEIGHT_FILES", "CONFIG_FILES", "INDEX_FILE", "PICKLE_ADAPTER_FILES", "PUBLISHED_FILES",
           "TOKENIZER_FILES", "TOOL_MARKER", "WEIGHT_FILES", "HubReference", "PushResult", "check_push_options", "download", "hub_error",
           "parse_hub_reference", "publishable_files", "push_folder", "repo_file_sizes"]
