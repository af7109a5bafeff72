"""A loopback look-alike of the Hugging Face Hub, for tests of the real download path.

A real HTTP/1.1 server on 127.0.0.1 in a background thread, serving what
huggingface_hub (2.x) asks for when it downloads model files:

* `HEAD|GET /{repo}/resolve/{revision}/{path}` with `X-Repo-Commit`, `ETag`
  (git blob sha1 for small files; for "LFS" files `X-Linked-Etag` = sha256 and
  `X-Linked-Size`), `Content-Length`, `Accept-Ranges`, and `Range: bytes=N-`
  answered with 206 + `Content-Range` (how an interrupted download resumes);
* `GET /api/models/{repo}[/revision/{revision}]` (repo info with `sha` and
  `siblings`) and `GET /api/models/{repo}/tree/{revision}` (file listing with
  sizes and LFS sha256), which `snapshot_download` uses;
* Hub-style 404s (`X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`).

Faults can be injected per file: an HTTP status for the next N requests
(`fail`), a connection dropped after N body bytes (`cut`), and a delay per
chunk (`chunk_delay`) to make downloads slow enough to overlap. Every request is
logged in `requests` as `(method, path, range_header)`.

Usage (see the `fake_hub` fixture in conftest.py, which also points HF_ENDPOINT
and HF_HOME at it):

    hub.add_repo("someone/Model", {"model.yaml": b"...", "abc.safetensors": data})
    hub.fail("someone/Model", "abc.safetensors", status=503, times=1)
    hub.cut("someone/Model", "abc.safetensors", after=10_000)
    hub.count("GET", "abc.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote

from loopback import Fault, LoopbackHandler, LoopbackServer

LFS_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pth", ".th", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    refs: Dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)  # commit -> files


class FakeHub(LoopbackServer):
    """The server. `start()` / `stop()` (or use as a context manager); `url` is its endpoint.

    No lifetime: the `fake_hub` fixture stops it; `stop()` makes a Hub that is down.
    """

    thread_name = "fakehub"

    def __init__(self) -> None:
        super().__init__()
        self._repos: Dict[str, _Repo] = {}
        self._commit_counter = 0

    # ------------------------------------------------------------------ content

    def add_repo(self, repo_id: str, files: Mapping[str, bytes], branch: str = "main") -> str:
        """Publish `files` as a new commit on `branch` of `repo_id`; return the commit sha."""
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            self._commit_counter += 1
            commit = hashlib.sha1(f"{repo_id}:{self._commit_counter}".encode()).hexdigest()
            repo.commits[commit] = dict(files)
            repo.refs[branch] = commit
            return commit

    def set_file(self, repo_id: str, name: str, data: bytes, branch: str = "main") -> str:
        """A new commit on `branch` that changes one file."""
        files = dict(self.files(repo_id, branch))
        files[name] = data
        return self.add_repo(repo_id, files, branch)

    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        repo = self._repos[repo_id]
        return repo.commits[repo.refs.get(revision, revision)]

    def commit(self, repo_id: str, branch: str = "main") -> str:
        return self._repos[repo_id].refs[branch]

    # ------------------------------------------------------------------ faults

    def fail(self, repo_id: str, filename: Optional[str] = None, status: int = 500,
             times: Optional[int] = None, methods: Sequence[str] = ("HEAD", "GET")) -> None:
        """Answer `status` to requests for `filename` (any file if None) of `repo_id`."""
        self._add_fault((repo_id, filename), Fault(status=status, times=times, methods=tuple(methods)))

    def cut(self, repo_id: str, filename: str, after: int, times: Optional[int] = 1) -> None:
        """Send only `after` body bytes of the next `times` GETs of the file, then drop the connection."""
        self._add_fault((repo_id, filename), Fault(cut_after=after, times=times, methods=("GET",)))

    def count(self, method: str, filename: str) -> int:
        """How many `method` requests were made for a file (any repo), Range or not."""
        return sum(1 for m, p, _ in self.requests if m == method and p.endswith("/" + filename))

    def _take_fault_for(self, repo_id: str, filename: Optional[str], method: str) -> Optional[Fault]:
        """A fault for this file first, then one for any file of the repo."""
        return self._take_fault(((repo_id, filename), (repo_id, None)), method)


_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?$")


class _Handler(LoopbackHandler):
    owner: FakeHub

    # ------------------------------------------------------------------ routing

    def serve(self, method: str, path: str) -> None:
        m = _RESOLVE_RE.match(path)
        if m:
            return self._resolve(method, m["repo"], unquote(m["rev"]), m["path"])
        m = _API_RE.match(path)
        if m and method == "GET":
            return self._api(m["repo"], m["kind"], unquote(m["rev"] or "main"))
        self._error(404, "Not Found", {})

    def _lookup(self, repo_id: str, rev: str) -> Tuple[Optional[str], Optional[Dict[str, bytes]]]:
        repo = self.owner._repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            return None, None
        commit = repo.refs.get(rev, rev)
        if commit not in repo.commits:
            self._error(404, "Revision not found", {"X-Error-Code": "RevisionNotFound"})
            return None, None
        return commit, repo.commits[commit]

    def _resolve(self, method: str, repo_id: str, rev: str, filename: str) -> None:
        fault = self.owner._take_fault_for(repo_id, filename, method)
        if fault is not None and fault.status is not None:
            return self._error(fault.status, "injected failure", {})
        commit, files = self._lookup(repo_id, rev)
        if files is None:
            return
        if filename not in files:
            return self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        data = files[filename]
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and method == "GET":
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if m:
                start = int(m[1])
                end = int(m[2]) if m[2] else len(data) - 1
                if start >= len(data):
                    return self._error(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                body = data[start:end + 1]
            else:
                body = data
        else:
            body = data
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        if filename.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
        else:
            self.send_header("ETag", f'"{git_blob_sha1(data)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "HEAD":
            return
        self.send_body(body, fault.cut_after if fault is not None else None)

    def _api(self, repo_id: str, kind: Optional[str], rev: str) -> None:
        fault = self.owner._take_fault_for(repo_id, None, "GET")
        if fault is not None and fault.status is not None:
            return self._error(fault.status, "injected failure", {})
        commit, files = self._lookup(repo_id, rev)
        if files is None:
            return
        if kind == "tree":
            payload = []
            for name, data in sorted(files.items()):
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                payload.append(entry)
        else:
            payload = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        self._json(200, payload, {"X-Repo-Commit": commit})

    # ------------------------------------------------------------------ replies

    def _json(self, status: int, payload, headers: Mapping[str, str]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, headers: Mapping[str, str]) -> None:
        self._json(status, {"error": message}, {**headers, "X-Error-Message": message})


FakeHub.handler = _Handler  # (defined after the server it answers for)


def closed_port_url() -> str:
    """An http://127.0.0.1:<port> where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------- published-layout repos


def fake_safetensors(n_values: int, seed: int = 0, metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """A valid safetensors file of random float16 values (not a loadable model)."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {"weight": rng.standard_normal(n_values).astype(np.float16)}
    meta = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": "{}"}
    meta.update(metadata or {})
    return save(tensors, metadata=meta)


def bag_yaml(sigs: Sequence[str], weights: Optional[Sequence[Sequence[float]]] = None,
             segment: Optional[float] = None) -> bytes:
    lines = [f"models: {list(sigs)!r}"]
    if weights is not None:
        lines.append(f"weights: {[list(map(float, w)) for w in weights]!r}")
    if segment is not None:
        lines.append(f"segment: {segment}")
    return ("\n".join(lines) + "\n").encode()


def publish_bag(hub: FakeHub, repo_id: str, name: str, sigs: Sequence[str] = ("0a1b2c3d",),
                n_values: int = 64 * 1024, files: Optional[Mapping[str, bytes]] = None) -> Dict[str, bytes]:
    """Publish a repo in the Demucs layout (`<name>.yaml` + `<sig>.safetensors`).

    `files` replaces the generated safetensors (e.g. real tiny models written with
    tests/demucs_export.py). Returns the published files.
    """
    content = {f"{name}.yaml": bag_yaml(sigs)}
    if files is not None:
        content.update(files)
    else:
        for i, sig in enumerate(sigs):
            content[f"{sig}.safetensors"] = fake_safetensors(n_values, seed=i)
    hub.add_repo(repo_id, content)
    return content


def registry_entry(name: str, repo_id: str, files: Mapping[str, bytes], *, pin_sha256: bool = False,
                   pin_size: bool = False, stems: Sequence[str] = ("drums", "bass", "other", "vocals"),
                   **fields) -> dict:
    """A registry entry (a dict for `write_registry`) that points at a published repo."""
    file_list = []
    for fname, data in files.items():
        item = {"name": fname}
        if pin_size:
            item["size"] = len(data)
        if pin_sha256:
            item["sha256"] = hashlib.sha256(data).hexdigest()
        file_list.append(item)
    entry = {
        "family": "demucs",
        "description": f"test model {name}",
        "repo": repo_id,
        "revision": "main",
        "files": file_list,
        "bag": f"{name}.yaml",
        "stems": list(stems),
        "sample_rate": 44100,
        "download_size": sum(len(d) for d in files.values()),
        "quantized": False,
        "licence": "test only",
    }
    entry.update(fields)
    return entry


def write_registry(path, entries: Mapping[str, dict], default: Optional[str] = None):
    """Write a registry YAML file with `entries` (name -> entry dict); return its path."""
    import yaml
    from pathlib import Path

    data: dict = {"version": 1, "models": dict(entries)}
    if default is not None:
        data["default"] = default
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(path)
