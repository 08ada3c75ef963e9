"""A real uvicorn server (TLS, loopback, an ephemeral port) on an engine, in a thread,
and an httpx client that trusts only its certificate."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cloudlet.api.app import create_app
from cloudlet.api.server import https_server
from cloudlet.api.tls import server_cert
from cloudlet.engine.engine import Engine


@dataclass
class Api:
    url: str
    cert: Path
    app: Any

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=pinned(self.cert), headers=headers)


def pinned(cert: Path) -> ssl.SSLContext:
    """Trust exactly this self-signed certificate (what a client pins)."""
    return ssl.create_default_context(cafile=str(cert))


def wait_for(condition: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def running_api(engine: Engine) -> Iterator[Api]:
    cert = server_cert(engine.paths.home / "api")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    app = create_app(engine)
    server = https_server(app, cert)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="the server to start")
        yield Api(f"https://127.0.0.1:{port}", cert.cert, app)
    finally:
        server.should_exit = True
        app.state.streams.close()
        thread.join(15)
        app.state.runner.shutdown(10)
        sock.close()
