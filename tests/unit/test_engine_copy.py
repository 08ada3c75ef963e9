"""`cloudlet cp` through the Driver interface: the engine's copy use cases on the fake."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import CreateRequest, Engine
from cloudlet.errors import CapacityExceeded, Conflict, NotFound
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    e.create(CreateRequest(name="web1"))
    return e


def test_copy_to_and_from_a_running_vm(engine: Engine, short_tmp: Path) -> None:
    src = short_tmp / "notes.txt"
    src.write_bytes(b"hello guest\n" * 100)
    reports: list[tuple[int, int]] = []
    copied = engine.copy_to("web1", src, "/root/", progress=lambda *r: reports.append(r))
    assert copied == 1200 and reports[-1] == (1200, 1200)
    assert engine.exec("web1", ["cat", "/root/notes.txt"]).stdout == src.read_bytes()
    back = short_tmp / "back.txt"
    assert engine.copy_from("web1", "/root/notes.txt", back, progress=None) == 1200
    assert back.read_bytes() == src.read_bytes()
    driver = engine.driver
    assert isinstance(driver, FakeDriver)
    # the guest's files are the VM's own: another VM does not see them
    engine.create(CreateRequest(name="web2"))
    with pytest.raises(NotFound, match="does not exist in the guest"):
        engine.copy_from("web2", "/root/notes.txt", short_tmp / "none", progress=None)


def test_copy_from_obeys_the_configured_byte_limit(engine: Engine, short_tmp: Path) -> None:
    src = short_tmp / "big"
    src.write_bytes(b"x" * 5000)
    engine.copy_to("web1", src, "/root/big", progress=None)
    engine.settings = dataclasses.replace(engine.settings, copy_max_bytes=4096)
    with pytest.raises(CapacityExceeded, match="byte limit") as exc:
        engine.copy_from("web1", "/root/big", short_tmp / "out", progress=None)
    assert "copy_max_bytes" in (exc.value.hint or "")
    assert not (short_tmp / "out").exists()


def test_copy_needs_a_running_vm_and_a_host_file(engine: Engine, short_tmp: Path) -> None:
    with pytest.raises(NotFound, match="no file"):
        engine.copy_to("web1", short_tmp / "absent", "/root/", progress=None)
    src = short_tmp / "f"
    src.write_text("x")
    engine.stop("web1")
    with pytest.raises(Conflict):
        engine.copy_to("web1", src, "/root/", progress=None)
    with pytest.raises(Conflict):
        engine.copy_from("web1", "/root/f", short_tmp / "g", progress=None)
    assert not (short_tmp / "g").exists()
