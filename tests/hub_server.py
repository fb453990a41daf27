"""A small Hugging Face Hub stand-in for tests: standard library only, in memory, on 127.0.0.1.

It speaks the subset of the Hub HTTP API that ``huggingface_hub``'s client uses for downloads
(repo info, tree listing, HEAD/GET of resolved files with Range) and uploads (repo creation,
branches, pre-upload, the NDJSON commit endpoint, pull-request refs); ``../shared/HUB-API.md``
lists what the client sends and what it expects back. Test infrastructure, not product.

Behaviour worth knowing:
* Tokens: ``server.tokens`` maps token -> user. Writes need the namespace owner's token, and
  one not in ``server.read_only`` (those answer 403, and whoami reports their role as "read");
  private repos answer 401 RepoNotFound without it; gated repos answer file downloads with
  GatedRepo unless the user is in ``repo.gated_allowed``.
* A commit applies all of its operations or none. A commit to a branch that does not exist
  answers 404 RevisionNotFound. With ``?create_pr=1`` the server opens the pull request and
  commits to its ``refs/pr/N`` in one step (the PR's base is the branch committed to).
* Pull requests and discussions are listed (``GET .../discussions``, filtered by type, status
  and author) and read with their events (the first comment holds the description). Repos are
  deleted with ``DELETE /api/repos/delete``, branches with ``DELETE .../branch/<name>``.
* ``server.fail(method, path_part, kind, times, skip=0)`` injects faults into the next ``times``
  matching requests (after letting ``skip`` of them through): ``"500"`` answers 500; ``"drop"`` closes the connection without an answer;
  ``"lose-reply"`` does what the request asks (a commit lands) and then closes the connection
  without an answer; ``"cut"`` (GET of a file) sends the headers and half the body, then closes;
  ``"hang"`` waits ``HANG_SECONDS`` before answering normally (for client time-outs).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def blob_sha(content: bytes) -> str:
    """The git blob id, which the Hub uses as a regular file's ETag and oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    private: bool = False
    gated: bool = False
    gated_allowed: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: list[dict] = field(default_factory=list)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)

    def add_commit(self, ref: str, files: dict[str, bytes], message: str) -> Commit:
        parent = self.refs.get(ref)
        digest = hashlib.sha1(f"{self.repo_id}|{ref}|{parent}|{message}|{time.time_ns()}".encode())
        for path in sorted(files):
            digest.update(path.encode() + blob_sha(files[path]).encode())
        commit = Commit(digest.hexdigest(), dict(files), message, parent)
        self.commits[commit.sha] = commit
        self.refs[ref] = commit.sha
        return commit


HANG_SECONDS = 4.0


@dataclass
class Fault:
    method: str
    path_part: str
    kind: str
    times: int
    skip: int = 0  # matching requests to let through before the fault starts


class HubState:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: dict[str, str] = {}
        self.read_only: set[str] = set()  # tokens that may read but not write
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()

    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False, gated: bool = False,
                    files: dict[str, bytes] | None = None) -> Repo:
        with self.lock:
            repo = Repo(repo_id, repo_type, private, gated)
            repo.add_commit("main", {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit")
            if files:
                repo.add_commit("main", repo.resolve("main").files | files, "add files")
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def pull_requests(self, repo_id: str, *, repo_type: str = "model", status: str | None = None) -> list[dict]:
        """The repo's pull requests (test assertions), optionally only those with this status."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            return [d for d in repo.discussions if d["isPullRequest"] and status in (None, d["status"])]

    def upload_folder(self, repo_id: str, folder, *, repo_type: str = "model", **create) -> Repo:
        """Seed a repo from a local folder (test set-up; the product pushes through the API)."""
        from pathlib import Path

        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
        return self.create_repo(repo_id, repo_type=repo_type, files=files, **create)

    def fail(self, method: str, path_part: str, kind: str, times: int = 1, *, skip: int = 0) -> None:
        with self.lock:
            self.faults.append(Fault(method, path_part, kind, times, skip))

    def take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.path_part in path and fault.times > 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    return fault.kind
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass per server
    lose_reply = False  # set per request by the "lose-reply" fault
    _request_body: bytes | None = None

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # ---- plumbing -------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def _user(self) -> str | None:
        return self.state.tokens.get(self._token() or "")

    def _read_only(self) -> bool:
        return self._token() in self.state.read_only

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False) -> None:
        if self.lose_reply:  # the work is done; the answer never arrives
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None, head: bool = False) -> None:
        extra = {"X-Error-Code": code} if code else {}
        self._send(status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json", **extra, **(headers or {})}, head=head)

    def _body(self) -> bytes:
        """The request body, read once per request (in ``_dispatch``, so that an early error answer
        never leaves body bytes on a kept-alive connection to be misread as the next request)."""
        if self._request_body is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._request_body = self.rfile.read(length) if length else b""
        return self._request_body

    def _segments(self) -> tuple[list[str], dict]:
        split = urlsplit(self.path)
        return [unquote(s) for s in split.path.split("/")[1:]], parse_qs(split.query)

    def _dispatch(self, method: str) -> None:
        self._request_body = None
        self._body()
        with self.state.lock:
            self.state.requests.append((method, self.path))
        fault = self.state.take_fault(method, self.path)
        self.lose_reply = fault == "lose-reply"
        if fault == "500":
            self._body()
            return self._error(500, None, "injected server error")
        if fault == "hang":
            time.sleep(HANG_SECONDS)
        if fault == "drop":
            self._body()
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        segments, query = self._segments()
        try:
            return self._route(method, segments, query, fault)
        except BrokenPipeError:
            return None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- routing --------------------------------------------------------------------------
    def _route(self, method: str, s: list[str], query: dict, fault: str | None) -> None:
        if s[:2] == ["api", "whoami-v2"]:
            user = self._user()
            if user is None:
                return self._error(401, None, "Invalid token")
            role = "read" if self._read_only() else "write"
            return self._json(200, {"name": user, "type": "user", "orgs": [], "auth": {"type": "access_token", "accessToken": {"role": role}}})
        if method == "POST" and s[:3] == ["api", "repos", "create"]:
            return self._create_repo(json.loads(self._body() or b"{}"))
        if method == "DELETE" and s[:3] == ["api", "repos", "delete"]:
            return self._delete_repo(json.loads(self._body() or b"{}"))
        if method == "POST" and s[:2] == ["api", "validate-yaml"]:
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if len(s) >= 4 and s[0] == "api" and s[1] in ("models", "datasets", "spaces"):
            repo_type = s[1][:-1]
            return self._api(method, repo_type, f"{s[2]}/{s[3]}", s[4:], query)
        repo_type, rest = ("dataset", s[1:]) if s[:1] == ["datasets"] else ("model", s)
        if len(rest) >= 4 and rest[2] == "resolve":
            return self._resolve(method, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]), fault)
        return self._error(404, None, f"no route for {self.path}")

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False, head: bool = False) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        user = self._user()
        owner = repo_id.split("/")[0]
        if repo is None or (repo.private and user != owner):
            status = 401 if user is None else 404
            self._error(status, "RepoNotFound", f"Repository Not Found for url: {self.path}.", head=head)
            return None
        if write and (user != owner or self._read_only()):
            self._error(403 if user else 401, None, f"You don't have the rights to write to {repo_id}", head=head)
            return None
        return repo

    def _create_repo(self, payload: dict) -> None:
        user = self._user()
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        if user is None or namespace != user or self._read_only():
            return self._error(401 if user is None else 403, None, "You don't have the rights to create this repo")
        url = f"http://{self.headers['Host']}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        self.state.create_repo(repo_id, repo_type=repo_type, private=private)
        return self._json(200, {"url": url})

    def _delete_repo(self, payload: dict) -> None:
        user = self._user()
        namespace = payload.get("organization") or user
        key = (payload.get("type") or "model", f"{namespace}/{payload.get('name')}")
        if user is None or namespace != user or self._read_only():
            return self._error(401 if user is None else 403, None, "You don't have the rights to delete this repo")
        with self.state.lock:
            if self.state.repos.pop(key, None) is None:
                return self._error(404, "RepoNotFound", f"Repository Not Found: {key[1]}")
        return self._json(200, {})

    def _info(self, repo: Repo, commit: Commit) -> dict:
        return {
            "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.sha, "private": repo.private,
            "gated": "auto" if repo.gated else False, "disabled": False,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def _api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict) -> None:
        action = rest[0] if rest else None
        repo = self._repo(repo_type, repo_id, write=method in ("POST", "DELETE"))
        if repo is None:
            return None
        if method == "GET" and action in (None, "revision"):
            commit = repo.resolve(rest[1] if action == "revision" else "main")
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            return self._json(200, self._info(repo, commit))
        if method == "GET" and action == "tree":
            commit = repo.resolve(rest[1])
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            prefix = "/".join(rest[2:])
            entries = [
                {"type": "file", "path": path, "size": len(content), "oid": blob_sha(content)}
                for path, content in sorted(commit.files.items()) if path.startswith(prefix)
            ]
            return self._json(200, entries)
        if method == "POST" and action == "preupload":
            return self._preupload(repo, rest[1], json.loads(self._body()))
        if method == "POST" and action == "commit":
            return self._commit(repo, rest[1], self._body(), create_pr="create_pr" in query)
        if method == "POST" and action == "branch":
            return self._branch(repo, "/".join(rest[1:]), json.loads(self._body() or b"{}"))
        if method == "DELETE" and action == "branch":
            return self._delete_branch(repo, "/".join(rest[1:]))
        if action == "discussions":
            return self._discussions(method, repo, rest[1:], query)
        return self._error(404, None, f"no route for {self.path}")

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str, fault: str | None) -> None:
        head = method == "HEAD"
        repo = self._repo(repo_type, repo_id, head=head)
        if repo is None:
            return None
        user = self._user()
        if repo.gated and user not in repo.gated_allowed:
            return self._error(401 if user is None else 403, "GatedRepo", f"Access to model {repo_id} is restricted.", head=head)
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        if path not in commit.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit.sha}, head=head)
        content = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob_sha(content)}"', "Content-Type": "application/octet-stream"}
        # Range: "bytes=a-", "bytes=a-b" or "bytes=-n" (the first range only); end is exclusive
        start, end = 0, len(content)
        if (wanted := self.headers.get("Range", "")).startswith("bytes="):
            first, _, last = wanted[6:].split(",")[0].strip().partition("-")
            if first:
                start, end = int(first), min(len(content), int(last) + 1) if last else len(content)
            else:
                start = max(0, len(content) - int(last or 0))
            if start >= len(content) and not head:
                return self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(content)}"})
        body = content[start:end]
        partial = (start, end) != (0, len(content))
        if not head:  # file bodies served, for tests of range reads: state.served = [(path, bytes)], state.ranges = [(repo, path, start, end)]
            with self.state.lock:
                vars(self.state).setdefault("served", []).append((path, len(body)))
                vars(self.state).setdefault("ranges", []).append((repo_id, path, start, end))
        if head:
            return self._send(200, content, headers, head=True)
        if fault == "cut":  # promise the whole body, deliver half, hang up
            self.send_response(206 if partial else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(content)}"
            return self._send(206, body, headers)
        return self._send(200, body, headers)

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
        commit = repo.resolve(revision)
        files = commit.files if commit else {}
        return self._json(200, {"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": blob_sha(files[f["path"]]) if f["path"] in files else None}
            for f in payload.get("files", [])
        ]})

    def _commit(self, repo: Repo, revision: str, body: bytes, *, create_pr: bool) -> None:
        header, adds, deletes = {}, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                adds[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                deletes.append(item["value"]["path"])
            else:
                return self._error(400, None, f"unsupported commit operation {item['key']!r}")
        with self.state.lock:
            base = repo.resolve(revision)
            if base is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if header.get("parentCommit") and header["parentCommit"] != base.sha:
                return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            files = {p: c for p, c in base.files.items() if p not in deletes} | adds
            if revision not in repo.refs:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision} is not a branch")
            ref = revision
            pr_url = None
            if create_pr:
                number = len(repo.discussions) + 1
                ref = f"refs/pr/{number}"
                repo.refs[ref] = base.sha
                repo.discussions.append(self._discussion(repo, number, header.get("summary", ""), is_pr=True,
                                                         description=header.get("description", ""), base=revision))
                pr_url = f"http://{self.headers['Host']}/{repo.repo_id}/discussions/{number}"
            commit = repo.add_commit(ref, files, header.get("summary", ""))
        host = f"http://{self.headers['Host']}"
        return self._json(200, {"commitOid": commit.sha, "commitUrl": f"{host}/{repo.repo_id}/commit/{commit.sha}", "pullRequestUrl": pr_url})

    def _branch(self, repo: Repo, branch: str, payload: dict) -> None:
        if branch in repo.refs:
            return self._error(409, None, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", "Invalid starting point")
        repo.refs[branch] = start.sha
        return self._json(200, {})

    def _delete_branch(self, repo: Repo, branch: str) -> None:
        with self.state.lock:
            if branch not in repo.refs or branch.startswith("refs/"):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            if branch == "main":
                return self._error(403, None, "Cannot delete the default branch")
            del repo.refs[branch]
        return self._json(200, {})

    def _discussion(self, repo: Repo, number: int, title: str, *, is_pr: bool, description: str = "", base: str = "main") -> dict:
        author = {"name": self._user() or "deleted"}
        return {
            "num": number, "title": title, "status": "open", "createdAt": "2026-01-01T00:00:00.000Z",
            "isPullRequest": is_pr, "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "author": author, "changes": {"base": f"refs/heads/{base}"},
            "events": [{"id": f"event-{number}-1", "type": "comment", "createdAt": "2026-01-01T00:00:00.000Z", "author": author,
                        "data": {"edited": False, "hidden": False, "latest": {"raw": description, "html": description}}}],
            "filesWithConflicts": [], "pinned": False, "numComments": 1, "endpoint": "",
        }

    def _discussions(self, method: str, repo: Repo, rest: list[str], query: dict) -> None:
        if method == "POST" and not rest:
            payload = json.loads(self._body() or b"{}")
            with self.state.lock:
                number = len(repo.discussions) + 1
                repo.discussions.append(self._discussion(repo, number, payload.get("title", ""), is_pr=bool(payload.get("pullRequest")),
                                                         description=payload.get("description") or ""))
                if payload.get("pullRequest"):
                    repo.refs[f"refs/pr/{number}"] = repo.refs["main"]
            return self._json(200, {"num": number, "url": f"http://{self.headers['Host']}/{repo.repo_id}/discussions/{number}"})
        if method == "GET" and not rest:
            kind, status, author = (query.get(k, [None])[0] for k in ("type", "status", "author"))
            with self.state.lock:
                found = [
                    {k: v for k, v in d.items() if k not in ("events", "changes", "filesWithConflicts")}
                    for d in reversed(repo.discussions)  # newest first, as the Hub lists them
                    if kind in (None, "all", "pull_request" if d["isPullRequest"] else "discussion")
                    and status in (None, "all", d["status"]) and author in (None, d["author"]["name"])
                ]
            return self._json(200, {"discussions": found, "count": len(found), "start": 0, "numClosedDiscussions": 0})
        if method == "GET" and rest and rest[0].isdigit() and 0 < int(rest[0]) <= len(repo.discussions):
            return self._json(200, repo.discussions[int(rest[0]) - 1])
        return self._error(404, None, "Discussion not found")


class HubServer:
    """Run a :class:`HubState` behind an HTTP server on 127.0.0.1 in a background thread."""

    def __init__(self, port: int = 0) -> None:
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
