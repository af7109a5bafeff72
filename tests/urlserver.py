"""A loopback file server standing in for GitHub releases / Zenodo, for tests of hub.py's URL path.

A real HTTP/1.1 server on 127.0.0.1 in a background thread that serves published
bytes at fixed paths, with `Content-Length`, `Accept-Ranges` and `Range: bytes=N-`
answered by 206 + `Content-Range` (how an interrupted download resumes), 416 for a
range past the end, and 302 redirects (GitHub release assets redirect to a storage host).

Faults, per path, like tests/fakehub.py: an HTTP status for the next N requests
(`fail`), the body cut after N bytes (`cut`), Range headers ignored (`ignore_range`:
a 200 with the whole file, as some servers do), and a delay per chunk (`chunk_delay`)
so that two clients overlap. Every request is logged in `requests` as
`(method, path, range_header)`.

Bounded: it listens on loopback only, each connection times out after a few
seconds, and the server stops itself after `lifetime` seconds even if a test forgets to.
The server machinery (thread, lifetime, stop, connection tracking) is tests/loopback.py's.

    with FileServer() as srv:
        url = srv.publish("/releases/v1/vocals-1234abcd.pth", data)
        srv.cut("/releases/v1/vocals-1234abcd.pth", after=1000)
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from loopback import Fault, LoopbackHandler, LoopbackServer


class _Handler(LoopbackHandler):
    timeout = 10  # a stuck client cannot hold a server thread for long

    def serve(self, method: str, path: str) -> None:
        srv = self.owner
        rng = self.headers.get("Range")
        with srv._lock:
            target = srv._redirects.get(path)
            data = srv._files.get(path)
            no_range = path in srv._no_range
        if target is not None:
            return self._reply(302, b"", {"Location": srv.url + target})
        fault = srv._take_fault([path], method)
        if fault is not None and fault.status is not None:
            return self._reply(fault.status, b"injected failure\n", {})
        if data is None:
            return self._reply(404, b"not found\n", {})
        start, status, body = 0, 200, data
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        m = re.match(r"bytes=(\d+)-$", (rng or "").strip())
        if m and method == "GET" and not no_range:
            start = int(m[1])
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start:]
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._reply(status, body if method == "GET" else b"", headers, length=len(body),
                    cut_after=fault.cut_after if fault is not None else None)

    def _reply(self, status: int, body: bytes, headers: Dict[str, str], length: Optional[int] = None,
               cut_after: Optional[int] = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.send_body(body, cut_after)


class FileServer(LoopbackServer):
    """The server. `start()` / `stop()` (or a context manager); `url` is its base URL."""

    handler = _Handler
    thread_name = "urlserver"

    def __init__(self, lifetime: float = 120.0) -> None:
        super().__init__(lifetime=lifetime)
        self._files: Dict[str, bytes] = {}
        self._redirects: Dict[str, str] = {}
        self._no_range: set = set()

    # ------------------------------------------------------------------ content

    def publish(self, path: str, data: bytes) -> str:
        """Serve `data` at `path` (starting with '/'); return its full URL."""
        with self._lock:
            self._files[path] = bytes(data)
        return self.url + path

    def redirect(self, path: str, to: str) -> str:
        """Answer requests for `path` with a 302 to `to` (a path on this server); return `path`'s URL."""
        with self._lock:
            self._redirects[path] = to
        return self.url + path

    def ignore_range(self, path: str) -> None:
        """Answer Range requests for `path` with a 200 and the whole file."""
        with self._lock:
            self._no_range.add(path)

    # ------------------------------------------------------------------ faults

    def fail(self, path: str, status: int = 500, times: Optional[int] = None,
             methods: Tuple[str, ...] = ("HEAD", "GET")) -> None:
        self._add_fault(path, Fault(status=status, times=times, methods=methods))

    def cut(self, path: str, after: int, times: Optional[int] = 1) -> None:
        """Send only `after` body bytes of the next `times` GETs of `path`, then drop the connection."""
        self._add_fault(path, Fault(cut_after=after, times=times, methods=("GET",)))

    def gets(self, path: str) -> List[Optional[str]]:
        """The Range header (or None) of every GET of `path`, in order."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]
