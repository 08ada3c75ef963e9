"""The host ends of a process VM's virtio-serial ports: unix sockets QEMU connects to.

cloudlet listens before QEMU starts and QEMU connects as a client while it starts,
so every port is connected before the guest can open it (a guest reading a port
whose host end is not connected would see EOF at once).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from cloudlet.errors import CloudletError


class Listener:
    """One listening socket; ``accept`` hands back QEMU's connection."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock.bind(str(path))
        self._sock.listen(1)

    def accept(self, timeout: float) -> socket.socket:
        self._sock.settimeout(timeout)
        try:
            conn, _ = self._sock.accept()
        except TimeoutError:
            raise CloudletError(
                f"QEMU did not connect to the {self.name} channel", hint="see the VM's qemu.log"
            ) from None
        finally:
            self.close()
        conn.settimeout(None)
        return conn

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Channels:
    """Named listeners in one directory; after QEMU starts, the connected sockets."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.listeners: dict[str, Listener] = {}
        try:
            for index, name in enumerate(names):
                self.listeners[name] = Listener(name, directory / f"c{index}.sock")
        except BaseException:
            self.close()
            raise
        self.connected: dict[str, socket.socket] = {}

    def path(self, name: str) -> Path:
        return self.listeners[name].path

    def accept_all(self, timeout: float = 10.0) -> dict[str, socket.socket]:
        for name, listener in self.listeners.items():
            self.connected[name] = listener.accept(timeout)
        return self.connected

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        for conn in self.connected.values():
            with contextlib.suppress(OSError):
                conn.close()
