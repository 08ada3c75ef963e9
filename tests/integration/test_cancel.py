"""Cancelling driver waits on a real QEMU guest (tiny, TCG or KVM).

A paused guest can neither open its agent port nor answer its agent: every wait on it
would block until its timeout, so a cancel is the only way out. The waits must end
promptly, hold no monitor or agent connection, and leave the VM as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.driver.base import PowerState
from cloudlet.driver.qemu.driver import QemuDriver
from tests.cancelling import cancelled_soon
from tests.integration.tiny_vm import tiny_config

pytestmark = pytest.mark.integration


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def booted(shared_state: Path, short_tmp: Path) -> Iterator[tuple[QemuDriver, str]]:
    """The tiny image started under the QEMU driver (not yet waited for)."""
    config = tiny_config(shared_state, short_tmp, "cancel")
    driver = QemuDriver(short_tmp / "run")
    driver.start(config)
    try:
        yield driver, config.instance_id
    finally:
        driver.force_stop(config.instance_id)
        driver.cleanup(config.instance_id)


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
