"""Model files from the Hugging Face Hub: download, cache, verify, remove.

Everything goes through `huggingface_hub` (no HTTP of our own), so the standard
cache layout and its environment variables apply: `HF_HOME` / `HF_HUB_CACHE`
(where), `HF_ENDPOINT` (which server), `HF_HUB_OFFLINE` (no network). They are
read at call time, not at import time, so a process can change them.

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
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .errors import DownloadError, OfflineError
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
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


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


def _read_stamps(blob: Path) -> Dict[str, Any]:
    try:
        data = json.loads(_stamp_path(blob).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(blob: Path, key: str, value: Any) -> None:
    """Remember a verified blob; best effort (a read-only cache just means re-hashing)."""
    stamps = _read_stamps(blob)
    stamps[key] = value
    target = _stamp_path(blob)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".unmix-verified.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(stamps, fh)
        os.replace(tmp, target)  # atomic: concurrent writers never leave a torn file
    except OSError:
        pass


def verify_file(path: Union[str, Path], file: FileSpec, expected_size: Optional[int] = None) -> Optional[str]:
    """Why the cached `path` is not the whole, right file; None when it is.

    Checks, cheapest first: size (registry pin and Hub metadata), safetensors
    header, then the content hash (registry sha256 pin, else the Hub hash that
    names the blob). A hash already verified for this blob, size and mtime is
    not recomputed.
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
    if file.sha256:
        algorithm, want_hash = "sha256", file.sha256
    elif _SHA256_RE.match(etag):
        algorithm, want_hash = "sha256", etag
    elif _GIT_SHA1_RE.match(etag):
        algorithm, want_hash = "git-sha1", etag
    else:
        return None  # no hash known (e.g. a cache without symlinks): size and header checks only

    fingerprint = [st.st_size, st.st_mtime_ns, st.st_ino, algorithm, want_hash]
    key = blob.name
    if _read_stamps(blob).get(key) == fingerprint:
        return None
    got = _hash_file(blob, algorithm)
    if got != want_hash:
        label = "sha256" if algorithm == "sha256" else "git blob id"
        return f"its {label} is {got[:12]}…, expected {want_hash[:12]}…"
    _write_stamp(blob, key, fingerprint)
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


def fetch(spec: ModelSpec, *, offline: bool = False, progress: Progress = None, force: bool = False) -> Path:
    """Make every file of `spec` available locally and verified; return their folder.

    Args:
        spec: the registry entry.
        offline: never touch the network (also implied by HF_HUB_OFFLINE).
        progress: None (silent), a callback `progress(filename, done_bytes,
            total_bytes)`, or a tqdm-like class huggingface_hub instantiates per file.
        force: download again even when cached.

    Returns:
        the snapshot folder; `folder / name` exists for every name in `spec.files`.

    Raises:
        OfflineError: offline and a file is not cached (or is damaged).
        DownloadError: the Hub failed (404, 5xx, unreachable) with no usable cache.
    """
    offline = is_offline(offline)
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


# --------------------------------------------------------------------------- cache queries


def _storage_folder(spec: ModelSpec) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=spec.repo, repo_type="model")


def cached_files(spec: ModelSpec) -> Dict[str, Optional[Path]]:
    """File name -> cached path at the spec's revision (None if not cached). No network, no hashing."""
    from huggingface_hub import try_to_load_from_cache

    found: Dict[str, Optional[Path]] = {}
    for file in spec.files:
        hit = try_to_load_from_cache(spec.repo, file.name, cache_dir=str(cache_dir()), revision=spec.revision)
        found[file.name] = Path(hit) if isinstance(hit, str) and os.path.exists(hit) else None
    return found


def cache_state(spec: ModelSpec) -> str:
    """"yes" (every file cached), "partial" or "no"."""
    hits = cached_files(spec).values()
    n = sum(h is not None for h in hits)
    return "yes" if n == len(spec.files) else ("partial" if n else "no")


def cached_size(spec: ModelSpec) -> int:
    """Bytes the spec's cached files take (0 if none)."""
    return sum(os.path.getsize(p) for p in cached_files(spec).values() if p is not None)


def remove(spec: ModelSpec) -> int:
    """Delete this model's files from the cache (every cached revision); return the bytes freed.

    Only the entry's own files go: a repo shared with other entries keeps theirs.
    The repo's cache folder is removed once no snapshot file is left in it.
    """
    storage = _storage_folder(spec)
    snapshots = storage / "snapshots"
    if not snapshots.is_dir():
        return 0
    wanted = set(spec.filenames)
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
