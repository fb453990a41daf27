"""Publishing: check a push's options before any request, then one commit (or a pull request) of
the adapter's files, creating only what is missing once the token may write, undoing it on
failure, and never sending a commit twice blindly (after a failure the branch is read back)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.community import DiscussionComment
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..errors import BadAdapterError, HubAuthError, HubError, HubRevisionNotFoundError, UsageError
from .errors import hub_error
from .references import _BAD_BRANCH, _COMMIT_SHA, _PR_REF, PUBLISHED_FILES, HubReference
from .retry import MAX_RETRIES, T, _api_needs_retry, _counting_retries, _retrying, _RetryCounter, wait

TOOL_MARKER = "Published with adapter-convert"  # in the description of every pull request this tool opens


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
        seconds = 1.0
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
                wait(seconds)
                seconds = min(8.0, seconds * 2)
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
