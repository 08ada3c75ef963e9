"""Live shares for process VMs: one virtiofsd per shared host directory.

QEMU 7.2's virtiofsd has no read-only mode, so a read-only share is served from a
read-only bind mount of the directory: the guest cannot write through it whatever
it mounts, and the host's files stay unchanged. Every daemon and mount is written
to a record in the run's directory first, so whoever cleans up (the CLI, its
watcher, or the next command's recovery) finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cloudlet.errors import CloudletError, HostCommandError, MissingDependency
from cloudlet.host import processes
from cloudlet.host.run import run, spawn

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
RECORD = "shares.json"


@dataclass
class ShareRecord:
    """What one share left on the host: a daemon and perhaps a bind mount."""

    socket: str
    pid: int = 0
    pid_start: int = 0
    bind_mount: str | None = None


def virtiofsd_binary() -> str:
    for candidate in VIRTIOFSD_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise MissingDependency(
        "virtiofsd is not installed, so host directories cannot be shared",
        hint="install qemu-system-x86 (Debian 12) or the virtiofsd package, "
        "or copy files in instead",
    )


def virtiofsd_argv(binary: str, source: Path, socket_path: Path) -> list[str]:
    """virtiofsd in its namespace sandbox, serving ``source`` on ``socket_path``."""
    return [
        binary,
        f"--socket-path={socket_path}",
        "-o", f"source={source}",
        "-o", "sandbox=namespace",
        "-o", "cache=auto",
        "-o", "no_posix_lock",
        "-o", "no_xattr",
    ]  # fmt: skip


def _save(directory: Path, records: list[ShareRecord]) -> None:
    tmp = directory / (RECORD + ".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records]))
    tmp.replace(directory / RECORD)


def _load(directory: Path) -> list[ShareRecord]:
    try:
        return [ShareRecord(**r) for r in json.loads((directory / RECORD).read_text())]
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return []


def start(directory: Path, sources: list[tuple[Path, bool]]) -> list[Path]:
    """Start a virtiofsd per (host dir, read only); return their sockets, in order."""
    if not sources:
        return []
    if os.geteuid() != 0:
        raise CloudletError(
            "sharing host directories (virtiofs) needs root on this host",
            hint="run as root, or copy files in and out instead of sharing",
        )
    binary = virtiofsd_binary()
    records: list[ShareRecord] = []
    sockets: list[Path] = []
    try:
        for index, (source, read_only) in enumerate(sources):
            record = ShareRecord(socket=str(directory / f"fs{index}.sock"))
            records.append(record)
            served = source
            if read_only:
                mount_point = directory / f"ro{index}"
                mount_point.mkdir(mode=0o700)
                record.bind_mount = str(mount_point)
                _save(directory, records)
                run(["mount", "--bind", str(source), str(mount_point)])
                run(["mount", "-o", "remount,bind,ro", str(mount_point)])
                served = mount_point
            with open(directory / f"fs{index}.log", "ab") as log:
                proc = spawn(
                    virtiofsd_argv(binary, served, Path(record.socket)),
                    stdout=log.fileno(),
                    stderr=log.fileno(),
                    detach=True,
                )
            record.pid = proc.pid
            record.pid_start = processes.start_time(proc.pid) or 0
            _save(directory, records)
            _wait_socket(Path(record.socket), proc.pid, directory / f"fs{index}.log")
            sockets.append(Path(record.socket))
    except BaseException:
        stop(directory)
        raise
    return sockets


def _wait_socket(path: Path, pid: int, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not processes.is_alive(pid) or time.monotonic() > deadline:
            raise CloudletError(
                f"virtiofsd did not start: {log.read_text(errors='replace').strip()[-300:]}",
                hint="check that the shared directory is readable",
            )
        time.sleep(0.01)


def is_mount_point(path: str) -> bool:
    """From the mount table: a bind mount on the same file system fools os.path.ismount."""
    try:
        table = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    # Field 5 is the mount point, with spaces and the like escaped as octal.
    wanted = path.replace("\\", "\\134").replace(" ", "\\040").replace("\n", "\\012")
    return any(line.split()[4] == wanted for line in table.splitlines() if line)


def stop(directory: Path) -> None:
    """Stop the daemons and undo the mounts a record lists. Idempotent."""
    records = _load(directory)
    for record in records:
        if record.pid and processes.is_alive(record.pid, record.pid_start or None):
            processes.kill_and_wait(record.pid, record.pid_start or None)
    for record in records:
        if record.bind_mount is None:
            continue
        if is_mount_point(record.bind_mount):
            try:
                run(["umount", record.bind_mount])
            except HostCommandError:
                run(["umount", "-l", record.bind_mount], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(record.bind_mount)
    with contextlib.suppress(FileNotFoundError):
        (directory / RECORD).unlink()
