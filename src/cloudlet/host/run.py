"""Every subprocess cloudlet starts goes through here.

One choke point means: argv lists only (never a shell), one error type with the
command's output, and a guard that unit tests use to forbid real subprocesses.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlet.errors import HostCommandError, MissingDependency

Guard = Callable[[Sequence[str]], None]


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
        raise MissingDependency(f"{args[0]} is not installed", hint=hint) from exc
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
        return subprocess.Popen(
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
        raise MissingDependency(f"{args[0]} is not installed") from exc


def exec_replace(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` (interactive programs such as ssh)."""
    args = [os.fspath(a) for a in argv]
    _check_guard(args)
    try:
        os.execvp(args[0], args)
    except FileNotFoundError as exc:
        raise MissingDependency(
            f"{args[0]} is not installed", hint="install openssh-client"
        ) from exc
