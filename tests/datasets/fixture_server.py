"""A dataset host on 127.0.0.1 for the tests: serves a folder, honours Range, and misbehaves on request.

``faults[path]`` is a queue of what the next requests of ``path`` get instead of the file:
``truncate`` (the full Content-Length is announced, half the bytes are sent, the connection closes),
``corrupt`` (the right length, wrong bytes), ``missing`` (404) or ``stall`` (half the bytes are sent, then
nothing until ``release()``: a transfer in progress, for a signal to land in). Every request is logged with its
Range header, so a test can see that an interrupted download resumed instead of starting over.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path


class FixtureServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[tuple[str, str | None]] = []
        self.stalled = threading.Event()  # set once a ``stall`` fault has sent its first half
        self._released = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, path: str, *faults: str) -> None:
        self.faults[path.lstrip("/")].extend(faults)

    def release(self) -> None:
        """Let every stalled transfer (and any later ``stall``) go on at once."""
        self._released.set()

    def requests_of(self, path: str) -> list[str | None]:
        return [ranged for requested, ranged in self.requests if requested == path.lstrip("/")]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?")[0].lstrip("/")
                ranged = self.headers.get("Range")
                server.requests.append((path, ranged))
                file = server.root / path
                fault = server.faults[path].popleft() if server.faults[path] else None
                if fault == "missing" or not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                start = int(ranged.split("=")[1].split("-")[0]) if ranged else 0
                if start >= len(body) and ranged:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if ranged else 200)
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if fault == "truncate":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "stall":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    server.stalled.set()
                    server._released.wait(60)
                    with contextlib.suppress(OSError):  # the client may have gone meanwhile
                        self.wfile.write(payload[len(payload) // 2:])
                    return
                if fault == "corrupt":
                    payload = bytes(reversed(payload))
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def serve(root: Path) -> Iterator[FixtureServer]:
    with FixtureServer(root) as server:
        yield server


def closed_port_url() -> str:
    """A 127.0.0.1 URL nobody listens on (the dataset host is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
