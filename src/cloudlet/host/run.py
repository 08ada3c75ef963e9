"""Every subprocess cloudlet starts goes through here.

One choke point means: argv lists only (never a shell), one error type with the
command's output, and a guard that unit tests use to forbid real subprocesses.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlet import redact
from cloudlet.errors import HostCommandError, LimitExceeded, MissingDependency

Guard = Callable[[Sequence[str]], None]
_log = logging.getLogger(__name__)


def _log_ran(args: Sequence[str], outcome: str, started: float, stdin: bytes | None) -> None:
    """One log line per command: outcome, duration, how much it was fed, the redacted argv
    (stdin is counted, never written: it may carry a secret)."""
    if _log.isEnabledFor(logging.INFO):
        took = time.monotonic() - started
        fed = f", stdin {len(stdin)} bytes" if stdin else ""
        _log.info("%s in %.3f s%s: %s", outcome, took, fed, redact.command_line(args))


@dataclass(frozen=True)
class Credentials:
    """Who a child runs as: set in the child between fork and exec."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    umask: int = 0o077
    # (resource, soft, hard) pairs, set before the uid changes.
    rlimits: tuple[tuple[int, int, int], ...] = ()

    def popen_args(self) -> dict[str, Any]:
        limits = self.rlimits

        def set_limits() -> None:
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))

        return {
            "user": self.uid,
            "group": self.gid,
            "extra_groups": list(self.groups),
            "umask": self.umask,
            "preexec_fn": set_limits if limits else None,
        }


_guard: Guard | None = None


def set_guard(guard: Guard | None) -> None:
    """Install a hook that sees every argv before it runs (tests forbid subprocesses)."""
    global _guard
    _guard = guard


def _check_guard(argv: Sequence[str]) -> None:
    if _guard is not None:
        _guard(argv)


def which(program: str, *, hint: str | None = None) -> str:
    """The full path of a host program, or a MissingDependency naming the package."""
    found = shutil.which(program)
    if found is None:
        raise MissingDependency(
            f"{program} is not installed",
            hint=hint or f"install the package that provides {program}",
        )
    return found


def which_sbin(program: str, *, hint: str) -> str:
    """Like which(), but also finds /usr/sbin tools missing from a normal user's PATH."""
    for directory in ("/usr/sbin", "/sbin"):
        candidate = Path(directory) / program
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return which(program, hint=hint)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion and capture its output.

    Raises HostCommandError (with argv, exit code and output) when it fails and
    ``check`` is true.
    """
    args = [os.fspath(a) for a in argv]
    _check_guard(args)
    full_env = None if env is None else {**os.environ, **env}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        _log_ran(args, "not found", started, input)
        raise MissingDependency(f"{args[0]} is not installed", hint=hint) from exc
    except subprocess.TimeoutExpired:
        _log_ran(args, "timed out", started, input)
        raise
    _log_ran(args, f"exit {proc.returncode}", started, input)
    if check and proc.returncode != 0:
        raise HostCommandError(
            args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
            hint=hint,
        )
    return proc


def run_text(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run a command and return its stdout as text."""
    return run(argv, **kwargs).stdout.decode()  # type: ignore[arg-type]


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.DEVNULL,
    detach: bool = False,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    credentials: Credentials | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process without waiting for it.

    ``detach`` puts it in a new session so it outlives the CLI and ignores the
    terminal's Ctrl-C: a VM must not die with the command that started it.
    ``credentials``: the uid, gid, groups, umask and rlimits the child takes on
    before it execs (host/launcher.py builds them).
    """
    args = [os.fspath(a) for a in argv]
    _check_guard(args)
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=detach,
            pass_fds=tuple(pass_fds),
            env=full_env,
            close_fds=True,
            **(credentials.popen_args() if credentials is not None else {}),
        )
    except FileNotFoundError as exc:
        _log.info("not found: %s", redact.command_line(args))
        raise MissingDependency(f"{args[0]} is not installed") from exc
    _log.info("started pid %d: %s", proc.pid, redact.command_line(args))
    return proc


def exec_replace(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` (interactive programs such as ssh)."""
    args = [os.fspath(a) for a in argv]
    _check_guard(args)
    _log.info("exec: %s", redact.command_line(args))
    try:
        os.execvp(args[0], args)
    except FileNotFoundError as exc:
        raise MissingDependency(
            f"{args[0]} is not installed", hint="install openssh-client"
        ) from exc


# ---------------------------------------------------------------- confined commands

NOBODY = 65534
"""The uid/gid a confined command runs as when we are root and no ``nobody`` exists."""

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class Limits:
    """What a command parsing a file we did not make may use (as ``timeout`` + ``prlimit``).

    ``wall`` and ``cpu`` are seconds, ``memory`` (address space) and ``file_size``
    (largest file it may write; 0: none) bytes.
    """

    wall: float
    cpu: int
    memory: int
    file_size: int = 0


def unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) to drop to when we are root (``nobody``), else None: nothing to drop."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return NOBODY, NOBODY
    return entry.pw_uid, entry.pw_gid


def _confine(limits: Limits, ids: tuple[int, int] | None) -> Callable[[], None]:
    """The child's last steps before exec: rlimits, no core, no new privileges, then the
    unprivileged ids, and death with its parent (set after setuid, which clears it)."""

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it

    def apply() -> None:
        for which, value in (
            (resource.RLIMIT_AS, limits.memory),
            (resource.RLIMIT_FSIZE, limits.file_size),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu, limits.cpu + 1))
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if ids is not None:
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return apply


def _limit_hit(proc_rc: int, stderr: str, limits: Limits) -> str | None:
    """Which limit a finished command ran into, from how it ended, or None."""
    if proc_rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"CPU limit ({limits.cpu} s)"
    if proc_rc == -signal.SIGXFSZ or os.strerror(errno.EFBIG) in stderr:
        return f"file-size limit ({limits.file_size >> 20} MiB)"
    out_of_memory = (os.strerror(errno.ENOMEM), "failed to allocate", "failed to map")
    if proc_rc in (-signal.SIGABRT, -signal.SIGTRAP) or any(t in stderr for t in out_of_memory):
        return f"memory limit ({limits.memory >> 20} MiB)"
    return None


def run_confined(
    argv: Sequence[str | os.PathLike[str]],
    *,
    limits: Limits,
    what: str,
    pass_fds: Sequence[int] = (),
    unprivileged: bool = True,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command on an untrusted file under a wall-clock timeout and rlimits, and
    (when we are root and ``unprivileged``) as ``nobody``: files it must read are
    handed over as inherited descriptors (``/dev/fd/N``).

    A limit hit is a LimitExceeded naming ``what`` (the file) and the limit; any other
    failure a HostCommandError, as with run().
    """
    args = [os.fspath(a) for a in argv]
    _check_guard(args)
    ids = unprivileged_ids() if unprivileged else None
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            preexec_fn=_confine(limits, ids),
            start_new_session=True,  # its whole group is killed on a timeout
            cwd="/",
            close_fds=True,
        )
    except FileNotFoundError as exc:
        _log_ran(args, "not found", started, None)
        raise MissingDependency(f"{args[0]} is not installed") from exc
    try:
        stdout, stderr = proc.communicate(timeout=limits.wall)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        _log_ran(args, "killed at its time limit", started, None)
        raise LimitExceeded(
            f"{os.path.basename(args[0])} on {what} ran past its time limit ({limits.wall:g} s)",
            hint="the file may be crafted to stall the host; use another file",
        ) from None
    err = stderr.decode(errors="replace")
    _log_ran(args, f"exit {proc.returncode} (confined)", started, None)
    if proc.returncode != 0:
        hit = _limit_hit(proc.returncode, err, limits)
        if hit is not None:
            raise LimitExceeded(
                f"{os.path.basename(args[0])} on {what} ran past its {hit}",
                hint="the file may be crafted to exhaust the host; use another file",
            )
        if check:
            raise HostCommandError(args, proc.returncode, stdout.decode(errors="replace"), err)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
