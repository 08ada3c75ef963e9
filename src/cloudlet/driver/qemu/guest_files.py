"""Copy files into and out of a guest through the QEMU guest agent (QemuDriver.copy_*).

No network is needed: bytes travel as base64 in guest-file-write/read over the
agent's virtio-serial port. Files are streamed chunk by chunk (nothing is held
whole in memory) and written under a temporary name that is renamed at the end,
so a copy that fails half way never leaves a file under the final name.

The agent's chardev serves one client at a time, so this module never holds two
connections at once: guest-exec helpers (stat, test, chmod, mv, rm) each open
their own short conversation before or after the one that moves the bytes.
"""

from __future__ import annotations

import base64
import contextlib
import posixpath
import stat
from collections.abc import Callable
from pathlib import Path

from cloudlet.driver.base import ExecResult
from cloudlet.driver.qemu.agent import (
    AgentConnection,
    as_int,
    clean_text,
    connect,
    decode_b64,
    run_command,
)
from cloudlet.errors import CloudletError, EntryRefused, GuestError
from cloudlet.guest import copy_rules as rules
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import GUEST_PART_SUFFIX as GUEST_PART_SUFFIX
from cloudlet.guest.landing import CopyLimits, Landing

Progress = rules.CopyProgress

# Bytes per guest-file-write. qemu-ga 7.2 refuses a request whose JSON exceeds
# 64 MiB (json-streamer MAX_TOKEN_SIZE), so base64 caps a chunk below 48 MiB.
# Measured under TCG (QEMU 7.2, tiny guest): 64 KiB to 1 MiB all move ~1-1.3 MiB/s
# (the virtio-serial port and qemu-ga's JSON lexer are the limit), 4 MiB and up
# are slower; 256 KiB keeps memory small and progress smooth at no cost.
WRITE_CHUNK = 256 * 1024
# Bytes asked per guest-file-read (qemu-ga caps `count` at 48 MiB). Measured: 512 KiB
# to 1 MiB are fastest (~4 MiB/s under TCG); 16 MiB halves it, since the reply is
# one JSON line the client buffers whole.
READ_CHUNK = 1024 * 1024
# Seconds any one agent reply may take (a chunk under TCG can be slow to land).
AGENT_TIMEOUT = 120.0
# Seconds for each small helper command run with guest-exec.
EXEC_TIMEOUT = 60.0


def copy_in(
    agent_socket: Path,
    src: Path,
    dest: str,
    *,
    progress: Progress | None = None,
    mode: int | None = None,
    owner: GuestOwner | None = None,
) -> int:
    """Copy the host file ``src`` to ``dest`` in the guest; return the bytes copied.

    ``dest`` ending in "/" or naming a directory in the guest gets the source's
    name appended. The file keeps the source's mode unless ``mode`` is given, and
    belongs to ``owner`` (None: to the agent's user).
    """
    st = rules.host_source(src)
    rules.check_guest_path(dest)
    target = rules.guest_target(
        dest, src.name, not dest.endswith("/") and guest_is_dir(agent_socket, dest)
    )
    part = target + GUEST_PART_SUFFIX
    file_mode = stat.S_IMODE(st.st_mode) if mode is None else mode
    total = st.st_size
    done = 0
    handle: int | None = None
    try:
        with open(src, "rb") as source, connect(agent_socket, AGENT_TIMEOUT) as conn:
            handle = open_file(conn, part, "wb")
            try:
                _report(progress, 0, total)
                writer = GuestWriter(conn, handle, part)
                while data := source.read(WRITE_CHUNK):
                    writer.write(data)
                    done += len(data)
                    _report(progress, done, max(total, done))
                writer.flush()
            except BaseException:
                if close_quietly(conn, handle):
                    handle = None
                raise
            # Checked: buffered data reaches the guest's file only here (a full disk shows).
            conn.call("guest-file-close", {"handle": handle})
            handle = None
        if owner is not None:
            exec_ok(agent_socket, ["chown", str(owner), "--", part], f"set the owner of {part}")
        # After chown, which clears setuid and setgid.
        exec_ok(agent_socket, ["chmod", f"{file_mode:o}", "--", part], f"set the mode of {part}")
        exec_ok(agent_socket, ["mv", "-f", "--", part, target], f"rename {part} to {target}")
    except BaseException:
        _discard_guest_part(agent_socket, part, handle)
        raise
    return done


def copy_out(
    agent_socket: Path,
    src: str,
    dest: Path,
    *,
    progress: Progress | None = None,
    limits: CopyLimits | None = None,
) -> int:
    """Copy the guest file ``src`` to the host path ``dest``; return the bytes copied.

    ``dest`` naming an existing local directory gets the source's name appended.
    The local file gets the guest file's permission bits less setuid, setgid, sticky
    and world-write (the guest is not trusted), filtered by the umask; it is written
    through landing.Landing, so a symlink at ``dest`` is refused, never followed.
    """
    rules.check_guest_path(src)
    guest_mode, total = guest_stat(agent_socket, src)
    rules.guest_source_kind(src, guest_mode)
    target = rules.host_target(src, dest)
    bounds = limits or CopyLimits()
    if total > bounds.max_bytes:
        # The guest's stat may lie: the landing counts the bytes that really arrive too.
        Landing.too_large(bounds)
    reader = GuestReader(progress, total)
    with Landing(target.parent, bounds) as landing, connect(agent_socket, AGENT_TIMEOUT) as conn:
        handle = open_file(conn, src, "rb")
        try:
            _report(progress, 0, total)
            landing.file((target.name,), guest_mode, reader.reading(conn, handle))
        except EntryRefused as exc:
            raise rules.cannot_write(target, exc.message) from None
        finally:
            close_quietly(conn, handle)
    return reader.done


class GuestWriter:
    """guest-file-write as a file's write(), sent in requests of WRITE_CHUNK bytes."""

    def __init__(self, conn: AgentConnection, handle: int, path: str) -> None:
        self.conn, self.handle, self.path = conn, handle, path
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= WRITE_CHUNK:
            self._send(bytes(self.buffer[:WRITE_CHUNK]))
            del self.buffer[:WRITE_CHUNK]
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()

    def _send(self, data: bytes) -> None:
        reply = self.conn.call_dict(
            "guest-file-write", {"handle": self.handle, "buf-b64": base64.b64encode(data).decode()}
        )
        written = as_int(reply.get("count", -1), "guest-file-write")
        if written != len(data):
            raise GuestError(
                f"the guest agent wrote {written} of {len(data)} bytes to {self.path}",
                hint="is the guest's disk full?",
            )


class GuestReader:
    """guest-file-read as a read(n) callable, reporting progress as bytes land."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def reading(self, conn: AgentConnection, handle: int) -> Callable[[int], bytes]:
        eof = False

        def read(_size: int) -> bytes:
            nonlocal eof
            if eof:
                return b""
            reply = conn.call_dict("guest-file-read", {"handle": handle, "count": READ_CHUNK})
            data = decode_b64(reply.get("buf-b64"), "guest-file-read")
            eof = bool(reply.get("eof")) or not data
            self.done += len(data)
            if data:
                _report(self.progress, self.done, max(self.total, self.done))
            return data

        return read


_report = rules.report


def open_file(conn: AgentConnection, path: str, mode: str) -> int:
    """guest-file-open, with a missing file or directory reported as NotFound."""
    try:
        return as_int(conn.call("guest-file-open", {"path": path, "mode": mode}), "guest-file-open")
    except GuestError as exc:
        if "No such file or directory" in exc.message:
            where = path if mode.startswith("r") else posixpath.dirname(path)
            raise rules.guest_missing(where) from None
        raise


def close_quietly(conn: AgentConnection, handle: int) -> bool:
    """guest-file-close that never masks the error being reported; True if it closed."""
    try:
        conn.call("guest-file-close", {"handle": handle})
    except (CloudletError, OSError, ValueError):
        return False
    return True


def run_short(agent_socket: Path, argv: list[str], timeout: float = 0.0) -> ExecResult:
    """A helper command in the guest (EXEC_TIMEOUT unless ``timeout`` says otherwise)."""
    return run_command(agent_socket, argv, stdin=None, timeout=timeout or EXEC_TIMEOUT)


def exec_ok(agent_socket: Path, argv: list[str], what: str, timeout: float = 0.0) -> None:
    result = run_short(agent_socket, argv, timeout)
    if result.exit_code != 0 or result.signal is not None:
        detail = clean_text((result.stderr or result.stdout).decode(errors="replace").strip(), 300)
        raise GuestError(
            f"cannot {what} in the guest: {detail or f'exit code {result.shell_code}'}",
            hint="check the guest's permissions and free space",
        )


def guest_is_dir(agent_socket: Path, path: str) -> bool:
    return run_short(agent_socket, ["test", "-d", path]).exit_code == 0


def guest_stat(agent_socket: Path, path: str) -> tuple[int, int]:
    """(st_mode, size) of a guest file, following symlinks; NotFound if it is missing."""
    result = run_short(agent_socket, ["stat", "-L", "-c", "%f %s", "--", path])
    fields = result.stdout.split()
    if result.exit_code != 0 or len(fields) != 2:
        detail = result.stderr.decode(errors="replace").strip()
        if result.exit_code == 127:
            raise GuestError("the guest has no stat command", hint="install coreutils or busybox")
        raise rules.guest_missing(path, detail)
    try:
        mode, size = int(fields[0], 16), int(fields[1])
    except ValueError:
        mode, size = -1, -1
    if mode < 0 or size < 0:
        raise GuestError(
            f"the guest's stat printed {clean_text(result.stdout.decode(errors='replace'), 60)!r}",
            hint="the guest's stat command is misbehaving",
        )
    return mode, size


def _discard_guest_part(agent_socket: Path, part: str, handle: int | None) -> None:
    """Best effort after a failure: close a handle left open, remove the part file."""
    if handle is not None:
        # The connection that opened it broke; handles outlive connections in qemu-ga.
        with contextlib.suppress(CloudletError, OSError), connect(agent_socket, 10.0) as conn:
            conn.call("guest-file-close", {"handle": handle})
    with contextlib.suppress(CloudletError, OSError):
        run_short(agent_socket, ["rm", "-f", "--", part])
