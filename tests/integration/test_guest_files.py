"""File copy through qemu-ga against the real tiny guest under QEMU (TCG here)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlet.driver.qemu import guest_files as files
from cloudlet.driver.qemu.driver import QemuDriver
from cloudlet.errors import NotFound
from tests.integration.tiny_vm import tiny_config

pytestmark = pytest.mark.integration

SIZE = 50 * 1024 * 1024


@dataclass
class Guest:
    driver: QemuDriver
    instance_id: str
    agent_socket: Path


@pytest.fixture(scope="module")
def guest(shared_state: Path) -> Iterator[Guest]:
    """The tiny image booted once for this module with 1 GiB of RAM."""
    home = Path(tempfile.mkdtemp(prefix="cl-gf-", dir="/tmp"))  # short: unix socket paths
    config = tiny_config(shared_state, home, "files", cpus=2, memory_mib=1024)
    instance_id = config.instance_id
    driver = QemuDriver(home / "run")
    try:
        info = driver.start(config)
        driver.wait_agent(instance_id, 180)
        yield Guest(driver, instance_id, info.agent_socket)
    finally:
        driver.force_stop(instance_id)
        driver.cleanup(instance_id)
        shutil.rmtree(home, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_50_mib_round_trip_with_checksums(guest: Guest, tmp_path: Path) -> None:
    src = tmp_path / "random.bin"
    with open(src, "wb") as f:
        for _ in range(SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    want = _sha256(src)
    reports: list[tuple[int, int]] = []

    start = time.monotonic()
    copied = files.copy_in(
        guest.agent_socket, src, "/root/", progress=lambda d, t: reports.append((d, t))
    )
    seconds_in = time.monotonic() - start
    assert copied == SIZE and reports[-1] == (SIZE, SIZE)

    result = guest.driver.exec(guest.instance_id, ["sha256sum", "/root/random.bin"], timeout=300)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0].decode() == want
    listing = guest.driver.exec(guest.instance_id, ["ls", "-a", "/root"], timeout=60)
    assert b".cloudlet-part" not in listing.stdout

    back = tmp_path / "back" / "copy.bin"
    back.parent.mkdir()
    start = time.monotonic()
    assert files.copy_out(guest.agent_socket, "/root/random.bin", back) == SIZE
    seconds_out = time.monotonic() - start
    assert _sha256(back) == want
    assert not (back.parent / "copy.bin.part").exists()

    mib = SIZE / (1 << 20)
    print(
        f"\nguest file copy of {mib:.0f} MiB (chunks {files.WRITE_CHUNK // 1024} KiB in, "
        f"{files.READ_CHUNK // 1024} KiB out): "
        f"in {mib / seconds_in:.2f} MiB/s ({seconds_in:.1f} s), "
        f"out {mib / seconds_out:.2f} MiB/s ({seconds_out:.1f} s)"
    )


def test_mode_is_kept_and_missing_files_are_not_found(guest: Guest, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_bytes(b"#!/bin/sh\necho hello from the guest\n")
    script.chmod(0o750)
    files.copy_in(guest.agent_socket, script, "/root/hello.sh")
    mode = guest.driver.exec(guest.instance_id, ["stat", "-c", "%a", "/root/hello.sh"], timeout=60)
    assert mode.stdout.strip() == b"750"
    ran = guest.driver.exec(guest.instance_id, ["/root/hello.sh"], timeout=60)
    assert ran.stdout == b"hello from the guest\n"
    with pytest.raises(NotFound, match="/root/absent"):
        files.copy_out(guest.agent_socket, "/root/absent", tmp_path / "x")
    with pytest.raises(NotFound, match="/nodir"):
        files.copy_in(guest.agent_socket, script, "/nodir/hello.sh")
    listing = guest.driver.exec(guest.instance_id, ["ls", "-a", "/", "/root"], timeout=60)
    assert b".cloudlet-part" not in listing.stdout


def test_empty_file_round_trip(guest: Guest, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert files.copy_in(guest.agent_socket, empty, "/tmp/empty") == 0
    assert files.copy_out(guest.agent_socket, "/tmp/empty", tmp_path / "empty.back") == 0
    assert (tmp_path / "empty.back").read_bytes() == b""
