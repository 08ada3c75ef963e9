"""``cloudlet serve``: the API over HTTPS with uvicorn, until SIGTERM or SIGINT.

The socket is bound here (so a taken port is one clear error), the certificate is
made or reused in the state directory, and on a stop the running operations that can
be cancelled are, before the process exits.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudlet.api.tls import ServerCert, server_cert
from cloudlet.engine.engine import Engine
from cloudlet.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``ADDR:PORT`` (``[V6]:PORT`` for IPv6) with an IP address and a port 1-65535."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    try:
        ipaddress.ip_address(host)
        number = int(port) if port.isdigit() else -1
    except ValueError:
        number = -1
    if not sep or not 1 <= number <= 65535:
        raise InvalidInput(
            f"invalid listen address {text[:60]!r}",
            hint="give an IP address and a port, such as 0.0.0.0:8443 or [::1]:8443",
        )
    return Listen(host, number)


def bind(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise Conflict(
            f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
            hint="choose another address or port, or stop what uses it",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def https_server(app: FastAPI, cert: ServerCert) -> uvicorn.Server:
    """uvicorn serving ``app`` over TLS with ``cert`` (run it with a bound socket)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(engine: Engine, listen: Listen, *, ready: Callable[[Listen, ServerCert], None]) -> None:
    """Serve until a signal; ``ready`` hears the address and certificate once bound."""
    from cloudlet.api.app import create_app

    cert = server_cert(engine.paths.home / "api")
    sock = bind(listen)
    app = create_app(engine)
    server = https_server(app, cert)

    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True
        app.state.streams.close()  # event streams would hold the stop for its timeout

    # uvicorn handles both signals while it serves, then restores these and raises the
    # signal again: a handler of ours (not the default, which kills) lets the operations
    # be wound down and the process exit 0.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    ready(listen, cert)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.runner.shutdown()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
