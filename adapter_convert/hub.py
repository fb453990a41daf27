"""Every Hugging Face Hub call adapter-convert makes: pull with ``snapshot_download``, push with
``create_commit``. Each Hub failure becomes one typed error with a next step.

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

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, snapshot_download
from huggingface_hub.community import DiscussionComment
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
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, filter_repo_objects, hf_raise_for_status, http_backoff, validate_repo_id

from . import __version__
from .adapter_io import CONFIG_NAME, PICKLE_WEIGHTS_NAME, WEIGHTS_NAME
from .errors import (
    BadAdapterError,
    HubAuthError,
    HubError,
    HubFileMissingError,
    HubGatedError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUnreachableError,
    UsageError,
)

ADAPTER_FILES = [CONFIG_NAME, WEIGHTS_NAME]
PICKLE_ADAPTER_FILES = [PICKLE_WEIGHTS_NAME]
ADAPTER_CARD_FILES = ["README.md"]  # the source adapter's card, for its license (optional)
CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "*.model"]
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json"]
ADAPTER_WEIGHT_FILES = (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME)  # an adapter needs one of these
PUBLISHED_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")  # all that `push` uploads

_HUB_REFERENCE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[^@\s]+))?$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_PR_REF = re.compile(r"^refs/pr/(?P<num>[1-9][0-9]*)$")
_BAD_BRANCH = re.compile(r"[\s~^:?*\[\\]|\.\.|@\{|//|^[-/.]|[/.]$|\.lock$")  # git's ref-name rules, roughly

RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # huggingface_hub's own list
MAX_RETRIES = 5
TOOL_MARKER = "Published with adapter-convert"  # in the description of every pull request this tool opens

logger = logging.getLogger(__name__)


class _StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment (the terminal, or a test runner's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"Warning: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    logger.addHandler(_StderrHandler(logging.WARNING))


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


# ---- retries ---------------------------------------------------------------------------------

T = TypeVar("T")
_sleep = time.sleep  # the waits between tries (tests make them instant)


def _transient(err: BaseException) -> bool:
    """An answer or a failure worth another try: 408/429/5xx, or a connection that failed."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return err.response.status_code in RETRY_STATUS
    return isinstance(err, httpx2.TransportError) and not isinstance(err, (httpx2.ProxyError, httpx2.UnsupportedProtocol))


def _retrying(call: Callable[[], T], counter: _RetryCounter, *, retry_if: Callable[[BaseException], bool] = _transient) -> T:
    """``call()``, tried again after huggingface_hub's waits (1, 2, 4, 8, 8 s) while ``retry_if``
    says the failure is transient. Only for calls that are safe to repeat."""
    wait = 1.0
    for attempt in range(MAX_RETRIES + 1):
        try:
            return call()
        except Exception as err:
            if attempt == MAX_RETRIES or not retry_if(err):
                raise
        counter.retries += 1
        _sleep(wait)
        wait = min(8.0, wait * 2)
    raise AssertionError("unreachable")


def _request_of(err: BaseException) -> httpx2.Request | None:
    try:
        if isinstance(err, HfHubHTTPError):
            return err.response.request if err.response is not None else None
        return err.request if isinstance(err, httpx2.RequestError) else None
    except RuntimeError:  # an error raised without its request
        return None


def _request_method(err: BaseException) -> str | None:
    request = _request_of(err)
    return request.method if request is not None else None


_BACKOFF_PATHS = ("/tree/", "/preupload/")  # requests huggingface_hub sends through http_backoff itself


def _api_needs_retry(err: BaseException) -> bool:
    """A transient failure of an API call, unless huggingface_hub already retried that request."""
    request = _request_of(err)
    return _transient(err) and not (request is not None and any(part in request.url.path for part in _BACKOFF_PATHS))


def _download_needs_retry(err: BaseException) -> bool:
    """A transient failure of ``snapshot_download`` that huggingface_hub did not already retry:
    a file GET answered 5xx (it retries only 408/429 there), or a HEAD or listing whose connection
    dropped or broke. Time-outs, refused connections and cut file GETs it retried itself."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        request = err.response.request
        return err.response.status_code >= 500 and request.method == "GET" and "/resolve/" in str(request.url)
    if isinstance(err, (httpx2.TimeoutException, httpx2.ConnectError)):
        return False
    if isinstance(err, httpx2.RemoteProtocolError):
        return _request_method(err) != "GET"  # a file GET that drops is resumed by huggingface_hub
    return isinstance(err, httpx2.NetworkError)


# ---- downloads -------------------------------------------------------------------------------


def download(ref: HubReference, *, what: str, patterns: list[str], token: str | None, repo_type: str = "model") -> Path:
    """Fetch the files matching ``patterns`` at one commit; return the snapshot folder.

    The folder is ``.../snapshots/<commit sha>``: its name is the resolved revision. When the Hub
    fails or refuses (5xx, no connection, 401) for a branch or tag that was downloaded before, the
    cached snapshot is used, with a warning naming its commit.
    """
    with _counting_retries() as counter:
        try:
            validate_repo_id(ref.repo_id)
            revision, cached = _pin_revision(ref, what=what, patterns=patterns, token=token, repo_type=repo_type)
            if cached is not None:
                return cached
            folder = _retrying(
                lambda: snapshot_download(ref.repo_id, revision=revision, allow_patterns=patterns, token=token, repo_type=repo_type),
                counter, retry_if=_download_needs_retry,
            )
        except Exception as err:  # the client raises many types; each becomes one typed error
            raise hub_error(err, ref, what=what, token=token, retries=counter.retries) from None
    return Path(folder)


def _pin_revision(
    ref: HubReference, *, what: str, patterns: list[str], token: str | None, repo_type: str
) -> tuple[str | None, Path | None]:
    """The commit sha ``ref`` names now (asked of the Hub with huggingface_hub's ``http_backoff``,
    so 5xx answers and dropped connections are retried), remembered in the cache's ``refs/`` for
    offline runs. Offline, or for a commit sha, the revision as given. When the Hub cannot answer
    or refuses the token and a complete cached snapshot exists: that snapshot's folder."""
    revision = ref.revision or constants.DEFAULT_REVISION
    if constants.HF_HUB_OFFLINE or _COMMIT_SHA.match(revision):
        return ref.revision, None
    url = f"{constants.ENDPOINT}/api/{repo_type}s/{ref.repo_id}/revision/{quote(revision, safe='')}"
    try:
        response = http_backoff("GET", url, headers=build_hf_headers(token=token), timeout=constants.HF_HUB_ETAG_TIMEOUT)
        hf_raise_for_status(response)
    except (HfHubHTTPError, httpx2.TransportError) as err:
        if isinstance(err, HfHubHTTPError):
            status = err.response.status_code if err.response is not None else None
            if not (status == 401 or (status or 0) >= 500 or status in RETRY_STATUS):
                raise
        cached = _cached_snapshot(ref.repo_id, revision, patterns=patterns, repo_type=repo_type)
        if cached is None:
            raise
        where = f"{ref.repo_id}@{revision}"
        if isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code == 401:
            why = "the Hub refused access (HTTP 401: no token, or one it does not accept)"
            check = "Pass a token that may read it (--token or HF_TOKEN) to use its current commit."
        else:
            why = (f"the Hub answered HTTP {err.response.status_code}" if isinstance(err, HfHubHTTPError) and err.response is not None
                   else f"the Hub could not be reached ({type(err).__name__})")
            check = "Run again when the Hub answers to use its current commit."
        logger.warning(
            f"{why} for the {what} {where}, so the cached snapshot of commit {cached.name} is used; "
            f"{revision} may have moved on since it was cached. {check}"
        )
        return cached.name, cached
    sha = response.json()["sha"]
    _remember_ref(ref.repo_id, revision, sha, repo_type=repo_type)
    return sha, None


def repo_file_sizes(repo_id: str, revision: str | None, patterns: list[str], *, token: str | None = None,
                    repo_type: str = "model") -> dict[str, int]:
    """``{file: bytes}`` of the files of ``repo_id`` at ``revision`` that match ``patterns`` (one
    listing request, retried like every other; nothing is downloaded)."""
    ref = HubReference(repo_id, revision)
    with _counting_retries() as counter:
        try:
            entries = _retrying(lambda: list(HfApi(token=token).list_repo_tree(repo_id, revision=revision, recursive=True,
                                                                               repo_type=repo_type)),
                                counter, retry_if=_api_needs_retry)
        except Exception as err:
            raise hub_error(err, ref, what="repo", token=token, retries=counter.retries) from None
    names = set(filter_repo_objects([e.path for e in entries if isinstance(e, RepoFile)], allow_patterns=patterns))
    return {e.path: e.size for e in entries if isinstance(e, RepoFile) and e.path in names}


def _storage_folder(repo_id: str, repo_type: str) -> Path:
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def _remember_ref(repo_id: str, revision: str, sha: str, *, repo_type: str) -> None:
    """Cache ``revision -> sha`` the way huggingface_hub does (``refs/<revision>``), so that
    ``HF_HUB_OFFLINE=1`` finds it; best effort, as in huggingface_hub."""
    path = _storage_folder(repo_id, repo_type) / "refs" / revision
    try:
        if path.is_file() and path.read_text() == sha:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(sha)
        partial.replace(path)
    except OSError:
        pass


def _cached_snapshot(repo_id: str, revision: str, *, patterns: list[str], repo_type: str) -> Path | None:
    """The complete cached snapshot ``revision`` pointed to when last downloaded, or None."""
    ref_file = _storage_folder(repo_id, repo_type) / "refs" / revision
    if not ref_file.is_file():
        return None
    sha = ref_file.read_text().strip()
    try:  # checks the snapshot against the cached tree listing: a partial one is not used
        return Path(snapshot_download(repo_id, revision=sha, allow_patterns=patterns, repo_type=repo_type, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def hub_error(
    err: BaseException, ref: HubReference, *, what: str, token: str | None, writing: bool = False, retries: int = 0
) -> HubError:
    if isinstance(err, HubError):
        return err
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
            if not have_token:
                return HubAuthError(f"No Hub token was given, and the Hub refused access to {where} (HTTP {status}).",
                                    "Pass --token, set HF_TOKEN, or run 'hf auth login'.")
            action = "write to" if writing else "read"
            fix = "Pass a token with write access (--token or HF_TOKEN)." if writing else "Pass a token with access."
            return HubAuthError(f"The Hub refused to let this token {action} {where} (HTTP {status}).", fix)
        if writing:
            return HubUnreachableError(f"The Hub answered HTTP {status} for the {what} {where}{after}.",
                                       "Try again later." if status >= 500 else "Check the request.")
        downloading = "/resolve/" in str(err.response.request.url)
        return HubUnreachableError(
            f"The Hub answered HTTP {status} {'while downloading a file of' if downloading else 'for'} the {what} {where}{after}.",
            "Try again later; files already downloaded stay in the Hub cache." if status >= 500 else "Check the request.",
        )
    if isinstance(err, (httpx2.TransportError, OSError)):
        return HubUnreachableError(
            f"Could not reach the Hub at {constants.ENDPOINT} for the {what} {where} ({type(err).__name__}: {str(err).rstrip('.')}{after}).",
            "Check the network and HF_ENDPOINT." if writing else
            "Check the network and HF_ENDPOINT, or use HF_HUB_OFFLINE=1 if it is cached.",
        )
    if isinstance(err, HFValidationError):
        return HubRepoNotFoundError(f"{where!r} is not a valid Hub repo id: {err}", "Use the form user/name or user/name@revision.")
    raise err


# ---- pushes ----------------------------------------------------------------------------------


def check_push_options(
    repo_id: str, *, branch: str | None = None, create_pr: bool = False, commit_message: str | None = None, token: str | None = None
) -> None:
    """Check a push's options before anything is converted or sent (no request is made).

    Raises UsageError (exit 2) for a malformed destination, branch or message and for options
    that contradict each other, and HubAuthError (exit 11) when there is no token at all.
    ``--branch X --create-pr`` is allowed: it opens the pull request against branch X.
    """
    if "@" in repo_id:
        name, _, revision = repo_id.partition("@")
        raise UsageError(f"The destination {repo_id!r} names a revision; a push takes a repo id (user/name).",
                         f"Push to {name} with --branch {revision}.")
    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise HFValidationError("it needs a namespace")
    except HFValidationError as err:
        raise UsageError(f"The destination {repo_id!r} is not a Hub repo id of the form user/name ({err}).",
                         "Give the repo to push to as user/name or organization/name.") from None
    if branch is not None:
        pr = _PR_REF.match(branch)
        if _COMMIT_SHA.match(branch):
            raise UsageError(f"--branch {branch} is a commit sha; a push adds a commit to a branch.", "Name a branch (created if missing).")
        if not pr and (branch.startswith("refs/") or not branch.strip() or _BAD_BRANCH.search(branch)):
            raise UsageError(f"--branch {branch!r} is not a valid branch name.",
                             "Use a plain branch name such as release or v1, or refs/pr/N to add to open pull request N.")
        if pr and create_pr:
            raise UsageError(f"--branch {branch} adds a commit to the existing pull request {pr['num']}, and --create-pr would open "
                             "another one.", "Drop --create-pr to update that pull request, or --branch to open a new one.")
    if commit_message is not None and not commit_message.strip():
        raise UsageError("--commit-message is empty.", "Give a message, or leave the option out for the default one.")
    if not (token or get_token()):
        raise HubAuthError(f"No Hub token was found, and pushing to {repo_id} needs one with write access.",
                           "Pass --token, set HF_TOKEN, or run 'hf auth login'. Nothing was sent to the Hub.")


def publishable_files(folder: Path) -> tuple[list[str], list[str]]:
    """(the files a push uploads, every other file of ``folder``): only the adapter's config and
    weights and its model card are published; anything else there (a stray ``.env``, notes,
    sub-folders) is left out and named."""
    folder = Path(folder)
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    selected = [name for name in PUBLISHED_FILES if (folder / name).is_file()]
    return selected, [name for name in present if name not in selected]


@dataclass(frozen=True)
class PushResult:
    commit_sha: str
    commit_url: str
    pr_url: str | None
    changed: bool  # False when nothing changed on the Hub: the branch, or an open PR of ours, already held these files
    files: tuple[str, ...] = ()  # what the push published (or found already published)
    committed: bool = False  # this run made a new commit (commit_sha); False: commit_sha already held these files
    created: tuple[str, ...] = ()  # what this run created: "repo user/name", "branch 'name'"
    left_out: tuple[str, ...] = ()  # files of the folder that are not part of a published adapter
    existing_pr: bool = False  # pr_url is an open pull request of an earlier run, holding the same files
    reply_lost: bool = False  # the Hub's answer to the commit was lost; reading the repo showed that it landed


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
    """Publish the adapter in ``folder`` (config, weights, card) to ``repo_id`` as one commit, on
    ``branch`` (default main) or in a new pull request against it (``create_pr``).

    The repo, and a missing branch, are created only once the token is known to be able to write,
    and deleted again when the commit then fails. Identical content already on the branch, or in
    an open pull request of this tool, is reported instead of pushed again.
    """
    check_push_options(repo_id, branch=branch, create_pr=create_pr, commit_message=commit_message, token=token)
    files, left_out = publishable_files(folder)
    if missing := [name for name in PUBLISHED_FILES if name not in files]:
        raise BadAdapterError(f"{str(folder)!r} has no {' or '.join(missing)}, so it is not a complete adapter to publish.",
                              "Publish folders written by 'adapter-convert convert'.")
    token = token or get_token()
    with _counting_retries() as counter:
        run = _PushRun(HfApi(token=token), Path(folder), repo_id, files=files, token=token, branch=branch, create_pr=create_pr,
                       private=private, commit_message=commit_message, counter=counter)
        result = run.run()
    created = (f"repo {repo_id}",) * run.created_repo + (f"branch {run.target!r}",) * run.created_branch
    return PushResult(**{**result.__dict__, "files": tuple(files), "left_out": tuple(left_out), "created": created})


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _PushRun:
    """One push, remembering what it created so that a failure can undo it and say what is left."""

    api: HfApi
    folder: Path
    repo_id: str
    files: list[str]
    token: str
    branch: str | None
    create_pr: bool
    private: bool
    commit_message: str | None
    counter: _RetryCounter
    existed: bool = True  # whether the repo existed before this run
    created_repo: bool = False
    created_branch: bool = False
    head_before: str | None = None  # the target's head before our commit
    user: str | None = None
    _local: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (git blob sha1, sha256)

    # -- where ---------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        """The ref committed to (a new PR starts from it): a branch, or refs/pr/N."""
        return self.branch or constants.DEFAULT_REVISION

    @property
    def pr_num(self) -> int | None:
        match = _PR_REF.match(self.target)
        return int(match["num"]) if match else None

    def url(self, tail: str = "") -> str:
        return f"{self.api.endpoint}/{self.repo_id}{tail}"

    def short(self, sha: str | None) -> str:
        return (sha or "?")[:12]

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> PushResult:
        try:
            self._check_token()
            exists = self.existed = self._call(lambda: self._exists())
            if exists:
                self.head_before = self._call(lambda: self._head(self.target))
            if self.head_before is None and (self.pr_num or (self.create_pr and self.target != constants.DEFAULT_REVISION)):
                what = f"pull request {self.pr_num}" if self.pr_num else f"branch {self.target!r}"
                raise HubRevisionNotFoundError(
                    f"{self.repo_id} has no {what}" + ("" if exists else " (the repo does not exist)")
                    + ", so there is nothing to open a pull request against or push into. Nothing was changed on the Hub.",
                    "Push to the branch first (without --create-pr), or leave --branch out to use main."
                    if not self.pr_num else "Check the pull request number, or use --create-pr to open a new one.",
                )
            if self.head_before is not None:
                if self._call(lambda: self._holds_our_files(self.head_before)):
                    return self._unchanged()
                if self.create_pr and (found := self._call(lambda: self._open_pr_with_our_files())) is not None:
                    return found
                self._call(lambda: self._check_can_write(self.target))
            elif exists:  # a missing branch, to be made from main
                self._call(lambda: self._check_can_write(constants.DEFAULT_REVISION))
        except HubError:
            raise
        except Exception as err:
            raise self._error(err, "Nothing was changed on the Hub.") from None
        try:
            if not exists:
                self._call(lambda: self.api.create_repo(self.repo_id, private=self.private, exist_ok=True))
                self.created_repo = True
                self.head_before = self._call(lambda: self._head(constants.DEFAULT_REVISION))
            if self.head_before is None or (self.branch and self.created_repo and self.target != constants.DEFAULT_REVISION):
                self._call(lambda: self.api.create_branch(self.repo_id, branch=self.target, exist_ok=True))
                self.created_branch = True
                self.head_before = self._call(lambda: self._head(self.target))
            return self._commit()
        except Exception as err:
            raise self._failed(err) from None

    def _call(self, call: Callable[[], T]) -> T:
        return _retrying(call, self.counter, retry_if=_api_needs_retry)

    def _check_token(self) -> None:
        try:
            info = self._call(lambda: self.api.whoami())
        except HfHubHTTPError as err:
            if err.response is not None and err.response.status_code == 401:
                raise HubAuthError("The Hub rejected the token given (HTTP 401): it is invalid, expired or revoked. "
                                   "Nothing was changed on the Hub.",
                                   "Pass a valid token with write access (--token or HF_TOKEN), then run the same command again.") from None
            raise
        self.user = info.get("name")
        role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubAuthError(f"The token given (of {self.user}) is read-only, so it cannot push to {self.repo_id}. "
                               "Nothing was changed on the Hub.",
                               "Pass a token with write access (--token or HF_TOKEN), then run the same command again.")

    def _exists(self) -> bool:
        try:
            self.api.repo_info(self.repo_id)
            return True
        except RepositoryNotFoundError as err:
            if err.response is not None and err.response.status_code == 401:
                raise
            return False

    def _head(self, revision: str) -> str | None:
        try:
            return self.api.repo_info(self.repo_id, revision=revision).sha
        except RevisionNotFoundError:
            return None

    def _fingerprints(self) -> dict[str, tuple[str, str]]:
        if not self._local:
            for name in self.files:
                content = (self.folder / name).read_bytes()
                self._local[name] = (_git_blob_sha1(content), hashlib.sha256(content).hexdigest())
        return self._local

    def _holds_our_files(self, revision: str) -> bool:
        """Whether ``revision`` holds exactly our files (other files beside them do not matter)."""
        remote = {f.path: f for f in self.api.list_repo_tree(self.repo_id, revision=revision) if isinstance(f, RepoFile)}
        for name, (blob, sha256) in self._fingerprints().items():
            entry = remote.get(name)
            if entry is None or (entry.lfs.sha256 != sha256 if entry.lfs is not None else entry.blob_id != blob):
                return False
        return True

    def _open_pr_with_our_files(self) -> PushResult | None:
        """An open pull request of this tool, by this user, against the target, holding our files."""
        base = f"refs/heads/{self.target}"
        open_prs = self.api.get_repo_discussions(self.repo_id, author=self.user, discussion_type="pull_request", discussion_status="open")
        for pr in open_prs:
            details = self.api.get_discussion_details(self.repo_id, pr.num)
            opening = next((e for e in details.events if isinstance(e, DiscussionComment)), None)
            if details.target_branch != base or opening is None or TOOL_MARKER not in opening.content:
                continue
            if self._holds_our_files(details.git_reference):
                head = self.api.repo_info(self.repo_id, revision=details.git_reference).sha
                return PushResult(head, self.url(f"/commit/{head}"), details.url, changed=False, existing_pr=True)
        return None

    def _operations(self) -> list[CommitOperationAdd]:
        return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=self.folder / name) for name in self.files]

    def _check_can_write(self, revision: str) -> None:
        """The pre-upload request needs write access: asked before anything is created."""
        self.api.preupload_lfs_files(self.repo_id, additions=self._operations(), revision=revision, create_pr=self.create_pr)

    def _unchanged(self) -> PushResult:
        pr_url = self.url(f"/discussions/{self.pr_num}") if self.pr_num else None
        return PushResult(self.head_before, self.url(f"/commit/{self.head_before}"), pr_url, changed=False)

    # -- the commit ----------------------------------------------------------------------------
    def _commit(self) -> PushResult:
        """One commit (or a new pull request). Never re-sent blindly: after a failure the target
        (or the open pull requests) is read back, and a commit with our files that landed is the
        result. On a branch the commit names its parent, so a second one cannot land on top."""
        wait = 1.0
        for attempt in range(MAX_RETRIES + 1):
            try:
                info = self.api.create_commit(
                    self.repo_id,
                    operations=self._operations(),
                    commit_message=self.commit_message or "Upload adapter converted by adapter-convert",
                    commit_description=f"{TOOL_MARKER} {__version__}: {', '.join(self.files)}.",
                    revision=self.target,
                    create_pr=self.create_pr,
                    parent_commit=None if self.create_pr else self.head_before,
                )
            except Exception as err:
                if not _api_needs_retry(err):
                    raise
                landed = self._landed()
                if landed is not None:
                    return landed
                if attempt == MAX_RETRIES:
                    raise
                self.counter.retries += 1
                _sleep(wait)
                wait = min(8.0, wait * 2)
                continue
            pr_url = info.pr_url or (self.url(f"/discussions/{self.pr_num}") if self.pr_num else None)
            committed = info.oid != self.head_before or bool(info.pr_url)  # else: the files were there already
            changed = committed or self.created_branch or self.created_repo
            return PushResult(info.oid, info.commit_url, pr_url, changed=changed, committed=committed)
        raise AssertionError("unreachable")

    def _landed(self) -> PushResult | None:
        """After a failed commit: the commit with our files, if the Hub stored it anyway."""
        try:
            if self.create_pr:
                found = self._call(lambda: self._open_pr_with_our_files())
                if found is None:
                    return None
                return PushResult(**{**found.__dict__, "changed": True, "committed": True, "existing_pr": False, "reply_lost": True})
            head = self._call(lambda: self._head(self.target))
            if head is not None and head != self.head_before and self._call(lambda: self._holds_our_files(head)):
                pr_url = self.url(f"/discussions/{self.pr_num}") if self.pr_num else None
                return PushResult(head, self.url(f"/commit/{head}"), pr_url, changed=True, committed=True, reply_lost=True)
            return None
        except Exception as err:
            raise _Unknown() from err

    # -- failures ------------------------------------------------------------------------------
    def _error(self, err: BaseException, state: str, *, wrote: bool = False) -> HubError:
        """``err`` as a typed error whose message says ``state`` (what exists on the Hub now) and how to resume."""
        ref = HubReference(self.repo_id, self.branch)
        mapped = hub_error(err, ref, what="destination repo", token=self.token, writing=True, retries=self.counter.retries)
        resume = ("; it creates only what is missing, and commits only if the files are not there yet." if wrote else ".")
        fix = ("The Hub may be down: run the same command again later" if mapped.fix == "Try again later."
               else f"{mapped.fix} Then run the same command again")
        return type(mapped)(f"{mapped.problem} {state}", fix + resume)

    def _failed(self, err: BaseException) -> HubError:
        """The failure, with what now exists on the Hub (after undoing what this run created)."""
        if isinstance(err, _Unknown):  # nothing is undone: our commit may be there
            made = (f", so the repo {self.repo_id} (created by this run) was left as it is" if self.created_repo
                    else f", so the branch {self.target!r} (created by this run) was left as it is" if self.created_branch else "")
            where = self.url(f"/tree/{quote(self.target, safe='/')}") + (" and its pull requests" if self.create_pr else "")
            return self._error(err.__cause__ or err, f"The commit was sent but its answer was lost, and the Hub could not be "
                               f"asked whether it landed{made}: look at {where}.", wrote=True)
        if isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code == 412:
            return HubError(f"{self.repo_id}@{self.target} moved on while this push ran (another commit landed first), so "
                            f"this push committed nothing. {self._undo()}",
                            "Run the same command again to commit on top of the new head.")
        return self._error(err, self._undo(), wrote=True)

    def _undo(self) -> str:
        """Delete what this run created (nothing of ours landed); say what exists now."""
        if self.created_repo:
            try:
                self._call(lambda: self.api.delete_repo(self.repo_id, missing_ok=True))  # missing: a retry after a lost answer
                return f"Nothing was published: the repo {self.repo_id} that this run created was deleted again."
            except Exception:  # noqa: BLE001 - reported below
                return (f"The repo {self.repo_id} was created by this run and is still on the Hub, without the adapter "
                        f"(deleting it failed too): delete it at {self.url('/settings')}, or push into it again.")
        if self.created_branch:
            try:
                with contextlib.suppress(RevisionNotFoundError):  # gone: a retry after a lost answer
                    self._call(lambda: self.api.delete_branch(self.repo_id, branch=self.target))
                return f"The branch {self.target!r} that this run created was deleted again; {self.repo_id} is unchanged."
            except Exception:  # noqa: BLE001 - reported below
                return (f"The branch {self.target!r} was created by this run and is still on the Hub at commit "
                        f"{self.short(self.head_before)}, without the adapter (deleting it failed too).")
        if not self.existed:
            return f"Nothing was changed on the Hub: {self.repo_id} was not created."
        if self.create_pr:
            return f"No pull request was opened; {self.repo_id} is unchanged."
        return f"{self.repo_id}@{self.target} is unchanged (still at commit {self.short(self.head_before)})."


class _Unknown(Exception):
    """Whether a commit landed could not be read back (the Hub did not answer)."""


def read_file_range(repo_id: str, filename: str, *, revision: str, start: int, stop: int, token: str | None) -> bytes:
    """Bytes ``[start, stop)`` of one file at a pinned revision, by an HTTP range request through
    huggingface_hub's own session (its headers, token and retries); a few MB instead of the file."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

    url = hf_hub_url(repo_id, filename, revision=revision)
    headers = {**build_hf_headers(token=token), "Range": f"bytes={start}-{stop - 1}"}
    with http_stream_backoff("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
        hf_raise_for_status(response)
        if response.status_code == 206:
            return response.read()
        buffer = bytearray()  # the server ignored the range: stop reading once past it
        for chunk in response.iter_bytes():
            buffer += chunk
            if len(buffer) >= stop:
                break
        return bytes(buffer[start:stop])
