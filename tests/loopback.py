"""What the loopback HTTP servers of the tests share (tests/urlserver.py, tests/fakehub.py).

`LoopbackServer` runs a real HTTP/1.1 `ThreadingHTTPServer` on 127.0.0.1 (a free port)
in a daemon thread, with an optional safety timer that stops it after `lifetime`
seconds, a request log (`requests`: `(method, path, range_header)`), per-key fault
injection (`Fault`: an HTTP status, or a body cut after N bytes, for the next N
matching requests) and a delay per body chunk (`chunk_delay`). `stop()` also drops
the connections clients keep alive, so a stopped server really refuses requests.

`LoopbackHandler` is the request handler base: quiet, tracks its connection for
`stop()`, logs each HEAD/GET and passes it to `serve(method, path)`; `send_body`
writes a body in chunks and can cut it short. A subclass of `LoopbackServer` names
its handler class in `handler`; the handler reaches its server as `self.owner`.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Hashable, Iterable, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


@dataclass
class Fault:
    status: Optional[int] = None  # answer with this status...
    cut_after: Optional[int] = None  # ...or send only this many body bytes, then drop the connection
    times: Optional[int] = None  # for this many matching requests (None: always)
    methods: Tuple[str, ...] = ("HEAD", "GET")


class LoopbackHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def owner(self) -> "LoopbackServer":
        return self.server.owner  # set by LoopbackServer.start

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.owner._lock:
                self.owner._connections.discard(self.connection)

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.owner._lock:
            self.owner.requests.append((method, path, self.headers.get("Range")))
        self.serve(method, path)

    def serve(self, method: str, path: str) -> None:
        """Answer one logged HEAD or GET of `path` (unquoted, without the query)."""
        raise NotImplementedError

    def send_body(self, body: bytes, cut_after: Optional[int] = None) -> None:
        """Write `body` (its headers are sent) in chunks, or only its first `cut_after` bytes and then
        drop the connection."""
        limit = len(body) if cut_after is None else min(cut_after, len(body))
        sent = 0
        try:
            while sent < limit:
                piece = body[sent:min(sent + CHUNK, limit)]
                self.wfile.write(piece)
                sent += len(piece)
                if self.owner.chunk_delay:
                    self.wfile.flush()
                    time.sleep(self.owner.chunk_delay)
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


class LoopbackServer:
    """The server. `start()` / `stop()` (or a context manager); `url` is its base URL.

    `lifetime` (seconds, None for none) bounds how long it may outlive a test that forgets to stop it.
    """

    handler: type = LoopbackHandler
    thread_name = "loopback"

    def __init__(self, lifetime: Optional[float] = None) -> None:
        self._lock = threading.Lock()
        self._connections: set = set()
        self._faults: Dict[Hashable, List[Fault]] = {}
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.chunk_delay = 0.0
        self.lifetime = lifetime
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None

    # ------------------------------------------------------------------ control

    def start(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self._server.owner = self
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        if self.lifetime is not None:
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
        # Clients keep HTTP/1.1 connections alive: close those too, or a stopped server still answers.
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, f"start() the {type(self).__name__} first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults

    def _add_fault(self, key: Hashable, fault: Fault) -> None:
        with self._lock:
            self._faults.setdefault(key, []).append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, keys: Iterable[Hashable], method: str) -> Optional[Fault]:
        """The first fault under `keys` (in order) that matches `method` and has uses left; uses one."""
        with self._lock:
            for key in keys:
                for fault in self._faults.get(key, []):
                    if method in fault.methods and (fault.times is None or fault.times > 0):
                        if fault.times is not None:
                            fault.times -= 1
                        return fault
        return None
