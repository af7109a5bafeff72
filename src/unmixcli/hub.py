"""Model files from the Hugging Face Hub or plain URLs: download, cache, verify, remove.

Hub files go through `huggingface_hub` (no HTTP of our own), so the standard
cache layout and its environment variables apply: `HF_HOME` / `HF_HUB_CACHE`
(where), `HF_ENDPOINT` (which server), `HF_HUB_OFFLINE` (no network). They are
read at call time, not at import time, so a process can change them.

Files with a `url` (GitHub releases, Zenodo: always hash-pinned in the registry)
go through `pooch.retrieve` with our own resuming downloader, into
`<UNMIX_CACHE or pooch.os_cache("unmix")>/urls/<model name>/<file name>`; that
folder is what `fetch` returns for such an entry (a Hub file of a mixed entry is
linked into it). See "plain URLs" below for what differs from the Hub path.

What this module adds on top of `hf_hub_download`:

* one metadata request per file before any download, which fails fast (not
  after half a minute of retries) and gives clear errors naming the repo and file;
* a check that each cached file is whole before it is loaded: its size, a
  safetensors header sanity check, and its content hash: the registry's sha256
  pin when there is one, else the Hub's own content hash, which names the cached
  blob (LFS sha256 for weights, git blob sha1 for small files). Hashes are
  remembered per blob (size + mtime), so a verified file is not re-hashed on
  every run. A damaged file is fetched again when online;
* typed errors (DownloadError, OfflineError) with a hint saying what to run.

A connection dropped mid-file is resumed by huggingface_hub with HTTP Range
requests (within the same call: the installed huggingface_hub 2.x deletes a
partial file once it gives up, so a later run starts that file over).
Concurrent processes fetching the same file are serialised by its per-blob
file lock. No rich / typer here: progress goes to a callback or a
tqdm-like class given by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import atomic
from .errors import CacheError, DownloadError, OfflineError
from .registry import FileSpec, ModelSpec

# progress(filename, done_bytes, total_bytes_or_None), called as bytes arrive.
ProgressCallback = Callable[[str, int, Optional[int]], None]
Progress = Union[None, ProgressCallback, type]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_STAMP_FILE = ".unmix-verified.json"
_HASH_BLOCK = 1 << 20


# --------------------------------------------------------------------------- settings


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def cache_dir() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub would compute it now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HUGGINGFACE_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def endpoint() -> Optional[str]:
    """`HF_ENDPOINT` if set (read now), else None (huggingface_hub's default)."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def is_offline(flag: bool = False) -> bool:
    """Offline when asked to, or when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set."""
    return bool(flag) or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def _network_errors() -> Tuple[type, ...]:
    """Transport-level exception classes of the HTTP client huggingface_hub uses.

    huggingface_hub 1.x+ uses httpx (2.x: its fork httpx2), older releases requests; we
    accept whichever is installed rather than pinning one client.
    """
    errors: List[type] = []
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        errors.extend(getattr(mod, n) for n in names if hasattr(mod, n))
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors.append(OfflineModeIsEnabled)
    return tuple(errors)


def _offline_hint(spec: ModelSpec) -> str:
    return f"run `unmix models download {spec.name}` while online (HF_HUB_OFFLINE unset), then retry"


# --------------------------------------------------------------------------- progress


class _CallbackBar:
    """The subset of the tqdm API huggingface_hub drives, forwarding to a callback."""

    def __init__(self, *args: Any, callback: ProgressCallback, filename: str, total: Optional[int] = None,
                 initial: int = 0, **kwargs: Any):
        self._callback = callback
        self._filename = filename
        self.total = total
        self.n = initial
        self.disable = False
        self._callback(filename, self.n, self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._callback(self._filename, self.n, self.total)

    def __enter__(self) -> "_CallbackBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset(self, total: Optional[int] = None) -> None:
        self.n = 0
        if total is not None:
            self.total = total


class _SilentBar(_CallbackBar):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.pop("callback", None)
        kwargs.pop("filename", None)
        super().__init__(*args, callback=lambda *a: None, filename="", **kwargs)


def _bar_class(progress: Progress, filename: str) -> Any:
    if progress is None:
        return _SilentBar  # the library never prints; the CLI passes a callback
    if isinstance(progress, type):
        return progress  # a tqdm(-like) class
    return functools.partial(_CallbackBar, callback=progress, filename=filename)


# --------------------------------------------------------------------------- verification


def _hash_file(path: Path, algorithm: str) -> str:
    if algorithm == "git-sha1":
        # The git blob id: sha1 over "blob <size>\0" + content (the Hub's ETag of non-LFS files).
        return _hashed(path, hashlib.sha1(b"blob %d\0" % path.stat().st_size)).hexdigest()
    return _hashed(path, hashlib.sha256()).hexdigest()


def _hashed(path: Path, h: Any) -> Any:
    """`h` updated with the bytes of `path`; the caller may go on feeding it (a resumed download)."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            h.update(block)
    return h


def _safetensors_problem(path: Path, size: int) -> Optional[str]:
    """Why `path` cannot be a whole safetensors file (None if its header adds up)."""
    if size < 8:
        return "too short for a safetensors file"
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > min(size - 8, 100 << 20):
            return "its safetensors header length is impossible (truncated or not safetensors)"
        try:
            header = json.loads(fh.read(header_len))
        except (ValueError, UnicodeDecodeError):
            return "its safetensors header is not valid JSON"
    if not isinstance(header, dict):
        return "its safetensors header is not a mapping"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return f"its safetensors header entry '{key}' has no data offsets"
    if 8 + header_len + end != size:
        return f"it holds {size} bytes but its safetensors header describes {8 + header_len + end}"
    return None


def _stamp_path(blob: Path) -> Path:
    # <cache>/models--owner--name/blobs/<etag> -> <cache>/models--owner--name/.unmix-verified.json
    return blob.parent.parent / _STAMP_FILE


def _read_stamps(stamp_file: Path) -> Dict[str, Any]:
    try:
        data = json.loads(stamp_file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(stamp_file: Path, key: str, value: Any) -> None:
    """Remember a verified file; best effort (a read-only cache just means re-hashing)."""
    stamps = _read_stamps(stamp_file)
    stamps[key] = value
    try:
        # atomic: concurrent writers never leave a torn file (one may lose the other's entry: a re-hash)
        with atomic.atomic_path(stamp_file, suffix=".tmp") as tmp:
            tmp.write_text(json.dumps(stamps))
    except OSError:
        pass


def _url_folder_of(path: Path, file: FileSpec) -> Path:
    """The model folder holding URL file `file` at `path` (`<folder>/<file.name>`)."""
    text = os.path.normpath(str(path))
    name = os.path.normpath(file.name)
    if text.endswith(os.sep + name):
        return Path(text[: -len(name) - 1])
    return Path(text).parent


def verify_file(path: Union[str, Path], file: FileSpec, expected_size: Optional[int] = None) -> Optional[str]:
    """Why the cached `path` is not the whole, right file; None when it is.

    Checks, cheapest first: size (registry pin and Hub metadata), safetensors
    header, then the content hash (registry sha256 or hash_prefix pin, else the
    Hub hash that names the blob). A hash already verified for this file, size
    and mtime is not recomputed (the stamp lives beside the Hub blobs, or in a
    URL model's folder).
    """
    path = Path(path)
    try:
        blob = Path(os.path.realpath(path))
        st = blob.stat()
    except OSError:
        return "it is missing"
    for want in (file.size, expected_size):
        if want is not None and st.st_size != want:
            return f"its size is {st.st_size} bytes, expected {want}"
    if file.name.endswith(".safetensors"):
        problem = _safetensors_problem(blob, st.st_size)
        if problem:
            return problem

    etag = blob.name.lower()
    if file.url is not None and file.trust_first:
        return _check_first_download(path, blob, st, file)
    if file.sha256:
        algorithm, want_hash = "sha256", file.sha256
    elif file.hash_prefix:
        algorithm, want_hash = "sha256-prefix", file.hash_prefix
    elif file.url is None and _SHA256_RE.match(etag):
        algorithm, want_hash = "sha256", etag
    elif file.url is None and _GIT_SHA1_RE.match(etag):
        algorithm, want_hash = "git-sha1", etag
    else:
        return None  # no hash known (e.g. a cache without symlinks): size and header checks only

    if file.url is not None:
        stamp_file, key = _url_folder_of(path, file) / _STAMP_FILE, file.name
    else:
        stamp_file, key = _stamp_path(blob), blob.name
    fingerprint = [st.st_size, st.st_mtime_ns, st.st_ino, algorithm, want_hash]
    if _read_stamps(stamp_file).get(key) == fingerprint:
        return None
    got = _hash_file(blob, "git-sha1" if algorithm == "git-sha1" else "sha256")
    if not got.startswith(want_hash):  # a full hash, or the torch.hub prefix of one
        label = "git blob id" if algorithm == "git-sha1" else "sha256"
        return f"its {label} is {got[:12]}…, expected {want_hash[:12]}…"
    _write_stamp(stamp_file, key, fingerprint)
    return None


def _check_first_download(path: Path, blob: Path, st: os.stat_result, file: FileSpec) -> Optional[str]:
    """A URL file with no published hash: the sha256 of its first complete download is recorded
    (beside the file, under `<name>@first`); every later use must match it."""
    stamp_file = _url_folder_of(path, file) / _STAMP_FILE
    stamps = _read_stamps(stamp_file)
    recorded = stamps.get(file.name + "@first")
    fingerprint = [st.st_size, st.st_mtime_ns, st.st_ino, "sha256-first", recorded]
    if recorded is not None and stamps.get(file.name) == fingerprint:
        return None
    got = _hash_file(blob, "sha256")
    if recorded is None:
        _write_stamp(stamp_file, file.name + "@first", got)
        recorded = got
    elif got != recorded:
        return (f"its sha256 is {got[:12]}…, not the {recorded[:12]}… of its first download "
                "(no hash is published for this file)")
    _write_stamp(stamp_file, file.name, [st.st_size, st.st_mtime_ns, st.st_ino, "sha256-first", recorded])
    return None


# --------------------------------------------------------------------------- fetching


def _describe_http(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return type(exc).__name__ + (f" ({exc})" if str(exc) else "")


def _where(spec: ModelSpec, filename: Optional[str] = None) -> str:
    at = f"{spec.repo}@{spec.revision}"
    return f"{at}/{filename}" if filename else at


def _metadata(spec: ModelSpec, file: FileSpec) -> Tuple[Any, Optional[Exception]]:
    """HEAD the file: (metadata, None), or (None, error) for a transient failure.

    Permanent failures (repo, revision or file not found) raise DownloadError now.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = hf_hub_url(spec.repo, file.name, revision=spec.revision, endpoint=endpoint())
    try:
        return get_hf_file_metadata(url, endpoint=endpoint()), None
    except RepositoryNotFoundError as exc:
        raise DownloadError(
            f"{spec.repo}: repository not found on the Hub ({_describe_http(exc)}) while fetching '{file.name}'",
            hint=f"check the 'repo' of model '{spec.name}' in {spec.source or 'the registry'}",
        ) from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(
            f"{spec.repo}: revision '{spec.revision}' not found ({_describe_http(exc)}) while fetching '{file.name}'",
            hint=f"check the 'revision' of model '{spec.name}' in {spec.source or 'the registry'}",
        ) from exc
    except RemoteEntryNotFoundError as exc:
        raise DownloadError(
            f"{_where(spec, file.name)}: file not found on the Hub ({_describe_http(exc)})",
            hint=f"check the 'files' of model '{spec.name}' in {spec.source or 'the registry'}",
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            raise DownloadError(
                f"{_where(spec, file.name)}: the Hub refused the request ({_describe_http(exc)})",
                hint="the repo may be private or gated; `hf auth login` gives huggingface_hub a token",
            ) from exc
        return None, exc  # 5xx, 408, 429: the Hub is unwell; a cached copy may still do
    except _network_errors() as exc:
        return None, exc


def _download(spec: ModelSpec, file: FileSpec, *, local_only: bool, force: bool, progress: Progress) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        spec.repo,
        file.name,
        revision=spec.revision,
        cache_dir=str(cache_dir()),
        endpoint=endpoint(),
        local_files_only=local_only,
        force_download=force,
        tqdm_class=_bar_class(progress, file.name),
    )


def _download_checked(spec: ModelSpec, file: FileSpec, *, offline: bool, local_only: bool, force: bool,
                      progress: Progress, unreachable: Optional[Exception]) -> str:
    """`_download`, with huggingface_hub's and the HTTP client's errors turned into ours."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return _download(spec, file, local_only=local_only, force=force, progress=progress)
    except LocalEntryNotFoundError as exc:
        if offline:
            raise OfflineError(
                f"model '{spec.name}' is not cached ('{file.name}' missing) and downloads are off (offline mode)",
                hint=_offline_hint(spec),
            ) from exc
        raise DownloadError(
            f"{_where(spec, file.name)}: cannot download ({_describe_http(unreachable or exc)}) and no cached copy",
            hint="check your network connection (and HF_ENDPOINT if set), then retry",
        ) from exc
    except HfHubHTTPError as exc:
        raise DownloadError(f"{_where(spec, file.name)}: download failed ({_describe_http(exc)})",
                            hint="retry later; the Hub may be down") from exc
    except _network_errors() as exc:
        raise DownloadError(f"{_where(spec, file.name)}: download interrupted ({_describe_http(exc)})",
                            hint="check your network connection, then retry") from exc
    except OSError as exc:  # e.g. huggingface_hub's size consistency check, a full disk
        raise DownloadError(f"{_where(spec, file.name)}: download failed ({exc})", hint="retry") from exc


def _fetch_one(spec: ModelSpec, file: FileSpec, *, offline: bool, force: bool, progress: Progress) -> Path:
    meta, unreachable = (None, None) if offline else _metadata(spec, file)
    expected_size = getattr(meta, "size", None)
    if meta is not None and file.sha256:
        served = (getattr(meta, "etag", None) or "").lower()
        if _SHA256_RE.match(served) and served != file.sha256:
            raise DownloadError(
                f"{_where(spec, file.name)}: the Hub serves a file whose sha256 ({served[:12]}…) differs from the"
                f" registry's pin ({file.sha256[:12]}…)",
                hint=f"the repo changed; pin a 'revision' for '{spec.name}' or update its sha256",
            )
    local_only = offline or unreachable is not None
    get = functools.partial(_download_checked, spec, file, offline=offline, local_only=local_only,
                            progress=progress, unreachable=unreachable)

    path = get(force=force and not local_only)
    problem = verify_file(path, file, expected_size)
    if problem is None:
        return Path(path)
    if local_only:
        cls = OfflineError if offline else DownloadError
        raise cls(
            f"cached file of model '{spec.name}' is damaged: {problem}",
            path=path,
            hint=_offline_hint(spec) if offline else "check your network connection, then retry to fetch it again",
        )
    # Online: the cached copy is damaged (truncated, overwritten...): fetch it again.
    path = get(force=True)
    problem = verify_file(path, file, expected_size)
    if problem is not None:
        raise DownloadError(
            f"{_where(spec, file.name)}: the downloaded file fails its check: {problem}",
            path=path,
            hint=f"the Hub's file does not match the registry entry of '{spec.name}'; update its size/sha256 pins",
        )
    return Path(path)


def _fetch_hub_snapshot(spec: ModelSpec, *, offline: bool, progress: Progress, force: bool) -> Path:
    """`fetch` for an entry whose files all come from its Hub repo: the snapshot folder."""
    folders = set()
    for file in spec.files:
        path = _fetch_one(spec, file, offline=offline, force=force, progress=progress)
        # Strip the repo-relative file name to get the snapshot folder.
        folder = Path(str(path)[: -len(file.name)]) if str(path).endswith(file.name) else path.parent
        folders.add(Path(os.path.normpath(folder)))
    if len(folders) != 1:
        raise DownloadError(
            f"{_where(spec)}: the files come from different commits (the repo changed while downloading)",
            hint=f"run `unmix models download {spec.name}` again",
        )
    return folders.pop()


def fetch(spec: ModelSpec, *, offline: bool = False, progress: Progress = None, force: bool = False) -> Path:
    """Make every file of `spec` available locally and verified; return their folder.

    Args:
        spec: the registry entry.
        offline: never touch the network (also implied by HF_HUB_OFFLINE).
        progress: None (silent), a callback `progress(filename, done_bytes,
            total_bytes)`, or a tqdm-like class instantiated once per file (per try).
        force: download again even when cached (ignored offline).

    Returns:
        one folder; `folder / name` exists for every name in `spec.files`. For a
        Hub-only entry it is the Hub snapshot folder; for an entry with URL files it
        is `url_cache_dir()/urls/<name>` (its Hub files, if any, linked in).

    Raises:
        OfflineError: offline and a file is not cached (or is damaged).
        DownloadError: a download failed (404, 5xx, unreachable, wrong hash) with no usable cache.
    """
    offline = is_offline(offline)
    if all(f.url is None for f in spec.files):
        return _fetch_hub_snapshot(spec, offline=offline, progress=progress, force=force)
    folder = _url_folder(spec)
    for file in spec.files:
        if file.url is not None:
            _fetch_url(spec, file, folder, offline=offline, force=force, progress=progress)
        else:
            # A Hub file of a mixed entry: the usual Hub path, then linked beside the URL files.
            path = _fetch_one(spec, file, offline=offline, force=force, progress=progress)
            _link_into(folder / file.name, path)
    return folder


# --------------------------------------------------------------------------- plain URLs
#
# Files with a `url` (GitHub releases, Zenodo) are fetched with `pooch.retrieve` and
# `_ResumingDownloader`. What differs from the Hub path, and why:
# * no request before using the cache: the registry's hash pin says what the bytes
#   must be, so a verified cached file is used without touching the network;
# * a dropped connection keeps its bytes in `.<name>.<pin>.partial` beside the
#   target (never under the final name); the next try, in the same call or a later
#   run, asks for the rest with `Range: bytes=N-` and starts over if the server answers 200;
# * 5xx, 408, 429 and dropped connections are retried a few times within one call;
#   404/410, other 4xx and a host that cannot be reached fail at once.
# Concurrent processes fetching the same file are serialised by a file lock.

URL_CACHE_ENV = "UNMIX_CACHE"
# Seconds to wait before each further try of one URL file within one call (1 + len tries in all).
_URL_RETRY_DELAYS: Tuple[float, ...] = (0.5, 2.0, 5.0)
_URL_TIMEOUT = (15.0, 60.0)  # seconds: (to connect, between two reads)
_URL_CHUNK = 1 << 16


def url_cache_dir() -> Path:
    """Where URL files are cached: `$UNMIX_CACHE` if set, else pooch's OS cache folder for "unmix"."""
    value = os.environ.get(URL_CACHE_ENV, "").strip()
    if value:
        return Path(os.path.expandvars(value)).expanduser()
    import pooch  # lazy: ~0.1 s to import, and only entries with URL files need it

    return Path(pooch.os_cache("unmix")).expanduser()


def _url_folder(spec: ModelSpec) -> Path:
    return url_cache_dir() / "urls" / spec.name


def _lock_path(spec: ModelSpec, file: FileSpec) -> Path:
    # Outside the model folder that loaders read (as huggingface_hub's .locks/); model names never start with ".".
    return url_cache_dir() / "urls" / ".locks" / spec.name / (file.name + ".lock")


def _partial_path(target: Path, file: FileSpec) -> Path:
    # The pin is part of the name, so bytes kept for an older pin (the registry changed) are never continued.
    pin = (file.sha256 or file.hash_prefix or "")[:16]
    stem = os.fsencode(target.name)[:96].decode(errors="ignore")  # stay under the 255-byte name limit
    return target.with_name(f".{stem}.{pin}.partial")


def _url_pin(file: FileSpec) -> Tuple[str, str]:
    return ("sha256", file.sha256) if file.sha256 else ("sha256-prefix", file.hash_prefix or "")


def _remember_verified(target: Path, file: FileSpec, digest: str) -> None:
    """Stamp a just-downloaded file as verify_file would, so it is not hashed again: its pin was
    checked while downloading (`digest`: the sha256 computed then). A file with no published
    hash gets `digest` as its first-download record, or, if one exists and differs, no stamp
    (verify_file then reports the mismatch)."""
    try:
        st = target.stat()
    except OSError:
        return
    stamp_file = _url_folder_of(target, file) / _STAMP_FILE
    if file.trust_first:
        if not digest:
            return
        recorded = _read_stamps(stamp_file).get(file.name + "@first")
        if recorded is None:
            _write_stamp(stamp_file, file.name + "@first", digest)
        elif recorded != digest:
            return
        algorithm, want = "sha256-first", digest
    else:
        algorithm, want = _url_pin(file)
    _write_stamp(stamp_file, file.name, [st.st_size, st.st_mtime_ns, st.st_ino, algorithm, want])


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it (requests wraps urllib3, which wraps the socket error)."""
    seen = set()
    todo = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None)])
        todo.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))


def _describe_transport(exc: BaseException) -> str:
    """The root cause of a transport error in a few words, e.g. "Connection refused"."""
    for cur in _exception_chain(exc):
        if isinstance(cur, OSError) and isinstance(cur.strerror, str) and cur.strerror:
            return cur.strerror
    m = re.search(r"\[Errno -?\d+\] ([^'\"\)\]]+)", str(exc))
    if m:
        return m[1].strip()
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    return type(exc).__name__


def _connect_failed(exc: BaseException) -> bool:
    """Whether the host was never reached (refused, unknown, connect timeout, TLS): not worth a retry."""
    import requests
    import urllib3.exceptions

    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    return any(isinstance(e, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
               for e in _exception_chain(exc))


def _content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """`bytes A-B/N` -> (A, N); `bytes */N` -> (None, N); unparsable -> (None, None)."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    return (int(m[1]) if m[1] else None), (int(m[2]) if m[2] != "*" else None)


class _Transient(Exception):
    """A failure worth another try (a 5xx, a dropped connection); the message says what happened."""


class _ResumingDownloader:
    """A pooch downloader, `downloader(url, output_file, pooch, check_only=False)`, that resumes.

    Bytes go to `partial`, kept beside the target across tries and runs: a try that
    breaks off leaves it, and the next one asks for the rest with `Range: bytes=<kept>-`.
    Only a complete file whose size and hash match the registry's pins is moved onto
    `output_file` (pooch's temporary file, which pooch then renames to the final name),
    so neither a partial nor a wrong file ever sits under the final name.
    """

    def __init__(self, spec: ModelSpec, file: FileSpec, partial: Path, *, progress: Progress = None):
        self.spec, self.file, self.partial, self.progress = spec, file, partial, progress
        self._got: Tuple[int, str] = (0, "")
        self.hint = f"check the 'url' of '{file.name}' in model '{spec.name}' ({spec.source or 'the registry'})"

    def __call__(self, url: str, output_file: Any, pooch: Any = None, check_only: bool = False) -> Optional[bool]:
        import requests

        from . import __version__

        with requests.Session() as session:
            session.headers["User-Agent"] = f"unmixcli/{__version__}"
            if check_only:
                try:
                    with session.head(url, allow_redirects=True, timeout=_URL_TIMEOUT) as r:
                        return r.status_code < 400
                except requests.exceptions.RequestException:
                    return False
            self._download(session, url)
        if hasattr(output_file, "write"):  # pooch also allows an open file
            with open(self.partial, "rb") as fh:
                shutil.copyfileobj(fh, output_file)
            atomic.discard(self.partial)
        else:
            os.replace(self.partial, output_file)
        return None

    def _download(self, session: Any, url: str) -> None:
        tries = len(_URL_RETRY_DELAYS) + 1
        attempt, restarted = 0, False
        while True:
            attempt += 1
            try:
                resumed = self._get(session, url)
            except _Transient as exc:
                if attempt >= tries:
                    raise DownloadError(
                        f"{url}: {exc} (gave up after {attempt} tries)",
                        hint="retry later; the bytes received so far are kept and the next try continues them",
                    ) from exc
                time.sleep(_URL_RETRY_DELAYS[attempt - 1])
                continue
            problem = self._problem()
            if problem is None:
                return
            atomic.discard(self.partial)
            if resumed and not restarted:
                restarted = True  # the bytes kept from an earlier try may be the bad part: once more from zero
                continue
            raise DownloadError(
                f"{url}: the downloaded file fails its check: {problem}",
                hint=f"the file at this URL is not the one pinned for '{self.spec.name}'; {self.hint}",
            )

    def _kept(self) -> int:
        try:
            kept = self.partial.stat().st_size
        except OSError:
            return 0
        if self.file.size is not None and kept > self.file.size:
            atomic.discard(self.partial)
            return 0
        return kept

    def _get(self, session: Any, url: str) -> bool:
        """One request: append what arrives to the partial file. Returns whether it continued kept bytes."""
        import requests

        start = self._kept()
        headers = {"Accept-Encoding": "identity"}  # offsets count the file's bytes, not a compressed stream's
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            response = session.get(url, headers=headers, stream=True, timeout=_URL_TIMEOUT, allow_redirects=True)
        except requests.exceptions.RequestException as exc:
            if _connect_failed(exc):
                raise DownloadError(f"{url}: cannot connect ({_describe_transport(exc)})",
                                    hint="check your network connection and the URL's host, then retry") from exc
            raise _Transient(f"no answer ({_describe_transport(exc)})") from exc
        with response:
            status = response.status_code
            if status == 416 and start:
                _, total = _content_range(response.headers.get("Content-Range"))
                if total == start:  # the kept bytes were already the whole file
                    self._got = (start, _hashed(self.partial, hashlib.sha256()).hexdigest())
                    return True
                atomic.discard(self.partial)
                raise _Transient("the server cannot continue the kept partial download (HTTP 416)")
            if status in (404, 410):
                raise DownloadError(f"{url}: not found (HTTP {status})", hint=self.hint)
            if status >= 500 or status in (408, 429):
                raise _Transient(f"server error (HTTP {status})" if status >= 500 else f"HTTP {status}")
            if status not in (200, 206):
                raise DownloadError(f"{url}: the server refused the request (HTTP {status})", hint=self.hint)
            length: Optional[int]
            try:
                length = int(response.headers["Content-Length"])
            except (KeyError, ValueError):
                length = None
            if status == 206:
                first, total = _content_range(response.headers.get("Content-Range"))
                if first != start:
                    atomic.discard(self.partial)
                    raise _Transient(f"the server sent bytes from {first}, not from {start}")
            else:  # a fresh download, or a server that ignores Range: start over
                start, total = 0, length
            if self.file.size is not None and total is not None and total != self.file.size:
                atomic.discard(self.partial)
                raise DownloadError(
                    f"{url}: the server's file has {total} bytes, the registry pins {self.file.size}",
                    hint=f"the file at this URL is not the one pinned for '{self.spec.name}'; {self.hint}",
                )
            hasher = _hashed(self.partial, hashlib.sha256()) if start else hashlib.sha256()
            done = start
            bar = _bar_class(self.progress, self.file.name)(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=self.file.name)
            with open(self.partial, "ab" if start else "wb") as fh, bar:
                try:
                    for chunk in response.iter_content(_URL_CHUNK):
                        fh.write(chunk)
                        hasher.update(chunk)
                        done += len(chunk)
                        bar.update(len(chunk))
                except requests.exceptions.RequestException as exc:
                    raise _Transient(f"truncated body: the connection broke after {done} of {total or '?'} bytes"
                                     f" ({_describe_transport(exc)})") from exc
            if total is not None and done < total:
                raise _Transient(f"truncated body: got {done} of {total} bytes")
            self._got = (done, hasher.hexdigest())
            return start > 0

    @property
    def digest(self) -> str:
        """The sha256 of the last complete download ("" before one)."""
        return self._got[1]

    def _problem(self) -> Optional[str]:
        size, digest = self._got
        if self.file.size is not None and size != self.file.size:
            return f"its size is {size} bytes, expected {self.file.size}"
        _, want = _url_pin(self.file)
        if not digest.startswith(want):
            return f"hash mismatch: its sha256 is {digest[:12]}…, expected {want[:12]}…"
        return None


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs every download at INFO level on stderr; the library never prints."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download_url(spec: ModelSpec, file: FileSpec, target: Path, *, keep_old: bool, progress: Progress) -> str:
    """Put the pinned file at `target` with pooch; a forced download keeps the old copy until the new one is in.
    Returns the sha256 computed while downloading."""
    import pooch

    old = None
    if os.path.lexists(target):  # pooch only downloads a file that is not there
        if keep_old:
            old = atomic.temporary_beside(target, ".old")
            os.replace(target, old)
        else:
            os.unlink(target)  # damaged: nothing worth keeping
    downloader = _ResumingDownloader(spec, file, _partial_path(target, file), progress=progress)
    try:
        with _quiet_pooch():
            pooch.retrieve(
                file.url,
                # pooch re-checks a full sha256 before its final rename; a hash prefix it cannot express
                # (the downloader has checked both kinds already).
                known_hash=f"sha256:{file.sha256}" if file.sha256 else None,
                fname=target.name,
                path=target.parent,
                downloader=downloader,
                progressbar=False,
            )
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        atomic.discard(old)
    return downloader.digest


def _fetch_url(spec: ModelSpec, file: FileSpec, folder: Path, *, offline: bool, force: bool,
               progress: Progress) -> Path:
    target = folder / file.name
    cached = os.path.lexists(target)
    if offline and not cached:
        raise OfflineError(
            f"model '{spec.name}' is not cached ('{file.name}' missing) and downloads are off (offline mode)",
            hint=_offline_hint(spec),
        )
    problem = None
    if cached and (offline or not force):
        problem = verify_file(target, file)
        if problem is None:
            return target
        if offline:
            raise OfflineError(f"cached file of model '{spec.name}' is damaged: {problem}", path=target,
                               hint=_offline_hint(spec))
    # Online, and the file is missing, damaged or to be downloaded again.
    from filelock import FileLock  # a dependency of huggingface_hub, which uses it the same way

    lock = _lock_path(spec, file)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            if not cached and not force and os.path.lexists(target) and verify_file(target, file) is None:
                return target  # another process fetched it while we waited for the lock
            digest = _download_url(spec, file, target, keep_old=cached and problem is None, progress=progress)
    except ValueError as exc:  # pooch's own sha256 check (ours runs first: only if the two disagree)
        raise DownloadError(f"{file.url}: the downloaded file fails pooch's hash check", hint=str(exc)) from exc
    except OSError as exc:  # a full disk, a read-only cache
        raise DownloadError(
            f"{file.url}: cannot store the download ({exc.strerror or exc})", path=exc.filename or target.parent,
            hint=f"check free disk space, and that the cache folder is writable (or set {URL_CACHE_ENV})",
        ) from exc
    _remember_verified(target, file, digest)
    problem = verify_file(target, file)  # size and safetensors header (the hash was checked while downloading)
    if problem is not None:
        raise DownloadError(f"{file.url}: the downloaded file fails its check: {problem}", path=target,
                            hint=f"the file at this URL does not fit the registry entry of '{spec.name}'")
    return target


def _link_into(link: Path, source: Path) -> None:
    """Make `link` show the Hub file `source`: a symlink to its blob (a hard link, else a copy, where that fails)."""
    blob = Path(os.path.realpath(source))
    try:
        if os.path.lexists(link):
            if os.path.samefile(link, blob):
                return
            st, bst = os.stat(link), os.stat(blob)
            if not os.path.islink(link) and st.st_size == bst.st_size and st.st_mtime_ns >= bst.st_mtime_ns:
                return  # the copy made last time (see below)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary_beside(link, ".link")
        try:
            os.unlink(tmp)  # free the unique name for the link itself
            try:
                os.symlink(blob, tmp)
            except OSError:  # e.g. Windows without the symlink privilege
                try:
                    os.link(blob, tmp)
                except OSError:  # another file system
                    shutil.copyfile(blob, tmp)
            os.replace(tmp, link)
        except BaseException:
            atomic.discard(tmp)
            raise
    except OSError as exc:
        raise DownloadError(f"cannot link '{link.name}' into the model folder ({exc.strerror or exc})",
                            path=link.parent, hint=f"check that {url_cache_dir()} is writable") from exc


# --------------------------------------------------------------------------- cache queries


def _storage_folder(spec: ModelSpec) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=spec.repo, repo_type="model")


def cache_folders(spec: ModelSpec) -> List[Path]:
    """Where this model's files are (or will be) cached: the Hugging Face cache for Hub
    files, the model's URL folder for URL files (either or both)."""
    folders = []
    if any(f.url is None for f in spec.files):
        folders.append(cache_dir())
    if any(f.url is not None for f in spec.files):
        folders.append(_url_folder(spec))
    return folders


def cached_files(spec: ModelSpec) -> Dict[str, Optional[Path]]:
    """File name -> cached path (None if not cached): Hub files at the spec's revision, URL
    files in the model's URL folder. No network, no hashing."""
    found: Dict[str, Optional[Path]] = {}
    hub_files = [f for f in spec.files if f.url is None]
    if hub_files:
        from huggingface_hub import try_to_load_from_cache

        for file in hub_files:
            hit = try_to_load_from_cache(spec.repo, file.name, cache_dir=str(cache_dir()), revision=spec.revision)
            found[file.name] = Path(hit) if isinstance(hit, str) and os.path.exists(hit) else None
    url_files = [f for f in spec.files if f.url is not None]
    if url_files:
        folder = _url_folder(spec)
        for file in url_files:
            path = folder / file.name
            found[file.name] = path if path.is_file() else None
    return {f.name: found[f.name] for f in spec.files}


def cache_state(spec: ModelSpec) -> str:
    """"yes" (every file cached), "partial" or "no"."""
    hits = cached_files(spec).values()
    n = sum(h is not None for h in hits)
    return "yes" if n == len(spec.files) else ("partial" if n else "no")


def cached_size(spec: ModelSpec) -> int:
    """Bytes the spec's cached files take (0 if none)."""
    return sum(os.path.getsize(p) for p in cached_files(spec).values() if p is not None)


def remove(spec: ModelSpec) -> int:
    """Delete this model's files from the cache; return the bytes freed.

    Hub files: every cached revision of the entry's own files (a repo shared with
    other entries keeps theirs); the repo's cache folder goes once no snapshot file
    is left in it. URL files: the model's folder under `url_cache_dir()`, with any
    partial downloads.

    Raises:
        DownloadError: the cache could not be changed (read-only, in use); names the path.
    """
    try:
        freed = 0
        hub_names = {f.name for f in spec.files if f.url is None}
        if hub_names and spec.repo is not None:
            freed += _remove_hub_files(spec, hub_names)
        if any(f.url is not None for f in spec.files):
            freed += _remove_url_folder(spec)
        return freed
    except OSError as exc:
        raise CacheError(
            f"cannot remove the cached files of model '{spec.name}' ({exc.strerror or exc})",
            path=exc.filename, hint="check that the cache folder is writable (HF_HOME, UNMIX_CACHE), then retry",
        ) from exc


def _remove_hub_files(spec: ModelSpec, wanted: set) -> int:
    storage = _storage_folder(spec)
    snapshots = storage / "snapshots"
    if not snapshots.is_dir():
        return 0
    blobs = set()
    freed = 0
    for snapshot in snapshots.iterdir():
        for name in wanted:
            pointer = snapshot / name
            if os.path.lexists(pointer):
                if pointer.is_symlink():
                    blobs.add(Path(os.path.realpath(pointer)))
                else:  # a cache without symlinks holds copies
                    freed += pointer.stat().st_size
                os.unlink(pointer)
    # A blob still referenced by another file (another entry's) stays.
    still_used = {
        Path(os.path.realpath(p)) for p in snapshots.rglob("*") if p.is_symlink()
    }
    for blob in blobs - still_used:
        if blob.exists():
            freed += blob.stat().st_size
            blob.unlink()
    if not any(p.is_file() or p.is_symlink() for p in snapshots.rglob("*")):
        shutil.rmtree(storage, ignore_errors=True)
        locks = cache_dir() / ".locks" / storage.name
        shutil.rmtree(locks, ignore_errors=True)
    return freed


def _remove_url_folder(spec: ModelSpec) -> int:
    folder = _url_folder(spec)
    if not folder.is_dir():
        return 0
    freed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            # Downloaded bytes (files, partial downloads); not links to Hub blobs, which stay, nor the stamps.
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and name != _STAMP_FILE:
                freed += st.st_size
    shutil.rmtree(folder)
    shutil.rmtree(url_cache_dir() / "urls" / ".locks" / spec.name, ignore_errors=True)
    return freed
