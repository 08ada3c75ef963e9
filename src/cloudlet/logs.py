"""cloudlet's own log: what it did, one line each, in a private rotating file.

Every module logs through the standard ``logging`` module under the ``cloudlet``
logger; this module owns where the lines go. ``to_file`` (called when the engine
opens) writes them to ``<state directory>/logs/cloudlet.log`` (0600, in a 0700
directory, rotated by size); ``to_stderr`` (the CLI's ``--debug``) shows them too.
Until one of them is called nothing is written anywhere.

Log lines carry text that guests and users control (names, replies, output), so
the formatter escapes every control character: no line can end early or forge the
next one. Secrets are kept out by the callers, through ``cloudlet.redact``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path

from cloudlet.errors import CloudletError

ROOT = "cloudlet"
LOG_DIR = "logs"
LOG_FILE = "cloudlet.log"
MAX_BYTES = 4 * 1024 * 1024
BACKUPS = 3
# One line never grows past this, whatever a guest or a user hands over.
MAX_LINE = 16 * 1024

_FILE_HANDLER = "cloudlet-file"
_STDERR_HANDLER = "cloudlet-stderr"
_setup = threading.Lock()

# A library stays silent until a frontend asks for a log: without a handler of its own,
# Python would print warnings through its last-resort handler.
logging.getLogger(ROOT).addHandler(logging.NullHandler())

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with backslashes, newlines and every other unprintable character escaped
    (``\\n``, ``\\x1b``, ``\\u2028``): one line, no terminal escapes, nothing forged."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
    return "".join(out)


class LineFormatter(logging.Formatter):
    """``2026-12-01T08:00:00.123Z INFO pid=42 driver.qemu.qmp: message``, always one line."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:  # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r} ({exc})"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f" [{type(error).__name__}: {error}]"
        message = escape(message)
        if len(message) > MAX_LINE:
            message = f"{message[:MAX_LINE]}...({len(message) - MAX_LINE} more characters)"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        who = f"pid={record.process}"
        if record.threadName and record.threadName != "MainThread":
            who += f"/{escape(record.threadName)}"
        name = record.name.removeprefix(f"{ROOT}.")
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {who} {name}: {message}"


class PrivateRotatingFile(RotatingFileHandler):
    """A size-rotated log file that is 0600 from its first byte, also after a rotation,
    and that never stops cloudlet's work when it cannot be written (disk full)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        _create_private(path)
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def rotate(self, source: str, dest: str) -> None:
        os.replace(source, dest)
        _create_private(Path(source))

    def handleError(self, record: logging.LogRecord) -> None:
        """A line that cannot be written is dropped: logging never fails an operation,
        nor prints a traceback."""


def _create_private(path: Path) -> None:
    """Make ``path`` a 0600 file (made if missing); never follow a link planted there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def log_file(home: Path) -> Path:
    """Where the log of the state directory ``home`` lives."""
    return home / LOG_DIR / LOG_FILE


def _named(name: str) -> logging.Handler | None:
    return next((h for h in logging.getLogger(ROOT).handlers if h.get_name() == name), None)


def _attach(handler: logging.Handler, name: str) -> None:
    handler.set_name(name)
    handler.setFormatter(LineFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger(ROOT)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)


def to_file(home: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> Path | None:
    """Log to the state directory's rotating file (idempotent; another home replaces the
    previous one). Returns the file, or None when it cannot be made: a log that cannot
    be written never stops the work itself."""
    path = log_file(home)
    with _setup:
        current = _named(_FILE_HANDLER)
        if isinstance(current, RotatingFileHandler):
            if Path(current.baseFilename) == path.absolute():
                return path
            logging.getLogger(ROOT).removeHandler(current)
            _close(current)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            if path.parent.is_symlink() or not path.parent.is_dir():
                return None
            path.parent.chmod(0o700)
            handler = PrivateRotatingFile(path, max_bytes, backups)
            os.chmod(path, 0o600, follow_symlinks=False)
        except OSError:
            return None
        _attach(handler, _FILE_HANDLER)
    return path


def to_stderr() -> None:
    """Show every log line on stderr as well (``--debug``); idempotent."""
    with _setup:
        if _named(_STDERR_HANDLER) is None:
            _attach(logging.StreamHandler(sys.stderr), _STDERR_HANDLER)


def stop() -> None:
    """Detach and close the handlers this module attached (tests, a frontend shutting down)."""
    with _setup:
        root = logging.getLogger(ROOT)
        for name in (_FILE_HANDLER, _STDERR_HANDLER):
            handler = _named(name)
            if handler is not None:
                root.removeHandler(handler)
                _close(handler)
        root.setLevel(logging.NOTSET)


def _close(handler: logging.Handler) -> None:
    with contextlib.suppress(OSError, ValueError):  # its file may be gone or closed
        handler.close()


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, CloudletError):
        return f"failed: {exc.one_line()}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"failed: {type(exc).__name__}: {exc}"


_ops = logging.getLogger(f"{ROOT}.operation")


@contextmanager
def operation(op_id: int, kind: str, vm: str) -> Iterator[None]:
    """Log an operation's start, and its end with outcome and duration."""
    _ops.info("operation %d: %s of VM %s started", op_id, kind, vm)
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        took = time.monotonic() - started
        _ops.info("operation %d: %s of VM %s %s (%.2f s)", op_id, kind, vm, _outcome(exc), took)
        raise
    took = time.monotonic() - started
    _ops.info("operation %d: %s of VM %s done (%.2f s)", op_id, kind, vm, took)
