"""A hostile tiny guest against the real CLI: copies out, the agent channel, the console.

One VM is booted for the module (with lowered limits in config.toml) and shared; the
test that makes its agent misbehave runs last. Every test hashes a canary directory
beside the destinations before and after: nothing outside a destination may change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import cli
from tests.integration.test_run import wait_until

pytestmark = pytest.mark.integration

COPY_MAX_BYTES = 4 * 1024 * 1024
COPY_MAX_ENTRIES = 300
SERIAL_LOG_MAX = 256 * 1024
CONFIG = f"""
[guest]
copy_max_bytes = "{COPY_MAX_BYTES // 1024}K"
copy_max_entries = {COPY_MAX_ENTRIES}
serial_log_max = "{SERIAL_LOG_MAX // 1024}K"
"""
HOSTILE_TREE = """
set -e
mkdir -p /t/sub
echo ok > /t/ok
echo suid > /t/suid; chmod 4777 /t/suid
echo sgid > /t/sgid; chmod 2775 /t/sgid
echo ww > /t/ww; chmod 666 /t/ww
mkdir /t/wwdir; chmod 1777 /t/wwdir
mkdir /t/planted; echo evil > /t/planted/evil
ln -s /etc/passwd /t/abs-link
ln -s ../../canary /t/up-link
ln -s sub /t/in-link
ln /t/ok /t/hard
mknod /t/null c 1 3
mknod /t/disk b 8 0
mkfifo /t/fifo
"""


@dataclass
class Vm:
    home: Path
    name: str
    instance_id: str
    work: Path  # host directories the tests copy into
    canary: Path


def _tree_hash(root: Path) -> str:
    """Names, kinds, modes and contents below root, links not followed."""
    digest = hashlib.sha256()
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest.update(f"{path.relative_to(root)} {st.st_mode:o} {st.st_nlink}\n".encode())
        if stat.S_ISREG(st.st_mode):
            digest.update(path.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(path).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def vm(shared_state: Path) -> Iterator[Vm]:
    """The tiny image as VM "hostile", in a state directory with lowered limits."""
    home = Path(tempfile.mkdtemp(prefix="cl-hg-", dir="/tmp"))  # short: unix socket paths
    (home / "images").mkdir()
    for builtin in ("tiny", "debian-12"):
        (home / "images" / builtin).symlink_to(shared_state / "images" / builtin)
    (home / "cache").symlink_to(shared_state / "cache")
    (home / "host").mkdir()
    shutil.copy(shared_state / "host" / "accel.json", home / "host" / "accel.json")
    (home / "config.toml").write_text(CONFIG)
    work = home / "work"
    canary = home / "canary"
    canary.mkdir(mode=0o700)
    (canary / "secret").write_text("keep\n")
    try:
        created = cli.run_json(home, "create", "hostile", "--memory", "512M")
        yield Vm(home, "hostile", created["id"], work, canary)
    finally:
        cli.run(home, "delete", "--force", "hostile", check=False)
        wait_until(lambda: _pumps(home) == [], 30, "the serial pump to exit after delete")
        _kill_leftovers(home)
        shutil.rmtree(home, ignore_errors=True)


def _kill_leftovers(home: Path) -> None:
    from cloudlet.driver.qemu.runtime import read_record
    from cloudlet.host import processes

    for run_dir in (home / "run").glob("*"):
        info = read_record(run_dir)
        if info is not None:
            processes.kill_and_wait(info.pid, info.pid_start)


def _pumps(home: Path) -> list[int]:
    return [
        pid
        for pid in cli.our_processes(str(home), ("python",))
        if any("serial_pump" in a for a in (_cmdline(pid)))
    ]


def _cmdline(pid: int) -> list[str]:
    from cloudlet.host import processes

    return processes.cmdline(pid) or []


def _guest(vm: Vm, script: str, timeout: float = 300) -> str:
    return cli.run(vm.home, "exec", vm.name, "--", "sh", "-c", script, timeout=timeout).stdout


def _peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _run_measured(home: Path, *args: str) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of one CLI run, from wait4's rusage."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cli.argv(*args),
            env=cli.env_for(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace"), usage.ru_maxrss * 1024


# ---------------------------------------------------------------- cloudlet cp


def test_cp_out_never_writes_through_links_and_masks_modes(vm: Vm) -> None:
    before = _tree_hash(vm.canary)
    _guest(vm, "mkdir -p /h && echo suid > /h/suid && chmod 4777 /h/suid && ln -sf /h/suid /h/l")
    dest = vm.work / "cp"
    dest.mkdir(parents=True)
    (dest / "planted").symlink_to(vm.canary / "secret")
    refused = cli.run(vm.home, "cp", "hostile:/h/suid", str(dest / "planted"), check=False)
    assert refused.returncode == 2 and "symlink" in refused.stderr, refused.stderr
    ok = cli.run(vm.home, "cp", "hostile:/h/l", str(dest / "copy"))
    assert "copied" in ok.stderr
    assert stat.S_IMODE((dest / "copy").stat().st_mode) & 0o7002 == 0
    device = cli.run(vm.home, "cp", "hostile:/dev/null", str(dest / "null"), check=False)
    assert device.returncode == 2 and "not a regular file" in device.stderr
    assert not (dest / "null").exists()
    assert _tree_hash(vm.canary) == before
    assert (dest / "planted").is_symlink()


def test_cp_out_stops_at_the_byte_limit(vm: Vm) -> None:
    _guest(vm, f"head -c {COPY_MAX_BYTES + 4096} /dev/zero > /root/big")
    dest = vm.work / "cp-big"
    dest.mkdir(parents=True)
    proc = cli.run(vm.home, "cp", "hostile:/root/big", str(dest / "big"), check=False)
    assert proc.returncode == 5, proc.stderr
    assert "byte limit" in proc.stderr and "copy_max_bytes" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # the error and its hint, no traceback
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------- cloudlet run --copy-out


def test_copy_out_of_a_hostile_tree_changes_nothing_outside(vm: Vm) -> None:
    before = _tree_hash(vm.canary)
    dest = vm.work / "tree"
    dest.mkdir(parents=True)
    (dest / "planted").symlink_to(vm.canary)  # the link from issue 12
    (dest / "mine.txt").write_text("the user's\n")
    proc = cli.run(
        vm.home,
        "run", "--copy-out", f"/t:{dest}", "tiny", "--", "sh", "-c", HOSTILE_TREE,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "skipped" in proc.stderr and "a symlink" in proc.stderr, proc.stderr
    assert _tree_hash(vm.canary) == before
    assert stat.S_IMODE(vm.canary.stat().st_mode) == 0o700
    names = sorted(p.name for p in dest.iterdir())
    # "ok" or "hard" (tar sends the second name of a hard link as a link, which is skipped)
    plain = {"mine.txt", "planted", "sgid", "sub", "suid", "ww", "wwdir"}
    assert set(names) - plain in ({"ok"}, {"hard"}), names
    assert (dest / "planted").is_symlink() and (dest / "mine.txt").read_text() == "the user's\n"
    for path in dest.iterdir():
        if not path.is_symlink():
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o7002 == 0, (path.name, oct(mode))
            assert stat.S_ISREG(path.stat().st_mode) or stat.S_ISDIR(path.stat().st_mode)


def test_copy_out_limits_stop_with_a_clear_error(vm: Vm) -> None:
    many, big = vm.work / "many", vm.work / "big"
    script = (
        "mkdir /many /big; i=0; "
        f"while [ $i -lt {COPY_MAX_ENTRIES + 50} ]; do : > /many/f$i; i=$((i+1)); done; "
        f"head -c {COPY_MAX_BYTES + 65536} /dev/zero > /big/blob"
    )
    proc = cli.run(
        vm.home,
        "run", "--copy-out", f"/many:{many}", "--copy-out", f"/big:{big}",
        "tiny", "--", "sh", "-c", script,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"more than {COPY_MAX_ENTRIES} entries" in proc.stderr
    assert "copy_max_entries" in proc.stderr and "copy_max_bytes" in proc.stderr
    assert "byte limit" in proc.stderr
    assert not many.exists() and not big.exists()


# ---------------------------------------------------------------- the serial console


def test_a_flooded_serial_console_keeps_the_log_under_its_cap(vm: Vm) -> None:
    instance = vm.home / "instances" / vm.instance_id
    console = vm.home / "run" / vm.instance_id / "console.sock"
    assert len(_pumps(vm.home)) == 1  # the VM's pump runs, though the CLI that made it exited
    flood = 3 * 1024 * 1024
    _guest(vm, f"head -c {flood * 3 // 4} /dev/urandom | base64 > /dev/ttyS0")
    log, older = instance / "serial.log", instance / "serial.log.1"
    assert older.stat().st_size == SERIAL_LOG_MAX and log.stat().st_size <= SERIAL_LOG_MAX
    # the console still works, and its output reaches the log
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(console))
        sock.settimeout(60)
        _guest(vm, "echo console-still-works > /dev/ttyS0")
        seen = b""
        while b"console-still-works" not in seen:
            seen = seen[-64:] + sock.recv(4096)
    wait_until(lambda: b"console-still-works" in log.read_bytes(), 30, "the marker in serial.log")
    code, _, rss = _run_measured(vm.home, "logs", vm.name)
    assert code == 0
    logs = cli.run(vm.home, "logs", vm.name).stdout
    assert "console-still-works" in logs
    assert SERIAL_LOG_MAX < len(logs.encode()) <= 2 * SERIAL_LOG_MAX
    print(f"\nserial flood {flood >> 20} MiB: log {log.stat().st_size} B + {SERIAL_LOG_MAX} B kept")
    print(f"cloudlet logs peak RSS {rss >> 20} MiB")
    (pump,) = _pumps(vm.home)
    pump_peak = _peak_rss(pump)
    print(f"serial pump peak RSS {pump_peak >> 20} MiB after the flood")
    assert pump_peak < 64 * 1024 * 1024
    # The pump goes with QEMU and comes back with it; the log is kept across the restart.
    cli.run(vm.home, "stop", vm.name)
    assert _pumps(vm.home) == []  # stop waits for it: the log is complete when stop returns
    cli.run(vm.home, "start", vm.name)
    assert len(_pumps(vm.home)) == 1
    assert "console-still-works" in cli.run(vm.home, "logs", vm.name).stdout


# ---------------------------------------------------------------- the agent channel (last)


def test_a_flooding_agent_is_cut_off_with_flat_cli_memory(vm: Vm) -> None:
    code, _, baseline = _run_measured(vm.home, "exec", vm.name, "--", "true")
    assert code == 0
    # The guest replaces its agent (which init respawns) with a line that never ends.
    _guest(
        vm,
        "printf '#!/bin/sh\\nyes AAAAAAAAAAAAAAAA | tr -d \"\\\\n\" > %s\\n' "
        "/dev/virtio-ports/org.qemu.guest_agent.0 > /usr/libexec/cloudlet/qemu-ga-run; "
        "(sleep 1; kill $(pidof qemu-ga)) > /dev/null 2>&1 < /dev/null &",
    )
    deadline = time.monotonic() + 300
    while True:
        code, err, peak = _run_measured(vm.home, "exec", vm.name, "--", "true")
        if code != 0 or time.monotonic() > deadline:
            break
    print(f"\nagent flood: exit {code}; CLI peak RSS {peak >> 20} MiB (baseline {baseline >> 20})")
    assert code == 7, err
    assert "more than" in err and "bytes in one reply" in err, err
    assert len(err.strip().splitlines()) <= 2
    assert peak - baseline < 32 * 1024 * 1024
