"""The QEMU driver refuses to hot-plug into a q35 VM that was booted without spare ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudlet.driver.base import ExtraDisk, RuntimeInfo
from cloudlet.driver.qemu.driver import QemuDriver
from cloudlet.driver.qemu.runtime import write_record
from cloudlet.errors import Conflict
from cloudlet.host import processes


def test_vm_started_without_root_ports_gets_a_clear_error(short_tmp: Path) -> None:
    run_dir = short_tmp / "run" / "vm1"
    run_dir.mkdir(parents=True)
    start = processes.start_time(os.getpid())
    assert start is not None
    # "alive" because the record points at this very process; no QMP is ever reached
    write_record(
        run_dir,
        RuntimeInfo(
            instance_id="vm1", pid=os.getpid(), pid_start=start,
            argv=["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-device", "virtio-rng-pci"],
            qemu_version="7.2", qmp_socket=run_dir / "qmp.sock", agent_socket=run_dir / "qga.sock",
            console_socket=run_dir / "console.sock", serial_log=short_tmp / "serial.log",
            started_at=0.0, accel="tcg",
        ),
    )  # fmt: skip
    driver = QemuDriver(short_tmp / "run")
    with pytest.raises(Conflict, match="hot-plug ports") as refused:
        driver.attach_disk("vm1", ExtraDisk("vx", short_tmp / "v.qcow2", slot=0))
    assert "stop and start it once" in str(refused.value.hint)


def test_qemu_errors_that_mean_a_full_file_system_are_told_apart() -> None:
    from cloudlet.errors import out_of_space

    assert out_of_space("Unable to write to file: No space left on device")
    assert out_of_space("Disk quota exceeded")
    assert not out_of_space("Input/output error")
    assert not out_of_space(None)


def test_qemu_img_on_a_full_file_system_names_what_it_was_writing(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudlet.errors import HostCommandError, OutOfSpace
    from cloudlet.storage import qcow2

    def full(argv: list[str]) -> None:
        raise HostCommandError(argv, 1, stderr="qemu-img: foo.qcow2: No space left on device")

    monkeypatch.setattr(qcow2, "run", full)
    dest = short_tmp / "v.qcow2"
    with pytest.raises(OutOfSpace) as info:
        qcow2.create_blank(dest, 1 << 30)
    assert info.value.path == dest and "no space left" in info.value.message

    def other(argv: list[str]) -> None:
        raise HostCommandError(argv, 1, stderr="qemu-img: Permission denied")

    monkeypatch.setattr(qcow2, "run", other)
    with pytest.raises(HostCommandError):
        qcow2.resize(dest, 2 << 30)
