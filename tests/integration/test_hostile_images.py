"""Crafted images, each refused by `cloudlet image import` in one line (exit 2), with the
state directory unchanged: files that reach other host files, lie about their format,
are encrypted, have broken headers or tables, or claim an absurd size."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudlet.errors import HostCommandError, LimitExceeded
from cloudlet.host.qemu_binaries import qemu_img
from cloudlet.host.run import Limits, run
from cloudlet.images import untrusted
from cloudlet.images.importer import import_image
from cloudlet.spec.units import MIB
from tests.integration import cli

pytestmark = pytest.mark.integration


def qimg(*args: str) -> None:
    run([qemu_img(), *args])


def state_hash(home: Path) -> str:
    """Every path, type, mode and content under ``home`` (the database included).

    The operation log under ``logs/`` is left out: it records the refusal, which
    is what it is for, and holds no state a refused input could corrupt.
    """
    digest = hashlib.sha256()
    logs = home / "logs"
    for root, dirs, files in sorted(os.walk(home)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path == logs or logs in path.parents:
                continue
            st = path.lstat()
            digest.update(f"{path.relative_to(home)} {st.st_mode:o}\n".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- builders
def _data_qcow2(t: Path) -> Path:
    """A real qcow2 with 4 MiB of data in it (clusters, L2 tables, refcounts)."""
    raw = t / "data.raw"
    raw.write_bytes(bytes(range(256)) * (4 * MIB // 256))
    out = t / "data.qcow2"
    qimg("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out))
    raw.unlink()
    return out


def _header(path: Path) -> dict[str, int]:
    head = path.read_bytes()[:104]
    return {
        "cluster_bits": struct.unpack(">I", head[20:24])[0],
        "l1_table_offset": struct.unpack(">Q", head[40:48])[0],
        "refcount_table_offset": struct.unpack(">Q", head[48:56])[0],
    }


def _poke(path: Path, offset: int, data: bytes) -> Path:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def _u64(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        value: int = struct.unpack(">Q", f.read(8))[0]
    return value


def _created(t: Path, fmt: str, size: str, *options: str) -> Path:
    """A new image made by qemu-img create (``options`` before the file name)."""
    f = t / f"x.{fmt}"
    qimg("create", "-q", "-f", fmt, *options, str(f), size)
    return f


def backing_file(t: Path) -> Path:
    return _created(t, "qcow2", "1M", "-u", "-b", "/etc/passwd", "-F", "raw")


def json_backing(t: Path) -> Path:
    spec = {"driver": "raw", "file": {"driver": "file", "filename": "/etc/shadow"}}
    return _created(t, "qcow2", "1M", "-u", "-b", "json:" + json.dumps(spec), "-F", "raw")


def data_file(t: Path) -> Path:
    return _created(t, "qcow2", "1M", "-o", f"data_file={t / 'ext.raw'}")


def vmdk_flat_passwd(t: Path) -> Path:
    f = t / "x.img"
    f.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\nRW 8 FLAT "/etc/passwd" 0\n'
    )
    return f


def vmdk_sparse(t: Path) -> Path:
    return _created(t, "vmdk", "1M")


def plain_qcow2(t: Path) -> Path:
    return _created(t, "qcow2", "1M")


def plain_raw(t: Path) -> Path:
    f = t / "x.raw"
    f.write_bytes(b"\x01" * MIB)
    return f


SECRET = ("--object", "secret,id=s0,data=pw")


def _encrypted(t: Path, fmt: str, opts: str) -> Path:
    """qemu-img's LUKS key setup times PBKDF2 on this thread's CPU clock and gives up
    ("Unable to get accurate CPU usage") now and then on a loaded host: try again."""
    for attempt in range(5):
        try:
            return _created(t, fmt, "1M", *SECRET, "-o", opts)
        except HostCommandError as exc:
            if "accurate CPU usage" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def luks(t: Path) -> Path:
    return _encrypted(t, "luks", "key-secret=s0,iter-time=10")


def qcow2_luks(t: Path) -> Path:
    return _encrypted(t, "qcow2", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10")


def bad_cluster_bits(t: Path) -> Path:
    return _poke(plain_qcow2(t), 20, struct.pack(">I", 40))


def bad_version(t: Path) -> Path:
    return _poke(plain_qcow2(t), 4, struct.pack(">I", 99))


def marked_corrupt(t: Path) -> Path:
    return _poke(plain_qcow2(t), 72, struct.pack(">Q", 2))  # incompatible bit 1: corrupt


def huge_l1(t: Path) -> Path:
    return _poke(plain_qcow2(t), 36, struct.pack(">I", 0x7FFFFFFF))


def truncated_header(t: Path) -> Path:
    f = plain_qcow2(t)
    f.write_bytes(f.read_bytes()[:40])
    return f


def zeroed_refcounts(t: Path) -> Path:
    f = _data_qcow2(t)
    block = _u64(f, _header(f)["refcount_table_offset"])
    return _poke(f, block, bytes(1 << _header(f)["cluster_bits"]))


def misaligned_l2(t: Path) -> Path:
    f = _data_qcow2(t)
    l2 = _u64(f, _header(f)["l1_table_offset"]) & 0x00FFFFFFFFFFFE00
    entry = _u64(f, l2)
    return _poke(f, l2, struct.pack(">Q", entry + 512))


def leaked_cluster(t: Path) -> Path:
    f = _data_qcow2(t)
    bits = _header(f)["cluster_bits"]
    index = f.stat().st_size >> bits
    with open(f, "ab") as out:
        out.write(bytes(1 << bits))  # a cluster nothing references...
    block = _u64(f, _header(f)["refcount_table_offset"])
    return _poke(f, block + 2 * index, struct.pack(">H", 1))  # ...counted as used


def empty_qcow2(t: Path) -> Path:
    return _created(t, "qcow2", "0")


def pib_qcow2(t: Path) -> Path:
    return _created(t, "qcow2", "1P")


def huge_raw(t: Path) -> Path:
    f = t / "x.raw"
    with open(f, "wb") as out:
        out.truncate(15 << 40)
    return f


Case = tuple[Callable[[Path], Path], str, str]
CASES: dict[str, Case] = {
    "backing-file": (backing_file, "qcow2", r"backing-filename is '/etc/passwd'"),
    "json-backing": (json_backing, "qcow2", r"backing-filename is 'json:"),
    "data-file": (data_file, "qcow2", r"data-file is '.*ext\.raw'"),
    "vmdk-flat-passwd-as-raw": (vmdk_flat_passwd, "raw", r"declared raw but looks like vmdk"),
    "vmdk-flat-passwd-as-qcow2": (vmdk_flat_passwd, "qcow2", r"declared qcow2 but looks like vmdk"),
    "vmdk-sparse-as-raw": (vmdk_sparse, "raw", r"declared raw but looks like vmdk"),
    "qcow2-as-raw": (plain_qcow2, "raw", r"declared raw but looks like qcow2"),
    "qcow2-as-iso": (plain_qcow2, "iso", r"declared iso but has no ISO9660 signature"),
    "raw-as-qcow2": (plain_raw, "qcow2", r"declared qcow2 but looks like raw data"),
    "luks-as-raw": (luks, "raw", r"declared raw but looks like luks"),
    "qcow2-luks": (qcow2_luks, "qcow2", r"encrypted is True"),
    "bad-cluster-bits": (bad_cluster_bits, "qcow2", r"not a valid qcow2 image: .*[Cc]luster size"),
    "bad-version": (bad_version, "qcow2", r"not a valid qcow2 image: .*version"),
    "marked-corrupt": (marked_corrupt, "qcow2", r"marked corrupt"),
    "huge-l1": (huge_l1, "qcow2", r"not a valid qcow2 image: .*L1"),
    "truncated-header": (truncated_header, "qcow2", r"not a valid qcow2 image"),
    "zeroed-refcounts": (zeroed_refcounts, "qcow2", r"fails qemu-img check \(\d+ corruptions"),
    "misaligned-l2": (misaligned_l2, "qcow2", r"fails qemu-img check \(\d+ corruptions"),
    "leaked-cluster": (leaked_cluster, "qcow2", r"fails qemu-img check \(1 leaks\)"),
    "raw-as-iso": (plain_raw, "iso", r"x\.raw is declared iso but has no ISO9660 signature"),
    "zero-size-qcow2": (empty_qcow2, "qcow2", r"x\.qcow2: image has no usable virtual-size \(0\)"),
    "1-pib-qcow2": (pib_qcow2, "qcow2", r"x\.qcow2 has a virtual size of 1024 TiB, over this"),
    "15-tib-raw": (huge_raw, "raw", r"x\.raw has a virtual size of 15 TiB, over this host's"),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One state directory for the whole table (made by a first command)."""
    home = tmp_path_factory.mktemp("hostile") / "h"
    cli.run(home, "pool", "list")  # makes the default pool the size cap derives from
    yield home


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_image_is_refused_in_one_line(case: str, home: Path, tmp_path: Path) -> None:
    build, fmt, expected = CASES[case]
    src = build(tmp_path)
    before = state_hash(home)
    proc = cli.run(home, "image", "import", str(src), "--name", "evil", "--format", fmt,
                   check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr

    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr
    assert state_hash(home) == before


def test_import_runs_qemu_img_under_its_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import path really applies the limits: squeezed, qemu-img cannot even load."""
    monkeypatch.setattr(untrusted, "INFO_LIMITS", Limits(wall=60, cpu=5, memory=8 * MIB))
    images = tmp_path / "images"
    with pytest.raises(LimitExceeded, match=r"qemu-img on x\.qcow2 ran past its memory limit"):
        import_image(plain_qcow2(tmp_path), "squeezed", "qcow2", images)
    assert list(images.iterdir()) == []
