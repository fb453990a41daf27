"""Every Hugging Face Hub call adapter-convert makes: pull with ``snapshot_download``, push with
``create_repo`` and ``upload_folder``. Each Hub failure becomes one typed error with a next step.

Downloads go through the Hub cache (``HF_HOME``), so a second run is served from disk, and
``HF_HUB_OFFLINE=1`` works for anything already cached. Tokens come from ``--token``, else
``HF_TOKEN``, else a cached ``hf auth login``; they are passed to the client and never printed.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import (
    HubAuthError,
    HubError,
    HubFileMissingError,
    HubGatedError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnreachableError,
)

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
PICKLE_ADAPTER_FILES = ["adapter_model.bin"]
CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "*.model"]
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json"]

_HUB_REFERENCE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[^@\s]+))?$")


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


class _RetryCounter(logging.Handler):
    """Counts the retries huggingface_hub logs (and keeps its per-retry warnings off the terminal)."""

    MARKERS = ("Retrying in", "Trying to resume download", "Rate limited")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if any(marker in record.getMessage() for marker in self.MARKERS):
            self.retries += 1


@contextlib.contextmanager
def _counting_retries() -> Iterator[_RetryCounter]:
    """During one Hub call, the counter stands in for huggingface_hub's own stderr handler: the
    retries end up as a number in our error message instead of a line each on the terminal."""
    logger = logging.getLogger("huggingface_hub")
    counter, own_handlers = _RetryCounter(), list(logger.handlers)
    for handler in own_handlers:
        logger.removeHandler(handler)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        for handler in own_handlers:
            logger.addHandler(handler)


def download(ref: HubReference, *, what: str, patterns: list[str], token: str | None, repo_type: str = "model") -> Path:
    """Fetch the files matching ``patterns`` at one commit; return the snapshot folder.

    The folder is ``.../snapshots/<commit sha>``: its name is the resolved revision.
    """
    with _counting_retries() as counter:
        try:
            folder = snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns, token=token, repo_type=repo_type)
        except Exception as err:  # the client raises many types; each becomes one typed error
            raise hub_error(err, ref, what=what, token=token, retries=counter.retries) from None
    return Path(folder)


def hub_error(
    err: BaseException, ref: HubReference, *, what: str, token: str | None, writing: bool = False, retries: int = 0
) -> HubError:
    where = f"{ref.repo_id}" + (f"@{ref.revision}" if ref.revision else "")
    after = f", after {retries} retries" if retries else ""
    have_token = bool(token or get_token())
    if isinstance(err, GatedRepoError):
        return HubGatedError(
            f"The {what} {where} is gated: its owner must grant you access before you can download it.",
            f"Request access at {constants.ENDPOINT}/{ref.repo_id}, then pass a token of the account that has it (--token or HF_TOKEN).",
        )
    if isinstance(err, RepositoryNotFoundError):
        if not have_token:
            return HubAuthError(
                f"The {what} {where} was not found, or it is private and no token was given.",
                "Check the repo id; for a private repo pass --token, set HF_TOKEN, or run 'hf auth login'.",
            )
        return HubRepoNotFoundError(
            f"The {what} {where} was not found, or the token given may not read it.",
            "Check the repo id and that the token's account has access to it.",
        )
    if isinstance(err, RevisionNotFoundError):
        return HubRevisionNotFoundError(
            f"The {what} {ref.repo_id} has no revision {ref.revision!r}.", "Use a branch, tag or commit sha that exists in the repo."
        )
    if isinstance(err, LocalEntryNotFoundError):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
            return HubUnreachableError(
                f"HF_HUB_OFFLINE is set and the {what} {where} is not in the Hub cache ({constants.HF_HUB_CACHE}).",
                "Run once online to cache it, or unset HF_HUB_OFFLINE.",
            )
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return HubUnreachableError(
                f"The Hub answered HTTP {cause.response.status_code} for the {what} {where}{after}.",
                "The Hub may be down; try again later.",
            )
        return HubUnreachableError(
            f"Could not reach the Hub at {constants.ENDPOINT} for the {what} {where} ({type(cause or err).__name__}{after}).",
            "Check the network (and HF_ENDPOINT), or use HF_HUB_OFFLINE=1 if it is cached.",
        )
    if isinstance(err, EntryNotFoundError):
        return HubFileMissingError(f"A file of the {what} {where} is missing on the Hub: {err}", "Check the repo's files.")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status in (401, 403):
            action = "write to" if writing else "read"
            fix = "Pass a token with write access (--token or HF_TOKEN)." if writing else "Pass a token with access."
            return HubAuthError(f"The Hub refused to let this token {action} {where} (HTTP {status}).", fix)
        downloading = "/resolve/" in str(err.response.request.url)
        return HubUnreachableError(
            f"The Hub answered HTTP {status} {'while downloading a file of' if downloading else 'for'} the {what} {where}{after}.",
            "Try again later; files already downloaded stay in the Hub cache." if status >= 500 else "Check the request.",
        )
    if isinstance(err, (httpx2.TransportError, OSError)):
        return HubUnreachableError(
            f"Could not reach the Hub at {constants.ENDPOINT} for {where} ({type(err).__name__}: {err}{after}).",
            "Check the network and HF_ENDPOINT; nothing was changed on the Hub.",
        )
    if isinstance(err, HFValidationError):
        return HubRepoNotFoundError(f"{where!r} is not a valid Hub repo id: {err}", "Use the form user/name or user/name@revision.")
    raise err


@dataclass(frozen=True)
class PushResult:
    repo_url: str
    commit_sha: str
    commit_url: str
    pr_url: str | None
    changed: bool  # False when the repo already held identical files: no commit was made


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    token: str | None,
    private: bool = False,
    branch: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
) -> PushResult:
    """Create the repo if missing and upload ``folder`` as one commit (or one pull request)."""
    api = HfApi(token=token)
    ref = HubReference(repo_id, branch)
    with _counting_retries() as counter:
        return _push(api, folder, ref, private=private, create_pr=create_pr, commit_message=commit_message, token=token, counter=counter)


def _push(api: HfApi, folder: Path, ref: HubReference, *, private: bool, create_pr: bool, commit_message: str | None,
          token: str | None, counter: _RetryCounter) -> PushResult:
    repo_id, branch = ref.repo_id, ref.revision
    try:
        repo_url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        if branch and branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        before = api.repo_info(repo_id, revision=branch).sha
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=branch,
            create_pr=create_pr,
            commit_message=commit_message or "Upload adapter converted by adapter-convert",
        )
    except Exception as err:
        raise hub_error(err, ref, what="destination repo", token=token, writing=True, retries=counter.retries) from None
    return PushResult(repo_url, info.oid, info.commit_url, info.pr_url, changed=info.oid != before or bool(info.pr_url))
