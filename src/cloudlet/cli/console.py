"""Attach the terminal to a VM's serial console socket; Ctrl-] detaches."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import termios
import tty
from pathlib import Path

DETACH_BYTE = b"\x1d"  # Ctrl-]
DETACH_KEY = "Ctrl-]"


def attach(socket_path: Path) -> None:
    """Relay bytes both ways until the user detaches, stdin ends, or the VM goes away."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    stdin_fd = sys.stdin.fileno()
    stdout_fd = sys.stdout.fileno()
    is_tty = os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if is_tty else None
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(stdin_fd, selectors.EVENT_READ)
    try:
        if is_tty:
            tty.setraw(stdin_fd)
        sock.sendall(b"\r")  # wake the shell so the user sees a prompt
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    data = sock.recv(65536)
                    if not data:
                        return
                    os.write(stdout_fd, data)
                else:
                    data = os.read(stdin_fd, 4096)
                    if not data:
                        return
                    if DETACH_BYTE in data:
                        before = data.split(DETACH_BYTE, 1)[0]
                        if before:
                            sock.sendall(before)
                        return
                    sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        selector.close()
        with contextlib.suppress(OSError):
            sock.close()
