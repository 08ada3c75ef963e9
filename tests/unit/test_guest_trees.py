"""Directory trees as tar streams: what goes into a guest is checked, what comes out is
landed through guest.landing and trusted in nothing."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from cloudlet.errors import CapacityExceeded, GuestError, InvalidInput, NotFound
from cloudlet.guest import tree_in, tree_out
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import TreeCopy
from cloudlet.guest.landing import CopyLimits
from tests.tree_hash import tree_hash as tree_digest


def _make_tree(root: Path) -> None:
    (root / "a" / "b c" / "d").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top\n")
    (root / "a" / "file with spaces.bin").write_bytes(os.urandom(70_000))
    (root / "a" / "b c" / "d" / "deep").write_bytes(b"deep\n")
    (root / "a" / "b c" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "a" / "b c" / "run.sh").chmod(0o750)
    (root / "empty").mkdir()
    (root / "a" / "link").symlink_to("b c/d/deep")
    (root / "a" / "b c" / "up").symlink_to("../../top.txt")


def _sums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_a_tree_round_trips_with_names_modes_and_owner(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)
    tree = tree_in.scan(src)
    assert tree.files == 4 and tree.dirs == 5 and tree.total_bytes == 70_000 + 4 + 5 + 10
    reports: list[tuple[int, int]] = []
    stream = io.BytesIO()
    sent = tree_in.write_tar(tree, stream, GuestOwner(1000, 50), lambda *r: reports.append(r))
    assert sent == tree.total_bytes and reports[-1] == (sent, sent) and reports[0] == (0, sent)
    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        members = tar.getmembers()
    assert {(m.uid, m.gid, m.uname) for m in members} == {(1000, 50, "")}
    assert all(m.name == tree_in.TOP or m.name.startswith(tree_in.TOP + "/") for m in members)
    links = {m.name: m.linkname for m in members if m.issym()}
    assert links == {"tree/a/link": "b c/d/deep", "tree/a/b c/up": "../../top.txt"}

    stream.seek(0)
    dest = tmp_path / "out"
    result = tree_out.land_tree(stream.read, tree_in.TOP, dest, CopyLimits())
    assert _sums(dest) == _sums(src)
    assert result.files == 4 and result.dirs == 5 and result.data_bytes == tree.total_bytes
    # the symlinks are named, never made
    assert sorted(result.skipped) == ["tree/a/b c/up (a symlink)", "tree/a/link (a symlink)"]
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert stat.S_IMODE((dest / "a" / "b c" / "run.sh").stat().st_mode) & 0o700 == 0o700
    assert (dest / "empty").is_dir()
    assert all(p.stat().st_uid == os.getuid() for p in dest.rglob("*"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cloudlet")] == []


@pytest.mark.parametrize(
    ("link", "where"),
    [
        ("/etc/passwd", "absolute"),
        ("../../outside", "outside"),
        ("b/../../x", "outside"),  # ".." after a name could pass through a link
        ("../..", "outside"),
    ],
)
def test_links_out_of_the_tree_are_refused(tmp_path: Path, link: str, where: str) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "l").symlink_to(link)
    with pytest.raises(InvalidInput, match=where) as exc:
        tree_in.scan(src)
    assert "a/l" in exc.value.message


def test_special_files_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    with pytest.raises(InvalidInput, match="not a regular file, directory or symlink"):
        tree_in.scan(src)
    os.unlink(src / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        with pytest.raises(InvalidInput, match="not a regular file"):
            tree_in.scan(src)
    with pytest.raises(NotFound):
        tree_in.scan(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="not a directory"):
        tree_in.scan(tmp_path / "file")


# ---------------------------------------------------------------- hostile streams


def _archive(*members: tuple[str, bytes | str | None, int]) -> bytes:
    """name, contents (bytes: a file, str: a symlink target, None: a directory), mode."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return stream.getvalue()


def _land(data: bytes, dest: Path, limits: CopyLimits | None = None) -> TreeCopy:
    return tree_out.land_tree(io.BytesIO(data).read, "", dest, limits or CopyLimits())


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    path.mkdir()
    (path / "secret").write_text("keep\n")
    return path


@pytest.mark.parametrize(
    "bad", ["./../canary/secret", "../canary/secret", "/etc/evil", "./a/../../canary/x"]
)
def test_a_member_outside_the_tree_fails_the_copy_and_keeps_nothing(
    tmp_path: Path, canary: Path, bad: str
) -> None:
    before = tree_digest(tmp_path)
    data = _archive((".", None, 0o755), ("./ok", b"fine", 0o644), (bad, b"evil", 0o644))
    with pytest.raises(GuestError, match="outside the copied directory"):
        _land(data, tmp_path / "out")
    assert tree_digest(tmp_path) == before
    assert (canary / "secret").read_text() == "keep\n"


def test_links_devices_and_dangerous_modes_never_land(tmp_path: Path) -> None:
    data = _archive(
        (".", None, 0o1777),
        ("./passwd", "/etc/passwd", 0o777),
        ("./sub", None, 0o777),
        ("./sub/suid", b"#!/bin/sh\n", 0o4777),
        ("./ww", b"ww", 0o666),
    )
    result = _land(data, tmp_path / "out")
    out = tmp_path / "out"
    assert not os.path.lexists(out / "passwd")
    assert result.skipped == ("./passwd (a symlink)",)
    for path in (out, out / "sub", out / "sub" / "suid", out / "ww"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o7002 == 0, path


def test_the_byte_and_entry_limits_keep_nothing(tmp_path: Path) -> None:
    before = tree_digest(tmp_path)
    big = _archive((".", None, 0o755), ("./a", b"x" * 5000, 0o644), ("./b", b"y" * 5000, 0o644))
    with pytest.raises(CapacityExceeded, match="byte limit"):
        _land(big, tmp_path / "out", CopyLimits(max_bytes=8000))
    many = _archive((".", None, 0o755), *((f"./f{i}", b"", 0o644) for i in range(20)))
    with pytest.raises(CapacityExceeded, match="entry limit"):
        _land(many, tmp_path / "out", CopyLimits(max_entries=10))
    assert tree_digest(tmp_path) == before


def test_an_endless_stream_is_cut_off(tmp_path: Path) -> None:
    """Bytes that are no file still count: a guest cannot feed headers for ever."""
    limits = CopyLimits(max_bytes=1000, max_entries=5)
    fed = [0]

    def endless(size: int) -> bytes:
        fed[0] += size
        return b"\0" * 512 if fed[0] < 512 else b"garbage!" * 64

    with pytest.raises((CapacityExceeded, GuestError)):
        tree_out.land_tree(endless, "", tmp_path / "out", limits)
    assert fed[0] <= tree_out.stream_cap(limits) + (1 << 20)
    assert not (tmp_path / "out").exists()


def test_broken_streams_and_odd_tops_keep_nothing(tmp_path: Path) -> None:
    before = tree_digest(tmp_path)
    whole = _archive((".", None, 0o755), ("./f", b"z" * 4000, 0o644))
    with pytest.raises(GuestError, match="broken archive"):
        _land(whole[:1500], tmp_path / "out")
    with pytest.raises(GuestError, match="other than a directory"):
        _land(_archive((".", b"file", 0o644)), tmp_path / "out")
    assert tree_digest(tmp_path) == before


def test_an_existing_target_is_never_merged_into(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    data = _archive((".", None, 0o755), ("./f", b"z", 0o644))
    for target in ("out", "link"):
        with pytest.raises(InvalidInput, match="already exists"):
            _land(data, tmp_path / target)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(NotFound):
        _land(data, tmp_path / "absent" / "out")
