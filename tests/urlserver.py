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

    with FileServer() as srv:
        url = srv.publish("/releases/v1/vocals-1234abcd.pth", data)
        srv.cut("/releases/v1/vocals-1234abcd.pth", after=1000)
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


@dataclass
class _Fault:
    status: Optional[int] = None  # answer with this status...
    cut_after: Optional[int] = None  # ...or send only this many body bytes, then drop the connection
    times: Optional[int] = None  # for this many matching requests (None: always)
    methods: Tuple[str, ...] = ("HEAD", "GET")


class FileServer:
    """The server. `start()` / `stop()` (or a context manager); `url` is its base URL."""

    def __init__(self, lifetime: float = 120.0) -> None:
        self._files: Dict[str, bytes] = {}
        self._redirects: Dict[str, str] = {}
        self._no_range: set = set()
        self._faults: Dict[str, List[_Fault]] = {}
        self._lock = threading.Lock()
        self._connections: set = set()
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.chunk_delay = 0.0
        self.lifetime = lifetime
        self._server: Optional[ThreadingHTTPServer] = None
        self._timer: Optional[threading.Timer] = None

    # ------------------------------------------------------------------ control

    def start(self) -> "FileServer":
        srv = self

        class Handler(_Handler):
            server_ref = srv

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="urlserver", daemon=True).start()
        # A safety net: never outlive a test run by more than `lifetime` seconds.
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop kept-alive connections: later requests are refused."""
        if self._timer is not None:
            self._timer.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

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
        with self._lock:
            self._faults.setdefault(path, []).append(_Fault(status=status, times=times, methods=methods))

    def cut(self, path: str, after: int, times: Optional[int] = 1) -> None:
        """Send only `after` body bytes of the next `times` GETs of `path`, then drop the connection."""
        with self._lock:
            self._faults.setdefault(path, []).append(_Fault(cut_after=after, times=times, methods=("GET",)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def gets(self, path: str) -> List[Optional[str]]:
        """The Range header (or None) of every GET of `path`, in order."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def _take_fault(self, path: str, method: str) -> Optional[_Fault]:
        with self._lock:
            for fault in self._faults.get(path, []):
                if method in fault.methods and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a stuck client cannot hold a server thread for long
    server_ref: FileServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server_ref._lock:
            self.server_ref._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server_ref._lock:
                self.server_ref._connections.discard(self.connection)

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        srv = self.server_ref
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        with srv._lock:
            srv.requests.append((method, path, rng))
            target = srv._redirects.get(path)
            data = srv._files.get(path)
            no_range = path in srv._no_range
        if target is not None:
            return self._reply(302, b"", {"Location": srv.url + target})
        fault = srv._take_fault(path, method)
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
        limit = len(body) if cut_after is None else min(cut_after, len(body))
        sent = 0
        try:
            while sent < limit:
                piece = body[sent:min(sent + CHUNK, limit)]
                self.wfile.write(piece)
                sent += len(piece)
                if self.server_ref.chunk_delay:
                    self.wfile.flush()
                    time.sleep(self.server_ref.chunk_delay)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if limit < len(body):
            # Promised Content-Length bytes, sent fewer: the client sees a truncated body.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
