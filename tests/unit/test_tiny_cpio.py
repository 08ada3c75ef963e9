"""The newc cpio writer that makes the tiny image's initramfs."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from cloudlet.host.run import run
from cloudlet.images.tiny.cpio import CpioWriter, read_newc


def _archive() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.add_dir("bin")
    w.add_dir("dev")
    w.add_char_device("dev/console", 5, 1)
    w.add_file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755)
    w.add_symlink("bin/sh", "/bin/busybox")
    w.add_file("init", b"#!/bin/sh\nexec sh\n", 0o755)
    w.add_file("empty", b"")
    w.close()
    return buf.getvalue()


def test_round_trip() -> None:
    entries = {e.name: e for e in read_newc(_archive())}
    assert list(entries) == ["bin", "dev", "dev/console", "bin/busybox", "bin/sh", "init", "empty"]
    assert entries["bin"].is_dir
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"/bin/busybox"
    assert entries["bin/busybox"].data == b"\x7fELF" + b"x" * 1001
    assert stat.S_IMODE(entries["init"].mode) == 0o755
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode)
    assert (console.rdev_major, console.rdev_minor) == (5, 1)
    assert entries["empty"].data == b""


def test_layout_is_newc_and_aligned() -> None:
    data = _archive()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-128:]


def test_same_input_gives_same_bytes() -> None:
    assert _archive() == _archive()


def test_leading_slash_is_dropped_and_duplicates_refused() -> None:
    w = CpioWriter(io.BytesIO())
    w.add_dir("/etc")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_dir("etc")


def test_closed_archive_refuses_more() -> None:
    w = CpioWriter(io.BytesIO())
    w.close()
    with pytest.raises(ValueError):
        w.add_file("late", b"")


@pytest.mark.integration
def test_gnu_cpio_lists_and_extracts_it(tmp_path: Path) -> None:
    data = _archive()
    listing = run(["cpio", "-t", "--quiet"], input=data).stdout.decode().split()
    assert listing == ["bin", "dev", "dev/console", "bin/busybox", "bin/sh", "init", "empty"]
    out = tmp_path / "x"
    out.mkdir()
    files = ["bin", "bin/busybox", "bin/sh", "init"]
    run(
        ["cpio", "-i", "--quiet", "--no-absolute-filenames", "--make-directories", *files],
        input=data,
        cwd=out,
    )
    assert (out / "init").read_text() == "#!/bin/sh\nexec sh\n"
    assert (out / "bin/sh").readlink() == Path("/bin/busybox")
