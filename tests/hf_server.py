"""A loopback HTTP server for offline download tests.

It serves plain files (``/<path>``) and the part of the Hugging Face hub protocol that
``hf_hub_download`` uses: ``HEAD``/``GET /<org>/<repo>/resolve/<revision>/<filename>`` answered with
``X-Repo-Commit``, ``ETag`` (the file's SHA-256) and ``Content-Length``; a missing repository or
file is a ``404`` with ``X-Error-Code`` (``RepoNotFound`` / ``EntryNotFound``). A file can be made
to arrive slowly, to be cut off mid-transfer, to come gzip-compressed, or with headers of the test's choosing.

    with LoopbackServer() as server:
        server.add_file("/release/w-0123456789.pth", data)
        server.add_hub_file("org/repo", "model.safetensors", data)
        os.environ["HF_ENDPOINT"] = server.url
"""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (a refused download, a cut-off test) are expected here, not reported."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LoopbackServer:
    """Threaded HTTP server on ``127.0.0.1`` (a free port); use as a context manager."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hub: dict[str, dict[tuple[str, str], bytes]] = {}  # repo_id -> {(revision, filename): data}
        self.cut_off: set[str] = set()  # paths sent only half, then the connection is dropped
        self.seconds_per_file = 0.0  # spread every body over this long
        self.headers: dict[str, dict[str, str]] = {}  # path -> headers sent instead of the computed ones
        self.gzipped: set[str] = set()  # paths whose body is sent gzip-compressed (Content-Encoding: gzip)
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path) -> count
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns the full URL."""
        self.files[path] = data
        return self.url + path

    def add_hub_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> None:
        self.hub.setdefault(repo_id, {})[(revision, filename)] = data

    def gets(self, path: str) -> int:
        return self.requests[("GET", path)]

    def __enter__(self) -> LoopbackServer:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(self.path.split("?", 1)[0])
            server.requests[(self.command, path)] += 1
            match = _RESOLVE.match(path)
            if match is None:
                data = server.files.get(path)
                return self._send(data, path, body) if data is not None else self._error(404, None)
            repo, revision, filename = match["repo"], match["revision"], match["filename"]
            if repo not in server.hub:
                return self._error(404, "RepoNotFound")
            commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
            data = server.hub[repo].get((revision, filename))
            if data is None:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit})
            self._send(data, path, body, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})

        def _error(self, status: int, code: str | None, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {**({"X-Error-Code": code} if code else {}), **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send(self, data: bytes, path: str, body: bool, headers: dict[str, str] | None = None) -> None:
            self.send_response(200)
            if path in server.gzipped:
                data = gzip.compress(data)
                headers = {**(headers or {}), "Content-Encoding": "gzip"}
            sent = {**(headers or {}), "Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
            for key, value in {**sent, **server.headers.get(path, {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if not body:
                return
            payload = data[: len(data) // 2] if path in server.cut_off else data
            chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)] or [b""]
            for chunk in chunks:
                self.wfile.write(chunk)
                time.sleep(server.seconds_per_file / len(chunks))
            if path in server.cut_off:
                self.wfile.flush()
                self.close_connection = True

    return Handler
