"""A client for the QEMU guest agent (qemu-ga) over the VM's virtio-serial socket.

The agent speaks QMP-like JSON lines but has no greeting. Each conversation starts
with ``guest-sync-delimited``, whose 0xFF marker flushes anything a previous,
interrupted client left half-read.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import socket
import time
from pathlib import Path
from typing import Any

from cloudlet import redact
from cloudlet.driver.base import ExecResult
from cloudlet.errors import GuestError, Timeout
from cloudlet.next_steps import Step, step
from cloudlet.progress import CancelToken, check, pause

_log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05
# The longest reply line read from a guest (which may send anything, forever).
# guest-file-read replies carry ~1.4 MiB of base64 per MiB asked: 8 MiB is ample.
MAX_REPLY = 8 * 1024 * 1024
# guest-exec-status carries up to 16 MiB of output per stream in qemu-ga 7.2
# (GUEST_EXEC_MAX_OUTPUT), so stdout and stderr as base64 fit in 48 MiB.
MAX_EXEC_REPLY = 48 * 1024 * 1024


class AgentConnection:
    """One open conversation with the guest agent."""

    def __init__(self, path: Path, timeout: float, max_reply: int = MAX_REPLY) -> None:
        self.max_reply = max_reply
        self.vm = path.parent.name  # the runtime directory: the VM's id, for the log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise GuestError(
                f"cannot reach the guest agent socket {path}: {exc}", hint="is the VM running?"
            ) from None
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AgentConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def _read_line(self) -> bytes:
        # Look for the newline only in what arrived last: replies to guest-file-read
        # carry megabytes of base64, and rescanning the whole buffer would be quadratic.
        end = self._buffer.find(b"\n")
        if end < 0:
            parts = [self._buffer]
            size = len(self._buffer)
            while True:
                chunk = self._recv(1 << 20)
                newline = chunk.find(b"\n")
                parts.append(chunk)
                size += len(chunk)
                if newline >= 0:
                    break
                self._check_size(size)
            self._buffer = b"".join(parts)
            end = self._buffer.find(b"\n", len(self._buffer) - len(chunk))
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        self._check_size(len(line))
        return line

    def _recv(self, size: int) -> bytes:
        chunk = self.sock.recv(size)
        if not chunk:
            raise GuestError("the guest agent closed the connection")
        return chunk

    def _check_size(self, size: int) -> None:
        """A guest that sends a line without end must not grow our memory without bound."""
        if size > self.max_reply:
            raise GuestError(
                f"the guest answered more than {self.max_reply} bytes in one reply",
                hint="the guest agent is misbehaving; restart it or the VM",
            )

    def sync(self) -> None:
        """Flush stale data: send a sync id, skip to the 0xFF marker, expect the id back."""
        sync_id = random.randint(1, 2**31)
        self.sock.sendall(b"\xff")
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
        skipped = 0
        while b"\xff" not in self._buffer:
            # Stale bytes before the marker are dropped as they come, but only so many.
            skipped += len(self._buffer)
            self._check_size(skipped)
            self._buffer = self._recv(65536)
        self._buffer = self._buffer.split(b"\xff", 1)[1]
        while True:
            # Answers to syncs of earlier, abandoned connections may still arrive,
            # each behind its own 0xFF: skip everything until our id comes back.
            line = self._read_line().replace(b"\xff", b"").strip()
            skipped += len(line)
            self._check_size(skipped)
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("return") == sync_id:
                return

    def send_only(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        """Send a command that has no reply (guest-shutdown)."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._send(message)
        self._note(command, arguments, "sent, no reply expected")

    def _note(self, command: str, arguments: dict[str, Any] | None, outcome: str) -> None:
        """One log line per command, arguments and reply in short, payloads only counted
        (guest-exec's stdin, file contents and program output may carry secrets)."""
        if _log.isEnabledFor(logging.DEBUG):
            shown = f"{redact.summary(arguments)} " if arguments else ""
            _log.debug("VM %s: agent %s %s-> %s", self.vm, command, shown, outcome)

    def call(
        self, command: str, arguments: dict[str, Any] | None = None, *, max_reply: int = 0
    ) -> Any:
        """Send a command and return its reply; ``max_reply`` raises the cap for this one."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._send(message)
        default, self.max_reply = self.max_reply, max_reply or self.max_reply
        try:
            while True:
                line = self._read_line().strip()
                if line:
                    break
        finally:
            self.max_reply = default
        try:
            reply = json.loads(line)
        except ValueError:
            raise _odd(command, "something that is not JSON") from None
        if not isinstance(reply, dict):
            raise _odd(command, "JSON that is not an object")
        if "error" in reply:
            error = reply["error"]
            desc = error.get("desc") if isinstance(error, dict) else error
            self._note(command, arguments, f"error: {clean_text(desc, 200)}")
            raise GuestError(f"guest agent refused {command}: {clean_text(desc, 500)}")
        result = reply.get("return")
        if not (command in _POLLS and isinstance(result, dict) and not result.get("exited")):
            self._note(command, arguments, redact.summary(result))
        return result

    def call_dict(
        self, command: str, arguments: dict[str, Any] | None = None, *, max_reply: int = 0
    ) -> dict[str, Any]:
        """``call`` for commands that return an object; any other shape is a GuestError."""
        result = self.call(command, arguments, max_reply=max_reply)
        if not isinstance(result, dict):
            raise _odd(command, "a reply of the wrong shape")
        return result


# Polled until done: only the answer that ends the poll is logged.
_POLLS = frozenset({"guest-exec-status"})

# The guest writes every reply: their shapes and values are checked, never assumed.


def _odd(command: str, what: str) -> GuestError:
    return GuestError(
        f"the guest agent answered {command} with {what}",
        hint="the guest agent is misbehaving; restart it or the VM",
    )


def as_int(value: object, command: str) -> int:
    """An integer from a reply (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _odd(command, f"{clean_text(value, 40)!r} where a number belongs")
    return value


def decode_b64(value: object, command: str) -> bytes:
    """Base64 text from a reply, decoded strictly."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise _odd(command, "data that is not text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise _odd(command, "data that is not base64") from None


def clean_text(value: object, limit: int = 256) -> str:
    """Guest text fit to print: printable characters only (no terminal escapes), short."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return "".join(ch for ch in text[: limit * 4] if ch.isprintable())[:limit]


def connect(path: Path, timeout: float = 5.0, max_reply: int = MAX_REPLY) -> AgentConnection:
    """Open and sync a conversation, or raise GuestError/Timeout."""
    conn = AgentConnection(path, timeout, max_reply)
    try:
        conn.sync()
    except TimeoutError:
        conn.close()
        raise Timeout(
            "the guest agent did not answer", hint="is the guest still booting?"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def wait_ready(path: Path, timeout: float, *, cancel: CancelToken | None = None) -> None:
    """Poll until the guest agent answers guest-ping; ``cancel`` stops the wait
    (within a second: one try's connection timeout) with Cancelled."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        check(cancel)
        try:
            with connect(path, timeout=min(1.0, max(0.1, deadline - time.monotonic()))) as conn:
                conn.call("guest-ping")
                return
        except (GuestError, Timeout, OSError) as exc:
            last = exc
        pause(cancel, 0.1)
    raise Timeout(
        f"the guest agent did not answer within {timeout:.0f} s ({last})",
        hint="read the VM's serial log to see how its boot went",
        next_steps=[step(Step.VM_LOGS)],
    )


def run_command(
    path: Path,
    argv: list[str],
    *,
    stdin: bytes | None,
    timeout: float,
    cancel: CancelToken | None = None,
) -> ExecResult:
    """guest-exec with captured output, polled until the program exits.

    ``cancel`` stops the polling with Cancelled and closes the connection; the guest
    agent has no way to stop a program it started, so the program runs on in the guest
    (as it does after a Timeout).
    """
    check(cancel)
    deadline = time.monotonic() + timeout
    with connect(path) as conn:
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin:
            args["input-data"] = base64.b64encode(stdin).decode()
        try:
            pid = as_int(conn.call_dict("guest-exec", args).get("pid"), "guest-exec")
        except GuestError as exc:
            if "No such file or directory" not in exc.message:
                raise
            # as a shell would: 127 and a message on stderr
            message = f"cloudlet: {argv[0]}: command not found in the guest\n"
            return ExecResult(exit_code=127, stderr=message.encode())
        while True:
            status = conn.call_dict("guest-exec-status", {"pid": pid}, max_reply=MAX_EXEC_REPLY)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise Timeout(f"{argv[0]} did not finish within {timeout:.0f} s in the guest")
            pause(cancel, POLL_INTERVAL)
    what = "guest-exec-status"
    signal = status.get("signal")
    return ExecResult(
        exit_code=as_int(status.get("exitcode", 0), what),
        stdout=decode_b64(status.get("out-data"), what),
        stderr=decode_b64(status.get("err-data"), what),
        signal=None if signal is None else as_int(signal, what),
        truncated=bool(status.get("out-truncated") or status.get("err-truncated")),
    )
