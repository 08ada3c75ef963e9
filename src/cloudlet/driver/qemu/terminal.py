"""A guest program on a pseudo-terminal, reached through a hot-plugged virtio-serial port.

qemu-ga's guest-exec gives a program pipes, never a terminal. So a virtserialport is
hot-plugged, backed by a unix socket QEMU listens on in the VM's runtime directory;
cloudlet connects to it; guest-exec runs a small sh helper that finds the port, says
it is ready with one byte, and execs util-linux ``script`` with the port as its stdin
and stdout: ``script`` runs the program on a new pty. At the end (the program exits,
the user detaches, or the next session finds the record of a killed CLI) the guest
process is killed, the port unplugged, the chardev removed, socket and record gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import socket
import time
from pathlib import Path
from typing import Any

from cloudlet.driver.base import GuestTerminal, RuntimeInfo
from cloudlet.driver.qemu import agent, qmp
from cloudlet.errors import CloudletError, GuestError, Timeout
from cloudlet.host import processes

BUS = "vserial0.0"
READY = b"\x06"
START_TIMEOUT = 30.0
STATUS_INTERVAL = 0.5
RECORDS = "terminals"
_TID = re.compile(r"[0-9a-f]{8}")

# $1 port name, $2 rows, $3 cols, $4 the command script runs on the pty, $5 "--",
# then the program. Everything before the ready byte goes to the agent's capture
# (a startup error); everything after it is the terminal.
HELPER = r"""PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
port=$1 rows=$2 cols=$3 inner=$4
shift 5
dev= i=0
while :; do
    for f in /sys/class/virtio-ports/*/name; do
        n=
        read -r n < "$f" 2>/dev/null
        if [ "$n" = "$port" ]; then d=${f%/name}; dev=/dev/${d##*/}; fi
    done
    [ -n "$dev" ] && [ -c "$dev" ] && break
    dev= i=$((i + 1))
    if [ "$i" -gt 400 ]; then echo "the terminal port did not appear" >&2; exit 1; fi
    sleep 0.05
done
if ! command -v script > /dev/null 2>&1; then
    echo "the guest has no 'script' program (util-linux) to open a terminal with" >&2
    exit 1
fi
export CL_ROWS="$rows" CL_COLS="$cols" CL_ARGC=$# SHELL=/bin/sh
i=1
for a in "$@"; do export "CL_ARG_$i=$a"; i=$((i + 1)); done
# A virtio port opens once at a time: one read-write open, duplicated.
exec 0<> "$dev" 1>&0 2>&0
printf '\006'
exec script -qec "$inner" /dev/null
"""

# Run by script on the pty: the size, then the program rebuilt from the environment
# (script takes one command string; the program's words never pass through a parser).
INNER = r"""stty rows "$CL_ROWS" cols "$CL_COLS" 2>/dev/null
n=$CL_ARGC i=1
set --
while [ "$i" -le "$n" ]; do
    eval "set -- \"\$@\" \"\$CL_ARG_$i\""
    unset "CL_ARG_$i"
    i=$((i + 1))
done
unset CL_ROWS CL_COLS CL_ARGC n i
exec "$@"
"""


def _ids(tid: str) -> tuple[str, str, str]:
    """chardev id, device id, guest port name of one session."""
    return f"tm{tid}", f"tm{tid}-port", f"org.cloudlet.term.{tid}"


def _socket(run_dir: Path, tid: str) -> Path:
    return run_dir / f"tm{tid}.sock"


def _record(run_dir: Path, tid: str) -> Path:
    return run_dir / RECORDS / f"{tid}.json"


def _read_record(path: Path) -> dict[str, int | None]:
    """A session record (written by another process): ints or None, nothing else."""
    try:
        raw = json.loads(path.read_text()[:4096])
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, int | None] = {}
    for key in ("owner_pid", "owner_start", "guest_pid"):
        value = raw.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63
        out[key] = value if ok else None
    return out


def _write_record(path: Path, values: dict[str, int | None]) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values))
    tmp.replace(path)


def _exec_status(info: RuntimeInfo, pid: int) -> dict[str, Any] | None:
    """guest-exec-status of our helper; None when the agent does not know the pid."""
    try:
        with agent.connect(info.agent_socket) as conn:
            return conn.call_dict("guest-exec-status", {"pid": pid}, max_reply=agent.MAX_EXEC_REPLY)
    except GuestError as exc:
        if "pid" in exc.message.lower() or "invalid" in exc.message.lower():
            return None
        raise


def _exit_code(status: dict[str, Any]) -> int:
    what = "guest-exec-status"
    signal = status.get("signal")
    if signal is not None:
        return 128 + agent.as_int(signal, what)
    return agent.as_int(status.get("exitcode", 0), what)


def _kill(info: RuntimeInfo, pid: int) -> None:
    """SIGKILL the helper (script): its pty hangs up, which ends the session's programs."""
    with contextlib.suppress(CloudletError, OSError), agent.connect(info.agent_socket) as conn:
        conn.call_dict("guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]})


def _unplug(info: RuntimeInfo, tid: str) -> None:
    chardev, device, _ = _ids(tid)
    with contextlib.suppress(CloudletError, OSError):
        qmp.unplug(info.qmp_socket, device, 10.0)
    with contextlib.suppress(CloudletError, OSError):
        qmp.execute(info.qmp_socket, "chardev-remove", {"id": chardev})
    _socket(info.qmp_socket.parent, tid).unlink(missing_ok=True)


def _end(info: RuntimeInfo, tid: str, guest_pid: int | None) -> int | None:
    """Kill the guest side if it still runs, unplug, remove: the session is gone.

    Returns the program's exit code when the agent still had it to give."""
    code = None
    if guest_pid is not None:
        # Cleanup goes on whatever the agent does: the port is unplugged in any case.
        with contextlib.suppress(CloudletError, OSError):
            status = _exec_status(info, guest_pid)
            if status is not None and not status.get("exited"):
                _kill(info, guest_pid)
                deadline = time.monotonic() + 5.0
                while status is not None and not status.get("exited"):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                    status = _exec_status(info, guest_pid)
            if status is not None and status.get("exited"):
                code = _exit_code(status)
    _unplug(info, tid)
    _record(info.qmp_socket.parent, tid).unlink(missing_ok=True)
    return code


def sweep(info: RuntimeInfo) -> None:
    """End the sessions whose CLI died (killed): nothing of theirs stays attached."""
    run_dir = info.qmp_socket.parent
    for path in sorted((run_dir / RECORDS).glob("*.json")):
        tid = path.stem
        if not _TID.fullmatch(tid):
            continue
        record = _read_record(path)
        owner = record.get("owner_pid")
        if owner is not None and processes.is_alive(owner, record.get("owner_start")):
            continue
        _end(info, tid, record.get("guest_pid"))


class QemuTerminal(GuestTerminal):
    """One session: the socket to the port, the helper's pid in the guest."""

    def __init__(self, info: RuntimeInfo, tid: str, sock: socket.socket, pid: int) -> None:
        self.info = info
        self.tid = tid
        self.sock = sock
        self.pid = pid
        self._code: int | None = None
        self._closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, size: int = 65536) -> bytes:
        try:
            return self.sock.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        # The guest side may have gone: exit_code() then says how it ended.
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def exit_code(self) -> int | None:
        if self._code is None and not self._closed:
            status = _exec_status(self.info, self.pid)
            if status is None:
                raise GuestError("the guest agent forgot the terminal's program")
            if status.get("exited"):
                self._code = _exit_code(status)
        return self._code

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._code is not None:
            _unplug(self.info, self.tid)
            _record(self.info.qmp_socket.parent, self.tid).unlink(missing_ok=True)
        else:
            self._code = _end(self.info, self.tid, self.pid)


def open_terminal(info: RuntimeInfo, argv: list[str], rows: int, cols: int) -> QemuTerminal:
    """Plug a port, start ``argv`` on a pty behind it, wait for the guest's ready byte."""
    sweep(info)
    run_dir = info.qmp_socket.parent
    tid = secrets.token_hex(4)
    chardev, device, port = _ids(tid)
    path = _socket(run_dir, tid)
    me = os.getpid()
    record: dict[str, int | None] = {
        "owner_pid": me,
        "owner_start": processes.start_time(me),
        "guest_pid": None,
    }
    _write_record(_record(run_dir, tid), record)  # before anything is plugged
    pid: int | None = None
    sock: socket.socket | None = None
    try:
        backend = {
            "type": "socket",
            "data": {
                "addr": {"type": "unix", "data": {"path": str(path)}},
                "server": True,
                "wait": False,
            },
        }
        qmp.execute(info.qmp_socket, "chardev-add", {"id": chardev, "backend": backend})
        qmp.execute(
            info.qmp_socket,
            "device_add",
            {"driver": "virtserialport", "bus": BUS, "chardev": chardev, "id": device,
             "name": port},
        )  # fmt: skip
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        command = ["sh", "-c", HELPER, "cloudlet-terminal", port, str(rows), str(cols), INNER]
        with agent.connect(info.agent_socket) as conn:
            args = {"path": "sh", "arg": [*command[1:], "--", *argv], "capture-output": True}
            pid = agent.as_int(conn.call_dict("guest-exec", args).get("pid"), "guest-exec")
        record["guest_pid"] = pid
        _write_record(_record(run_dir, tid), record)
        _wait_ready(info, sock, pid)
    except BaseException:
        if sock is not None:
            sock.close()
        _end(info, tid, pid)
        raise
    return QemuTerminal(info, tid, sock, pid)


def _wait_ready(info: RuntimeInfo, sock: socket.socket, pid: int) -> None:
    """The first byte on the port is the helper's READY; an early exit says why not."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], STATUS_INTERVAL)
        if ready:
            first = sock.recv(1)
            if first == READY:
                return
            raise GuestError("the guest's terminal helper sent something else than ready")
        status = _exec_status(info, pid)
        if status is None or status.get("exited"):
            why = agent.clean_text(
                agent.decode_b64((status or {}).get("err-data"), "guest-exec-status")
                .decode("utf-8", "replace")
                .strip(),
                300,
            )
            raise GuestError(
                f"cannot open a terminal in the guest: {why or 'its helper ended'}",
                hint="the guest needs util-linux's script; or use ssh",
            )
    raise Timeout(f"the guest did not open its terminal within {START_TIMEOUT:.0f} s")
