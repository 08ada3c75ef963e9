"""The serial log pump without QEMU: a pipe, a flood, and a log that stays capped."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from cloudlet.driver.qemu import serial_pump
from cloudlet.engine.access import read_serial_log

CAP = 256 * 1024


def _flood(write_fd: int, total: int) -> bytes:
    """Play a guest printing ``total`` bytes to its console; return what it sent."""
    sent = bytearray()
    block = 0
    with os.fdopen(write_fd, "wb") as pipe:
        while len(sent) < total:
            line = hashlib.sha256(str(block).encode()).hexdigest().encode() * 100 + b"\n"
            pipe.write(line)
            sent += line
            block += 1
    return bytes(sent)


def test_a_flood_keeps_the_log_under_its_cap_and_keeps_the_newest_bytes(tmp_path: Path) -> None:
    log_path = tmp_path / "serial.log"
    log_path.write_bytes(b"from the previous boot\n")
    read_fd, write_fd = os.pipe()
    result: list[bytes] = []
    guest = threading.Thread(target=lambda: result.append(_flood(write_fd, 5 * 1024 * 1024)))
    guest.start()
    log = serial_pump.CappedLog(log_path, CAP)
    try:
        serial_pump.pump(read_fd, log)
    finally:
        log.close()
        os.close(read_fd)
        guest.join()
    sent = b"from the previous boot\n" + result[0]
    older = serial_pump.rotated(log_path)
    assert log_path.stat().st_size <= CAP and older.stat().st_size == CAP
    kept = read_serial_log(log_path)
    assert kept is not None and sent.endswith(kept) and len(kept) > CAP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serial.log", "serial.log.1"]


def test_a_log_already_at_its_cap_is_rotated_before_the_first_write(tmp_path: Path) -> None:
    log_path = tmp_path / "serial.log"
    log_path.write_bytes(b"a" * CAP)
    log = serial_pump.CappedLog(log_path, CAP)
    log.write(b"new")
    log.close()
    assert log_path.read_bytes() == b"new"
    assert serial_pump.rotated(log_path).read_bytes() == b"a" * CAP


def test_the_log_is_not_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "serial.log").symlink_to(target)
    with pytest.raises(OSError):
        serial_pump.CappedLog(tmp_path / "serial.log", CAP)
    assert target.read_text() == "keep"


def test_the_pump_exits_when_its_log_cannot_be_opened(tmp_path: Path) -> None:
    # The VM was deleted before the pump started: it gives up before reading anything.
    assert serial_pump.main([str(tmp_path / "gone" / "serial.log"), str(CAP)]) == 1
    assert serial_pump.main(["only-one-argument"]) == 2


def test_read_serial_log_without_a_log_is_none(tmp_path: Path) -> None:
    assert read_serial_log(tmp_path / "serial.log") is None


def test_finish_is_quiet_when_the_pump_is_gone_or_unrecorded(tmp_path: Path) -> None:
    pid_file = tmp_path / "serial-pump.pid"
    serial_pump.finish(pid_file)  # never started (a VM from before pumps)
    pid_file.write_text("not a pid\n")
    serial_pump.finish(pid_file)
    pid_file.write_text(f"{2**22 + 7} 12345\n")  # above any pid_max: long gone
    serial_pump.finish(pid_file, timeout=1.0)
