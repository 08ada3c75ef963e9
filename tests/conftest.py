"""Shared fixtures: a subprocess guard for unit tests, fake and real engines."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cloudlet import logs
from cloudlet.host import run as host_run


class SubprocessForbidden(AssertionError):
    pass


def _forbid(argv: Sequence[str]) -> None:
    raise SubprocessForbidden(f"unit test tried to run {list(argv)!r}; mark it integration")


@pytest.fixture(autouse=True)
def _subprocess_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Unit tests may not start processes; integration tests may."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    host_run.set_guard(_forbid)

    class _NoPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: object, *a: object, **k: object) -> None:
            raise SubprocessForbidden(f"unit test tried to start {args!r}; mark it integration")

    monkeypatch.setattr(subprocess, "Popen", _NoPopen)
    try:
        yield
    finally:
        host_run.set_guard(None)


@pytest.fixture(autouse=True)
def _own_state_directory(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A unit test that reaches the real engine factory gets an empty state directory of
    its own, never the host's (whose database another checkout may have migrated)."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="cl-home-", dir="/tmp"))
    monkeypatch.setenv("CLOUDLET_HOME", str(home))
    try:
        yield
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """open_engine sets the process's umask to 077 (right for the CLI, which exits):
    a test that opens an engine in-process must not leave it to later tests, whose
    files (a namespace's resolv.conf, say) would become unreadable to other users."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(autouse=True)
def _log_handlers_detached() -> Iterator[None]:
    """An engine a test opens logs to its own state directory: never into the next test."""
    yield
    logs.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths must stay under 108 bytes)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cl-", dir="/tmp"))
    path.chmod(0o711)  # QEMU runs as a per-VM user: it must be able to traverse to the state
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- real QEMU, shared per session
TEST_CACHE = Path(os.environ.get("CLOUDLET_TEST_CACHE", "/var/cache/cloudlet-test"))


@pytest.fixture(scope="session")
def shared_state() -> Path:
    """A state directory whose built images and KVM verdict every real-QEMU test reuses.

    Lives in CLOUDLET_TEST_CACHE so images are built once per machine, not per run.
    """
    from cloudlet.config import Paths, Settings
    from cloudlet.engine.factory import accel_for
    from cloudlet.images.store import ImageStore

    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    settings = Settings(paths=Paths(TEST_CACHE / "state"))
    settings.paths.ensure()
    # Test homes reach the built images through links: every VM's QEMU user must be able
    # to pass through the cache (the images themselves are made group-readable).
    for directory in (TEST_CACHE, settings.paths.home, settings.paths.images):
        directory.chmod(0o755)
    images = ImageStore(settings.paths.images, settings.paths.cache / "debs")
    accel_for(settings, images)(images.get("tiny"))  # probe KVM once (cached in host/accel.json)
    return settings.paths.home


@pytest.fixture
def cloudlet_home(shared_state: Path, short_tmp: Path) -> Iterator[Path]:
    """A fresh state directory per test that shares the session's images and KVM verdict."""
    home = short_tmp / "h"
    home.mkdir()
    # Built-in images are shared (built once per machine); imports stay per test.
    (home / "images").mkdir()
    for builtin in ("tiny", "debian-12"):
        (shared_state / "images" / builtin).mkdir(parents=True, exist_ok=True)
        (home / "images" / builtin).symlink_to(shared_state / "images" / builtin)
    (home / "cache").symlink_to(shared_state / "cache")
    (home / "host").mkdir()
    shutil.copy(shared_state / "host" / "accel.json", home / "host" / "accel.json")
    yield home
    _kill_leftover_vms(home)


def _kill_leftover_vms(home: Path) -> None:
    """Stop, by recorded pid, any QEMU a failed test left behind."""
    from cloudlet.driver.qemu.runtime import read_record
    from cloudlet.host import processes

    for run_dir in (home / "run").glob("*"):
        info = read_record(run_dir)
        if info is not None:
            processes.kill_and_wait(info.pid, info.pid_start)
