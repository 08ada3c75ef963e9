"""Cancelling driver waits on a real QEMU guest (tiny, TCG or KVM).

A paused guest can neither open its agent port nor answer its agent: every wait on it
would block until its timeout, so a cancel is the only way out. The waits must end
promptly, hold no monitor or agent connection, and leave the VM as it was.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.driver.base import LaunchConfig, PowerState
from cloudlet.driver.qemu.driver import QemuDriver
from tests.cancelling import cancelled_soon

pytestmark = pytest.mark.integration


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def booted(shared_state: Path, short_tmp: Path) -> Iterator[tuple[QemuDriver, str]]:
    """The tiny image started under the QEMU driver (not yet waited for)."""
    from cloudlet.config import Paths
    from cloudlet.images.store import ImageStore
    from cloudlet.storage.qcow2 import create_overlay

    image = ImageStore(Paths(shared_state).images, shared_state / "cache" / "debs").get("tiny")
    accel = json.loads((shared_state / "host" / "accel.json").read_text())["accel"]
    iid = str(uuid.uuid4())
    config = LaunchConfig(
        instance_id=iid,
        name="cancel",
        arch="x86_64",
        accel=accel,
        cpus=1,
        memory_mib=256,
        disk=short_tmp / "disk.qcow2",
        disk_format="qcow2",
        runtime_dir=short_tmp / "run" / iid,
        serial_log=short_tmp / "serial.log",
        kernel=image.path / "vmlinuz",
        initrd=image.path / "initrd.img",
        cmdline=image.cmdline,
        network_restrict=True,
    )
    create_overlay(image.disk, image.disk_format, config.disk)
    driver = QemuDriver(short_tmp / "run")
    driver.start(config)
    try:
        yield driver, iid
    finally:
        driver.force_stop(iid)
        driver.cleanup(iid)


def test_cancelled_waits_on_a_paused_guest_end_promptly_and_leave_it_fine(
    booted: tuple[QemuDriver, str],
) -> None:
    driver, iid = booted
    # Paused at once: the agent's port is not open yet, so wait_agent waits on QMP events.
    driver.pause(iid)
    fds = _open_fds()
    with cancelled_soon(0.5) as token:
        driver.wait_agent(iid, 600, cancel=token)
    assert _open_fds() == fds  # the monitor connection is closed
    assert driver.power_state(iid) == PowerState.PAUSED

    driver.resume(iid)
    driver.wait_agent(iid, 180)
    # Paused again with the port open: now the wait is on the agent's own answers.
    driver.pause(iid)
    fds = _open_fds()
    with cancelled_soon(0.5) as token:
        driver.wait_agent(iid, 600, cancel=token)
    with cancelled_soon(0.5) as token:
        driver.wait_shutdown(iid, 600, cancel=token)
    assert _open_fds() == fds  # no agent socket left open
    assert driver.power_state(iid) == PowerState.PAUSED

    # The VM is as it was: it runs on, its agent answers, it still powers off cleanly.
    driver.resume(iid)
    assert driver.exec(iid, ["echo", "fine"], timeout=60).stdout == b"fine\n"
    driver.request_shutdown(iid)
    assert driver.wait_shutdown(iid, 120)
