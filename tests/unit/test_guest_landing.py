"""Copies out of a hostile guest, without a guest: the fd-based writer and the tar receiver.

Each test builds what a guest could send (or what could already sit in the
destination) on a temp dir and checks that nothing outside the destination changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import stat
import tarfile
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from cloudlet.errors import CapacityExceeded, CloudletError, EntryRefused, GuestError
from cloudlet.guest import tree_out
from cloudlet.guest.landing import CopyLimits, Landing, check_name
from cloudlet.process import copies
from cloudlet.spec.process import CopySpec


def _tree_hash(root: Path) -> str:
    """Names, kinds, modes and contents of everything below root (links not followed)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest.update(f"{path.relative_to(root)} {st.st_mode:o}\n".encode())
        if stat.S_ISREG(st.st_mode):
            digest.update(path.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(path).encode())
    digest.update(f"{root.stat().st_mode:o}".encode())
    return digest.hexdigest()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A 0700 directory beside the destination that no copy may touch."""
    path = tmp_path / "canary"
    path.mkdir(mode=0o700)
    (path / "secret").write_text("keep")
    path.chmod(0o700)
    return path


def _reader(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def _landing(dest: Path, **limits: int) -> Landing:
    dest.mkdir(exist_ok=True)
    return Landing(dest, CopyLimits(**limits))


# ---------------------------------------------------------------- the writer


def test_a_symlink_already_in_the_destination_is_never_followed(
    tmp_path: Path, canary: Path
) -> None:
    before = _tree_hash(canary)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(canary)  # a directory name that leads out
    (dest / "file").symlink_to(canary / "secret")  # a file name that leads out
    with _landing(dest) as landing:
        for parts in [("sub",), ("sub", "x")]:
            with pytest.raises(EntryRefused, match="symlink"):
                landing.directory(parts, 0o777)
        for parts in [("sub", "new"), ("file",), ("sub", "deeper", "f")]:
            with pytest.raises(EntryRefused, match="symlink"):
                landing.file(parts, 0o777, _reader(b"pwned").read)
    assert _tree_hash(canary) == before
    assert (dest / "sub").is_symlink() and (dest / "file").is_symlink()
    assert sorted(p.name for p in dest.iterdir()) == ["file", "sub"]


def test_a_dangling_symlink_and_a_directory_are_not_replaced_by_a_file(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "dangling").symlink_to(tmp_path / "would-be-made")
    (dest / "dir").mkdir()
    with _landing(dest) as landing:
        for name in ("dangling", "dir"):
            with pytest.raises(EntryRefused):
                landing.file((name,), 0o644, _reader(b"x").read)
    assert not (tmp_path / "would-be-made").exists()
    assert (dest / "dangling").is_symlink() and (dest / "dir").is_dir()
    assert not [p for p in dest.iterdir() if p.name.startswith(".cloudlet-part-")]


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/etc", "nul\0x"])
def test_names_that_climb_or_hide_are_refused(tmp_path: Path, canary: Path, name: str) -> None:
    before = _tree_hash(canary)
    with pytest.raises(EntryRefused):
        check_name(name)
    with _landing(tmp_path / "dest") as landing:
        with pytest.raises(EntryRefused):
            landing.file((name,), 0o644, _reader(b"x").read)
        with pytest.raises(EntryRefused):
            landing.directory((name, "f"), 0o755)
    assert _tree_hash(canary) == before
    assert list((tmp_path / "dest").iterdir()) == []


def test_modes_lose_setuid_setgid_sticky_and_world_write(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with _landing(tmp_path / "dest") as landing:
            landing.file(("suid",), 0o7777, _reader(b"#!/bin/sh\n").read)
            landing.directory(("open",), 0o1777)
            landing.directory(("locked",), 0o000)
            landing.file(("locked", "inside"), 0o666, _reader(b"x").read)
    finally:
        os.umask(old)
    dest = tmp_path / "dest"
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o775
    assert stat.S_IMODE((dest / "open").stat().st_mode) == 0o775
    # The owner keeps rwx, or the copy could not fill a directory the guest made 0000.
    assert stat.S_IMODE((dest / "locked").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "locked" / "inside").stat().st_mode) == 0o664


def test_directories_the_copy_did_not_make_keep_their_modes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "mine").mkdir(parents=True)
    (dest / "mine").chmod(0o700)
    dest.chmod(0o750)
    with _landing(dest) as landing:
        landing.directory(("mine",), 0o777)
        landing.file(("mine", "f"), 0o644, _reader(b"x").read)
    assert stat.S_IMODE((dest / "mine").stat().st_mode) == 0o700
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750


def test_an_existing_regular_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_text("old")
    os.link(dest / "f", tmp_path / "other-name")  # a hard link outside keeps the old bytes
    with _landing(dest) as landing:
        landing.file(("f",), 0o644, _reader(b"new").read)
        assert landing.replaced == 1
    assert (dest / "f").read_text() == "new"
    assert (tmp_path / "other-name").read_text() == "old"


def test_the_byte_limit_stops_the_copy_and_removes_what_it_made(
    tmp_path: Path, canary: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "kept").write_text("the user's")
    with (
        pytest.raises(CapacityExceeded, match=r"larger than .*byte limit") as caught,
        _landing(dest, max_bytes=10_000) as landing,
    ):
        landing.file(("a", "b", "one"), 0o644, _reader(b"x" * 6000).read)
        landing.file(("a", "two"), 0o644, _reader(b"y" * 6000).read)
    assert "copy_max_bytes" in (caught.value.hint or "")
    assert sorted(p.name for p in dest.iterdir()) == ["kept"]


def test_the_entry_limit_stops_the_copy(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with (
        pytest.raises(CapacityExceeded, match="more than 3 entries") as caught,
        _landing(dest, max_entries=3) as landing,
    ):
        for index in range(5):
            landing.count_entry()
            landing.file((f"f{index}",), 0o644, _reader(b"").read)
    assert "copy_max_entries" in (caught.value.hint or "")
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------- the tar receiver


def _tar(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _receive(stream: bytes, spec: CopySpec, limits: CopyLimits | None = None) -> None:
    """Play the guest: send ``stream`` from a thread (a refusal may stop reading early)."""
    host, guest = socket.socketpair()

    def send() -> None:
        with guest, contextlib.suppress(OSError):
            guest.sendall(stream)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        copies.receive_tree(host, spec, limits)()
    finally:
        host.close()
        sender.join()


def test_every_hostile_entry_kind_is_skipped_and_named(tmp_path: Path, canary: Path) -> None:
    before = _tree_hash(canary)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "planted").symlink_to(canary)  # already in the destination
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_member("r", tarfile.DIRTYPE, mode=0o777), None),
        (_member("r/ok", size=2, mode=0o4755), b"ok"),
        (_member("r/ww", size=2, mode=0o666), b"ww"),
        (_member("r/up", tarfile.SYMTYPE, linkname="../../canary"), None),
        (_member("r/abs", tarfile.SYMTYPE, linkname=str(canary)), None),
        (_member("r/hard", tarfile.LNKTYPE, linkname="r/ok"), None),
        (_member("r/hard-out", tarfile.LNKTYPE, linkname=str(canary / "secret")), None),
        (_member("r/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        (_member("r/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
        (_member("r/fifo", tarfile.FIFOTYPE), None),
        (_member("r/planted/evil", size=4), b"evil"),
        (_member("r/planted", tarfile.DIRTYPE, mode=0o777), None),
        (_member("r/../canary/evil", size=4), b"evil"),
        (_member("/etc/evil", size=4), b"evil"),
        (_member("other/x", size=4), b"evil"),
    ]
    with pytest.raises(CloudletError, match="skipped 12 entries") as caught:
        _receive(_tar(members), CopySpec(host=dest, guest="/r"))
    assert "a symlink" in caught.value.message and "hard link" in caught.value.message
    assert _tree_hash(canary) == before
    assert sorted(p.name for p in dest.iterdir()) == ["ok", "planted", "ww"]
    assert stat.S_IMODE((dest / "ok").stat().st_mode) & 0o7002 == 0
    assert stat.S_IMODE((dest / "ww").stat().st_mode) & 0o002 == 0
    assert (dest / "planted").is_symlink()


def test_a_single_file_lands_at_the_host_path_but_not_through_a_link(
    tmp_path: Path, canary: Path
) -> None:
    stream = _tar([(_member("report.txt", size=5), b"hello")])
    _receive(stream, CopySpec(host=tmp_path / "new" / "r.txt", guest="/tmp/report.txt"))
    assert (tmp_path / "new" / "r.txt").read_text() == "hello"
    (tmp_path / "link.txt").symlink_to(canary / "secret")
    with pytest.raises(CloudletError, match="skipped 1 entries"):
        _receive(stream, CopySpec(host=tmp_path / "link.txt", guest="/tmp/report.txt"))
    assert (canary / "secret").read_text() == "keep"


def test_limits_stop_a_tree_and_nothing_of_it_stays(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    many = [(_member(f"r/d{i}/f", size=1), b"x") for i in range(50)]
    with pytest.raises(CapacityExceeded, match="more than 20 entries"):
        _receive(_tar(many), CopySpec(dest, "/r"), CopyLimits(max_entries=20))
    big = [(_member(f"r/f{i}", size=40_000), b"z" * 40_000) for i in range(5)]
    with pytest.raises(CapacityExceeded, match="byte limit"):
        _receive(_tar(big), CopySpec(dest, "/r"), CopyLimits(max_bytes=100_000))
    assert not dest.exists()  # it made the destination, so it took it away again
    dest.mkdir()
    with pytest.raises(CapacityExceeded, match="byte limit"):
        _receive(_tar(big), CopySpec(dest, "/r"), CopyLimits(max_bytes=100_000))
    assert list(dest.iterdir()) == []  # the user's directory stays, empty as it was


def test_a_huge_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    header = _member("r/x", size=0)
    header.pax_headers = {"comment": "c" * (tree_out.MAX_META + 10)}
    with pytest.raises(GuestError, match="tar header of"):
        _receive(_tar([(header, b"")]), CopySpec(tmp_path / "out", "/r"))


def test_limits_come_from_config_toml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudlet.config import Settings
    from cloudlet.errors import InvalidInput

    monkeypatch.delenv("CLOUDLET_COPY_MAX_BYTES", raising=False)
    monkeypatch.delenv("CLOUDLET_COPY_MAX_ENTRIES", raising=False)
    defaults = Settings.load(tmp_path)
    assert (defaults.copy_max_bytes, defaults.copy_max_entries) == (10 * 1024**3, 100_000)
    (tmp_path / "config.toml").write_text('[guest]\ncopy_max_bytes = "2G"\ncopy_max_entries = 50\n')
    loaded = Settings.load(tmp_path)
    assert (loaded.copy_max_bytes, loaded.copy_max_entries) == (2 * 1024**3, 50)
    monkeypatch.setenv("CLOUDLET_COPY_MAX_ENTRIES", "7")
    assert Settings.load(tmp_path).copy_max_entries == 7
    monkeypatch.setenv("CLOUDLET_COPY_MAX_ENTRIES", "-1")
    with pytest.raises(InvalidInput, match="copy_max_entries"):
        Settings.load(tmp_path)


def test_directories_made_for_a_deep_name_count_as_entries(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with (
        pytest.raises(CapacityExceeded, match="more than 50 entries"),
        _landing(dest, max_entries=50) as landing,
    ):
        landing.count_entry()
        landing.file(("d",) * 100 + ("f",), 0o644, _reader(b"x").read)
    assert list(dest.iterdir()) == []


def test_a_tree_deeper_than_the_bound_is_skipped(tmp_path: Path) -> None:
    with _landing(tmp_path / "dest") as landing, pytest.raises(EntryRefused, match="deep"):
        landing.file(("d",) * 1000 + ("f",), 0o644, _reader(b"x").read)
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_name_longer_than_the_file_system_allows_is_skipped(tmp_path: Path) -> None:
    with _landing(tmp_path / "dest") as landing, pytest.raises(EntryRefused, match="longer than"):
        landing.file(("x" * 256,), 0o644, _reader(b"x").read)
