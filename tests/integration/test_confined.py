"""run_confined really confines: the child's own /proc says so, and each limit it hits
is a LimitExceeded (exit 2) naming the file and the limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudlet.errors import HostCommandError, LimitExceeded
from cloudlet.host.qemu_binaries import qemu_img
from cloudlet.host.run import Limits, run_confined
from cloudlet.spec.units import GIB, MIB

pytestmark = pytest.mark.integration

ROOMY = Limits(wall=60, cpu=10, memory=1 * GIB)


def _limits_of_child(limits: Limits) -> dict[str, tuple[str, str]]:
    out = run_confined(["cat", "/proc/self/limits"], limits=limits, what="f").stdout.decode()
    rows = {}
    for line in out.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
        rows[name] = (soft, hard)
    return rows


def test_child_runs_with_the_rlimits() -> None:
    rows = _limits_of_child(Limits(wall=60, cpu=7, memory=768 * MIB, file_size=5 * MIB))
    assert rows["Max cpu time"] == ("7", "8")
    assert rows["Max address space"] == (str(768 * MIB), str(768 * MIB))
    assert rows["Max file size"] == (str(5 * MIB), str(5 * MIB))
    assert rows["Max core file size"] == ("0", "0")


def test_child_drops_root_and_gains_no_privileges() -> None:
    status = run_confined(["cat", "/proc/self/status"], limits=ROOMY, what="f").stdout.decode()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    uids = fields["Uid"].split()
    if os.geteuid() == 0:
        assert uids == ["65534"] * 4
        assert fields["Gid"].split() == ["65534"] * 4
        assert fields["Groups"].strip() == ""
    else:
        assert uids == [str(os.geteuid())] * 4
    assert fields["NoNewPrivs"].strip() == "1"


def test_wall_clock_limit_kills_it() -> None:
    with pytest.raises(
        LimitExceeded, match=r"sleep on disk\.img ran past its time limit \(0\.5 s\)"
    ):
        run_confined(["sleep", "600"], limits=Limits(wall=0.5, cpu=5, memory=GIB), what="disk.img")


def test_cpu_limit_stops_a_spinning_parser() -> None:
    spin = ["sh", "-c", "while :; do :; done"]
    with pytest.raises(LimitExceeded, match=r"ran past its CPU limit \(1 s\)") as err:
        run_confined(spin, limits=Limits(wall=120, cpu=1, memory=GIB), what="x.qcow2")
    assert err.value.exit_code == 2


def test_memory_limit_stops_qemu_img() -> None:
    with pytest.raises(LimitExceeded, match=r"qemu-img on x\.qcow2 ran past its memory limit"):
        run_confined(
            [qemu_img(), "--version"], limits=Limits(wall=60, cpu=5, memory=8 * MIB), what="x.qcow2"
        )


def test_file_size_limit_stops_a_writer(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = ["dd", "if=/dev/zero", f"of=/dev/fd/{fd}", "bs=1M", "count=4"]
        with pytest.raises(LimitExceeded, match=r"file-size limit \(1 MiB\)"):
            run_confined(
                writer,
                limits=Limits(wall=60, cpu=5, memory=GIB, file_size=1 * MIB),
                what="out",
                pass_fds=[fd],
                unprivileged=False,
            )
    finally:
        os.close(fd)
    assert out.stat().st_size <= 1 * MIB


def test_other_failures_stay_host_command_errors() -> None:
    with pytest.raises(HostCommandError, match="exited with 1"):
        run_confined(["false"], limits=ROOMY, what="f")
