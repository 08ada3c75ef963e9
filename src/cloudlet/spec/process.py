"""What a user asks of a process VM: the program, its shares, copies and limits.

Pure parsing of ``--share HOST[:GUEST][:ro]``, ``--copy-in HOST:GUEST``,
``--copy-out GUEST:HOST`` and ``--timeout 10m``; nothing here touches the host
beyond resolving paths the user named.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from cloudlet.errors import InvalidInput

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ShareSpec:
    """A host directory shared live into the guest (virtiofs)."""

    host: Path
    guest: str
    read_only: bool = False


@dataclass(frozen=True)
class CopySpec:
    """A copy made once: host to guest before the program, guest to host after it."""

    host: Path
    guest: str


@dataclass(frozen=True)
class ProcessSpec:
    """Everything ``cloudlet run`` was asked for, validated."""

    image: str
    argv: tuple[str, ...]
    cpus: int = 1
    memory: int = 512 * 1024 * 1024
    name: str | None = None
    arch: str | None = None
    shares: tuple[ShareSpec, ...] = ()
    copy_in: tuple[CopySpec, ...] = ()
    copy_out: tuple[CopySpec, ...] = ()
    network: str = "none"
    sandbox: bool = False
    keep: bool = False
    boot: bool = False
    tty: bool = False
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    timeout: float | None = None
    terminal_size: tuple[int, int] = field(default=(24, 80))


def guest_path(text: str, what: str) -> str:
    """An absolute, normalised guest path; the guest's root itself is refused."""
    if not text.startswith("/"):
        raise InvalidInput(f"{what} {text!r} is not an absolute guest path", hint="start it with /")
    if "\0" in text or "\n" in text:
        raise InvalidInput(f"{what} {text!r} contains a NUL or newline", hint="rename it")
    norm = posixpath.normpath(text)
    if norm in ("/", "//"):
        raise InvalidInput(f"{what} cannot be the guest's root /", hint="name a directory in it")
    return norm


def parse_share(text: str, cwd: Path) -> ShareSpec:
    """``HOST[:GUEST][:ro|rw]``; GUEST defaults to the host directory's absolute path."""
    parts = text.split(":")
    read_only = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) > 2 or not parts[0]:
        raise InvalidInput(f"share {text!r} is not HOST[:GUEST][:ro]", hint="such as .:/work:ro")
    host = (cwd / parts[0]).resolve()
    if not host.is_dir():
        raise InvalidInput(
            f"share {text!r}: {host} is not a directory", hint="share a directory that exists"
        )
    guest = guest_path(
        parts[1] if len(parts) == 2 and parts[1] else str(host), "the share's guest path"
    )
    return ShareSpec(host=host, guest=guest, read_only=read_only)


def parse_copy_in(text: str, cwd: Path) -> CopySpec:
    """``HOST:GUEST``: HOST (a file or directory) is copied to GUEST before the program."""
    host_text, sep, guest = text.rpartition(":")
    if not sep or not host_text or not guest:
        raise InvalidInput(f"copy-in {text!r} is not HOST:GUEST", hint="such as ./data:/data")
    host = (cwd / host_text).resolve()
    if not host.exists():
        raise InvalidInput(f"copy-in {text!r}: {host} does not exist", hint="check the path")
    if not (host.is_file() or host.is_dir()):
        raise InvalidInput(
            f"copy-in {text!r}: {host} is not a file or directory",
            hint="copy a file or directory",
        )
    return CopySpec(host=host, guest=guest_path(guest, "the copy-in guest path"))


def parse_copy_out(text: str, cwd: Path) -> CopySpec:
    """``GUEST:HOST``: GUEST is copied back to HOST after the program ends."""
    guest, sep, host_text = text.partition(":")
    if not sep or not host_text or not guest:
        raise InvalidInput(
            f"copy-out {text!r} is not GUEST:HOST", hint="such as /results:./results"
        )
    host = (cwd / host_text).resolve()
    if not host.parent.is_dir():
        raise InvalidInput(
            f"copy-out {text!r}: {host.parent} does not exist", hint="create it first"
        )
    return CopySpec(host=host, guest=guest_path(guest, "the copy-out guest path"))


def parse_env(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` for the program's environment."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise InvalidInput(f"environment {text!r} is not NAME=VALUE", hint="such as LANG=C.UTF-8")
    if "\0" in value:
        raise InvalidInput(f"environment variable {name} contains a NUL byte", hint="remove it")
    return name, value


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h``, ``500ms`` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise InvalidInput(
            f"{text!r} is not a duration", hint="use a number with s, m or h, such as 10m"
        )
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"]
