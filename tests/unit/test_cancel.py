"""The progress type, the cancel token, and the waits below the engine that honour it."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.backup.chunking import Extent, build_chunks
from cloudlet.backup.store import BackupStore
from cloudlet.driver.base import LaunchConfig, PowerState
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine import access, locks
from cloudlet.errors import Busy, Cancelled, CloudletError
from cloudlet.progress import (
    CancelToken,
    ProgressEvent,
    byte_callback,
    check,
    pause,
    stage_callback,
)
from tests.cancelling import cancelled_soon


def test_token_starts_clear_and_keeps_the_first_reason() -> None:
    token = CancelToken()
    assert not token.cancelled
    token.raise_if_cancelled()
    assert token.wait(0.01) is False
    token.cancel("first")
    token.cancel("second")
    assert token.cancelled and token.reason == "first"
    with pytest.raises(Cancelled, match="first") as caught:
        token.raise_if_cancelled()
    assert (caught.value.code, caught.value.exit_code, caught.value.http_status) == (
        "cancelled",
        130,
        499,
    )
    assert isinstance(caught.value, CloudletError)


def test_wait_returns_early_when_another_thread_cancels() -> None:
    token = CancelToken()
    threading.Timer(0.2, token.cancel).start()
    start = time.monotonic()
    assert token.wait(30) is True
    assert time.monotonic() - start < 5
    assert token.reason  # a default reason when none was given


def test_check_and_pause_take_no_token_too() -> None:
    check(None)
    pause(None, 0.01)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        check(token)
    start = time.monotonic()
    with pytest.raises(Cancelled):
        pause(token, 30)
    assert time.monotonic() - start < 1


def test_adapters_feed_one_sink() -> None:
    seen: list[ProgressEvent] = []
    stage = stage_callback(seen.append)
    byte = byte_callback(seen.append, "downloading")
    assert stage is not None and byte is not None
    stage("booting")
    byte(3, 10)
    byte(4, None)
    assert seen == [
        ProgressEvent("booting"),
        ProgressEvent("downloading", 3, 10),
        ProgressEvent("downloading", 4, None),
    ]
    assert stage_callback(None) is None and byte_callback(None, "x") is None


# ---------------------------------------------------------------- locks
def test_lock_wait_stops_when_cancelled_and_the_lock_is_not_taken(tmp_path: Path) -> None:
    with (
        locks.hold(tmp_path, "vm1"),
        cancelled_soon() as token,
        locks.hold(tmp_path, "vm1", wait=60, cancel=token),
    ):
        pytest.fail("the lock was taken while another holder had it")
    # Nobody holds it now: neither the holder (gone) nor the cancelled waiter.
    assert locks.is_free(tmp_path, "vm1")


def test_lock_wait_is_per_call(tmp_path: Path) -> None:
    with locks.hold(tmp_path, "vm1"):
        start = time.monotonic()
        with pytest.raises(Busy), locks.hold(tmp_path, "vm1", wait=0.2):
            pass
        assert time.monotonic() - start < 5


def test_a_cancelled_token_takes_no_free_lock(tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled), locks.hold(tmp_path, "vm1", cancel=token):
        pass
    assert locks.is_free(tmp_path, "vm1")


def test_lock_file_descriptor_is_closed_after_a_cancel(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    fd = os.open(tmp_path / "vm1.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with cancelled_soon(0.1) as token, locks.hold(tmp_path, "vm1", cancel=token):
            pass
    finally:
        os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before


# ---------------------------------------------------------------- fake driver
def _fake_vm(tmp_path: Path) -> tuple[FakeDriver, str]:
    driver = FakeDriver()
    config = LaunchConfig(
        instance_id="i1",
        name="vm",
        arch="x86_64",
        accel="tcg",
        cpus=1,
        memory_mib=256,
        disk=tmp_path / "disk.qcow2",
        disk_format="qcow2",
        runtime_dir=tmp_path / "run",
        serial_log=tmp_path / "serial.log",
    )
    driver.start(config)
    return driver, "i1"


def test_fake_waits_answer_at_once_unless_the_guest_hangs(tmp_path: Path) -> None:
    driver, iid = _fake_vm(tmp_path)
    start = time.monotonic()
    driver.wait_agent(iid, 60)
    assert driver.wait_shutdown(iid, 60) is False
    assert time.monotonic() - start < 1
    driver.hang(iid)
    with cancelled_soon() as token:
        driver.wait_agent(iid, 60, cancel=token)
    with cancelled_soon() as token:
        driver.exec(iid, ["true"], timeout=60, cancel=token)
    assert driver.power_state(iid) == PowerState.RUNNING


def test_cloud_init_wait_is_cancelled(tmp_path: Path) -> None:
    driver, iid = _fake_vm(tmp_path)
    driver.hang(iid)
    with cancelled_soon() as token:
        access.wait_cloud_init(driver, iid, 600, cancel=token)
    driver.hang(iid, False)
    assert driver.exec(iid, ["true"], timeout=5).exit_code == 0


def test_ssh_banner_wait_is_cancelled() -> None:
    # A port that accepts but never says anything, like a guest whose sshd is not up.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        with cancelled_soon() as token:
            access.wait_ssh_banner(server.getsockname()[1], 600, lambda: True, cancel=token)
    finally:
        server.close()


# ---------------------------------------------------------------- backup chunks
def test_build_chunks_stops_between_chunks_and_names_what_it_wrote(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "store", tmp_path / "key")
    store.ensure()
    chunk = 4096
    size = 1000 * chunk
    created: set[str] = set()
    gate = threading.Event()

    def extents() -> Iterator[Extent]:
        for i in range(1000):
            if i == 10:
                gate.set()
            time.sleep(0.01)
            yield (i * chunk, i.to_bytes(4, "big") * (chunk // 4), chunk)

    token = CancelToken()
    threading.Thread(target=lambda: gate.wait(5) and token.cancel("stop")).start()
    start = time.monotonic()
    with pytest.raises(Cancelled, match="stop"):
        build_chunks(
            store, extents(), size, None, backup="b1", chunk_size=chunk, created=created,
            cancel=token,
        )  # fmt: skip
    assert time.monotonic() - start < 5
    # Every chunk written is known to the caller, so it can be undone; not all were written.
    assert 5 <= len(created) < 900
    assert all(store.get(digest, backup="b1") for digest in created)


def test_the_first_ctrl_c_cancels_the_call_and_the_second_interrupts() -> None:
    """The CLI's long commands: Ctrl-C cancels the engine call's token (it then cleans
    up and raises Cancelled); a second Ctrl-C is the usual KeyboardInterrupt."""
    import signal

    from cloudlet.cli.signals import cancel_on_interrupt
    from cloudlet.engine import call_options

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), cancel_on_interrupt() as token:
        assert call_options.cancel_token() is token and not token.cancelled
        os.kill(os.getpid(), signal.SIGINT)
        assert token.wait(5) and token.reason == "interrupted (Ctrl-C)"
        os.kill(os.getpid(), signal.SIGINT)
        token.wait(5)
    assert signal.getsignal(signal.SIGINT) is before
    assert call_options.cancel_token() is None


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    """A CLI started in the background (Ctrl-C ignored) does not start catching it."""
    import signal

    from cloudlet.cli.signals import cancel_on_interrupt

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cancel_on_interrupt() as token:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not token.wait(0.2)
    finally:
        signal.signal(signal.SIGINT, before)
