"""`cloudlet cp` through the Driver interface: the engine's copy use cases on the fake."""

from __future__ import annotations

import base64
import dataclasses
import io
import struct
import tarfile
from pathlib import Path

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.driver.fake.guest_fs import FakeGuestFS
from cloudlet.engine.engine import Engine
from cloudlet.errors import CapacityExceeded, Conflict, GuestError, InvalidInput, NotFound
from cloudlet.guest.accounts import GuestOwner
from cloudlet.spec.document import AccessDoc, VMBody
from tests.fakes import create_local, make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    e.create("web1", VMBody())
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
    engine.create("web2", VMBody())
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
    with pytest.raises(NotFound, match="absent does not exist on this host"):
        engine.copy_to("web1", short_tmp / "absent", "/root/", progress=None)
    # a directory is not "missing": it is one to copy as a tree
    with pytest.raises(InvalidInput, match="is a directory") as exc:
        engine.copy_to("web1", short_tmp, "/root/", progress=None)
    assert "recursively" in (exc.value.hint or "")
    src = short_tmp / "f"
    src.write_text("x")
    engine.stop("web1")
    with pytest.raises(Conflict):
        engine.copy_to("web1", src, "/root/", progress=None)
    with pytest.raises(Conflict):
        engine.copy_from("web1", "/root/f", short_tmp / "g", progress=None)
    assert not (short_tmp / "g").exists()


# ---------------------------------------------------------------- trees, ~ and owners


def _tree(root: Path) -> None:
    (root / "sub dir" / "deeper").mkdir(parents=True)
    (root / "a file.txt").write_bytes(b"spaces\n")
    (root / "sub dir" / "deeper" / "data.bin").write_bytes(bytes(range(256)) * 40)
    (root / "sub dir" / "link").symlink_to("deeper/data.bin")


def _fs(engine: Engine, name: str) -> FakeGuestFS:
    driver = engine.driver
    assert isinstance(driver, FakeDriver)
    return driver.guest_fs(engine.show(name).id)


def test_a_tree_goes_in_and_comes_back_the_same(engine: Engine, short_tmp: Path) -> None:
    src = short_tmp / "proj"
    _tree(src)
    reports: list[tuple[int, int]] = []
    result = engine.copy_tree_to("web1", src, "~/", progress=lambda *r: reports.append(r))
    assert (result.files, result.dirs, result.data_bytes) == (2, 3, 7 + 10240)
    assert reports[-1] == (result.data_bytes, result.data_bytes)
    fs = _fs(engine, "web1")
    assert fs.read("/root/proj/sub dir/deeper/data.bin") == bytes(range(256)) * 40
    assert fs.links["/root/proj/sub dir/link"] == "deeper/data.bin"
    # a second copy to the same place is refused: trees are never merged
    with pytest.raises(InvalidInput, match="already exists in the guest"):
        engine.copy_tree_to("web1", src, "/root/", progress=None)

    out = short_tmp / "out"
    out.mkdir()
    back = engine.copy_tree_from("web1", "proj", out, progress=None)  # relative: below ~
    assert (out / "proj" / "a file.txt").read_bytes() == b"spaces\n"
    assert (out / "proj" / "sub dir" / "deeper" / "data.bin").read_bytes() == bytes(range(256)) * 40
    assert back.skipped == ("./sub dir/link (a symlink)",)
    assert not (out / "proj" / "sub dir" / "link").exists()
    # a file with -r is a tree of one file
    one = engine.copy_tree_from("web1", "~/proj/a file.txt", short_tmp / "one.txt", progress=None)
    assert one.files == 1 and (short_tmp / "one.txt").read_bytes() == b"spaces\n"


def test_files_belong_to_the_login_user_unless_told(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(short_tmp))
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    key = short_tmp / "id_me.pub"
    key.write_text(f"ssh-ed25519 {base64.b64encode(blob).decode()} me\n")
    engine = make_fake_engine(short_tmp / "home")
    create_local(engine, "db1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=[str(key)])))
    fs = _fs(engine, "db1")
    fs.put("/etc/passwd", b"root:x:0:0::/root:/bin/sh\ndebian:x:1000:1001::/home/debian:/bin/sh\n")
    fs.put("/etc/group", b"root:x:0:\ndebian:x:1001:\nstaff:x:50:\n")
    fs.dirs.add("/home/debian")
    src = short_tmp / "f.txt"
    src.write_text("x")
    engine.copy_to("db1", src, "~/f.txt", progress=None)
    assert fs.owner("/home/debian/f.txt") == GuestOwner(1000, 1001)
    engine.copy_to("db1", src, "/tmp/", progress=None, owner="root:staff")
    assert fs.owner("/tmp/f.txt") == GuestOwner(0, 50)
    tree = short_tmp / "t"
    _tree(tree)
    engine.copy_tree_to("db1", tree, "~", progress=None)
    assert fs.owner("/home/debian/t/sub dir/deeper") == GuestOwner(1000, 1001)
    assert fs.owner("/home/debian/t/a file.txt") == GuestOwner(1000, 1001)
    engine.copy_tree_to("db1", tree, "/tmp/t2", progress=None, owner="4000:4000")
    assert fs.owner("/tmp/t2/sub dir/deeper/data.bin") == GuestOwner(4000, 4000)
    for bad, error in (("nobody", NotFound), ("a b", InvalidInput), ("debian:wheel", NotFound)):
        with pytest.raises(error):
            engine.copy_to("db1", src, "/tmp/bad", progress=None, owner=bad)
    assert not fs.exists("/tmp/bad")


def test_a_hostile_guest_tree_lands_nothing(engine: Engine, short_tmp: Path) -> None:
    fs = _fs(engine, "web1")
    fs.dirs.add("/srv")
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name in (".", "./ok", "./../escaped"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name == "." else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(b""))
    fs.tar_output["/srv"] = evil.getvalue()
    out = short_tmp / "out"
    out.mkdir()
    with pytest.raises(GuestError, match="outside the copied directory"):
        engine.copy_tree_from("web1", "/srv", out, progress=None)
    assert list(out.iterdir()) == [] and not (short_tmp / "escaped").exists()
