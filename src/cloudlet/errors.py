"""The one exception tree: each class knows its stable code, HTTP status and exit code.

Frontends turn any ``CloudletError`` into a one-line message (plus a hint on what to
do next) without knowing which layer raised it. Every class lives here, so the tree can
be read (and tested: unique codes, no two unrelated classes on one exit code) in one
place. A subclass that only narrows its parent keeps the parent's exit code.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from cloudlet.next_steps import NextStep

# How a full file system reads in QEMU's and qemu-img's messages (their strerror).
_NO_SPACE = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def out_of_space(reason: object) -> bool:
    """Whether an error text (QEMU's, qemu-img's) says a file system was full."""
    return any(text in str(reason) for text in _NO_SPACE)


class CloudletError(Exception):
    """Root of every error cloudlet reports to a user."""

    http_status = 500
    exit_code = 1
    code = "internal"

    def __init__(
        self, message: str, *, hint: str | None = None, next_steps: Sequence[NextStep] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        # In words, naming no command of any frontend; ``next_steps`` carries the actions.
        self.hint = hint
        self.next_steps = tuple(next_steps)

    def one_line(self) -> str:
        """The message and the hint, in one line for a terminal."""
        return f"{self.message}: {self.hint}" if self.hint else self.message


class InvalidInput(CloudletError):
    """The request itself is wrong (bad name, bad size, unknown flag value)."""

    http_status = 400
    exit_code = 2
    code = "invalid_input"


class NotFound(CloudletError):
    """The named VM, image or type does not exist."""

    http_status = 404
    exit_code = 3
    code = "not_found"


class ImageNotFound(NotFound):
    """No local image of that name. ``pullable`` names the catalog images that would do
    (the name itself, or the closest ones), so a frontend can say how to download one."""

    code = "image_not_found"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        image: str = "",
        pullable: Sequence[str] = (),
        next_steps: Sequence[NextStep] = (),
    ) -> None:
        super().__init__(message, hint=hint, next_steps=next_steps)
        self.image = image
        self.pullable = tuple(pullable)


class Conflict(CloudletError):
    """The request clashes with the current state (duplicate name, wrong VM state)."""

    http_status = 409
    exit_code = 4
    code = "conflict"


class StillRunning(Conflict):
    """The VM's QEMU runs and the call did not ask to stop it (``force``)."""

    code = "still_running"


class PreconditionFailed(Conflict):
    """The resource changed since the version the caller named (a stale If-Match):
    nothing was done."""

    http_status = 412
    code = "precondition_failed"


class CapacityExceeded(CloudletError):
    """The host has not enough vCPUs or memory left for the request."""

    http_status = 507
    exit_code = 5
    code = "capacity_exceeded"


class OutOfSpace(CapacityExceeded):
    """A file system ran out of space under a write (ENOSPC): ``path`` says where, so
    the caller can name what is full (the backup store, a VM's directory)."""

    code = "out_of_space"

    def __init__(
        self,
        message: str,
        *,
        path: Path,
        hint: str | None = None,
        next_steps: Sequence[NextStep] = (),
    ) -> None:
        super().__init__(message, hint=hint, next_steps=next_steps)
        self.path = path


class Busy(CloudletError):
    """Another process holds the lock on this VM right now."""

    http_status = 423
    exit_code = 6
    code = "busy"


class GuestError(CloudletError):
    """The guest (agent) did not answer or refused."""

    http_status = 502
    exit_code = 7
    code = "guest_error"


class Timeout(CloudletError):
    """Something did not happen in time."""

    http_status = 504
    exit_code = 8
    code = "timeout"


class HostCommandError(CloudletError):
    """A host command failed; carries the argv, exit code and output."""

    http_status = 500
    exit_code = 9
    code = "host_command_failed"

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stdout: str = "",
        stderr: str = "",
        *,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr or stdout).strip().splitlines()
        detail = tail[-1] if tail else "no output"
        super().__init__(
            f"{self.argv[0]} exited with {returncode}: {detail}",
            hint=hint,
        )


class MissingDependency(CloudletError):
    """A host program cloudlet needs is not installed."""

    http_status = 500
    exit_code = 10
    code = "missing_dependency"


class MonitorError(CloudletError):
    """QEMU's monitor refused a command or could not be reached."""

    http_status = 502
    exit_code = 11
    code = "monitor_error"


class NeedsRoot(CloudletError):
    """Bridges, TAPs and nftables need root."""

    http_status = 403
    exit_code = 12
    code = "needs_root"


class StoreCorrupt(CloudletError):
    """A chunk or manifest in the backup store does not match its checksum."""

    http_status = 500
    exit_code = 13
    code = "backup_corrupt"


class BackupsCorrupt(StoreCorrupt):
    """A verify run found backups whose chunks or manifests are damaged."""

    code = "backup_verify_failed"


class DownloadFailed(CloudletError):
    """The server answered, but not with the file (an HTTP error or a bad reply)."""

    http_status = 502
    exit_code = 14
    code = "download_failed"


class DownloadInterrupted(Timeout):
    """The transfer stopped half way (dropped connection, timeout); the .part file is kept."""

    code = "download_interrupted"


class ManifestRefused(InvalidInput):
    """A backup manifest that is malformed or not authenticated by this host's key."""

    http_status = 422
    code = "backup_manifest_refused"


class EntryRefused(InvalidInput):
    """One entry a guest handed back cannot be written safely (a bad name, a link in
    the way, too deep): refused like any hostile input; a copy skips it and notes why."""

    code = "guest_entry_refused"


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key sent again with another request than the first time."""

    http_status = 422
    code = "idempotency_key_reused"


class LimitExceeded(InvalidInput):
    """A command on a file we did not make ran past its time, CPU, memory or file-size
    limit: the file is refused as hostile (or too large for the limits set)."""

    code = "limit_exceeded"


class RuntimeRecordUnknown(Conflict):
    """A VM's runtime record is of a newer format than this version reads: the VM is
    left alone (never stopped, killed or cleared) rather than guessed at."""

    code = "runtime_record_unknown"


class Unauthorized(CloudletError):
    """The API call carries no token, or one that is unknown, expired or revoked."""

    http_status = 401
    exit_code = 15
    code = "unauthorized"


class Cancelled(CloudletError):
    """The caller cancelled the operation (its client went away, Ctrl-C): the wait that
    noticed stopped and left nothing half-done at its own level."""

    http_status = 499
    exit_code = 130
    code = "cancelled"
