"""Downloads: a repo's files at one pinned commit through the Hub cache (a cached snapshot when the
Hub fails for a revision downloaded before), and a listing of file sizes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    build_hf_headers,
    filter_repo_objects,
    hf_raise_for_status,
    http_backoff,
    validate_repo_id,
)

from .errors import hub_error
from .references import _COMMIT_SHA, HubReference
from .retry import RETRY_STATUS, _api_needs_retry, _counting_retries, _download_needs_retry, _retrying, logger


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
