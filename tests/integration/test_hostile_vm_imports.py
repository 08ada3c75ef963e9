"""VM imports (`cloudlet import FILE`) of exports whose disks are hostile, and imports
killed half way: refused in one line before a VM exists, and nothing left behind (the
next command's recovery sweeps what a killed import staged)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudlet.host import processes
from cloudlet.storage.staging import PREFIX
from tests.integration import cli
from tests.integration.test_hostile_images import (
    json_backing,
    pib_qcow2,
    state_hash,
    zeroed_refcounts,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(shared_state: Path) -> Iterator[Path]:
    """One state directory sharing the built tiny image, with a stopped VM 'src'."""
    top = Path(tempfile.mkdtemp(prefix="cl-", dir="/tmp"))
    home = top / "h"
    (home / "images").mkdir(parents=True)
    (home / "images" / "tiny").symlink_to(shared_state / "images" / "tiny")
    (home / "cache").symlink_to(shared_state / "cache")
    (home / "host").mkdir()
    (home / "host" / "accel.json").write_bytes((shared_state / "host" / "accel.json").read_bytes())
    cli.run(home, "create", "src", "--image", "tiny", "--no-start")
    cli.run(home, "pool", "list")
    yield home
    shutil.rmtree(top)  # 'src' never ran


@pytest.fixture(scope="module")
def export(home: Path) -> dict[str, bytes]:
    """The members of a real export of 'src'."""
    dest = home.parent / "src.cloudlet"
    cli.run(home, "export", "src", str(dest))
    members = {}
    with tarfile.open(dest) as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                members[member.name] = f.read()
    return members


def crafted(members: dict[str, bytes], dest: Path, *, big: dict[str, int] | None = None) -> Path:
    """An export tar of ``members`` with a manifest whose SHA-256s match them; ``big``
    adds members of that many zero bytes (sparse in the tar) listed as volumes."""
    manifest = json.loads(members["manifest.json"])
    files = {n: hashlib.sha256(b).hexdigest() for n, b in members.items() if n != "manifest.json"}
    sizes = {n: len(b) for n, b in members.items() if n != "manifest.json"}
    for name, size in (big or {}).items():
        volume = name.removeprefix("volumes/").removesuffix(".qcow2")
        manifest.setdefault("volumes", []).append({"name": volume, "file": name, "size": size})
        files[name] = _zeros_sha256(size)
        sizes[name] = size
    manifest["files"] = files
    manifest["bytes"] = sizes
    body = {**members, "manifest.json": json.dumps(manifest).encode()}
    with tarfile.open(dest, "w") as tar:
        for name in ("manifest.json", *sorted(n for n in body if n != "manifest.json")):
            info = tarfile.TarInfo(name)
            info.size = len(body[name])
            tar.addfile(info, io.BytesIO(body[name]))
        for name, size in (big or {}).items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Zeros(size))  # type: ignore[arg-type]
    return dest


def _zeros_sha256(size: int) -> str:
    digest, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(block)
    digest.update(bytes(size & ((1 << 20) - 1)))
    return digest.hexdigest()


class _Zeros:
    """A file-like of ``size`` zero bytes, so a big member costs no memory to write."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _outside_db(home: Path) -> str:
    """The state directory's hash without the database (a refused import is an event)
    and the per-name lock files (made empty by any command on a name)."""
    db = home / "cloudlet.db"
    keep = db.read_bytes()
    db.write_bytes(b"")
    locks = home / "locks"
    aside = home.parent / "locks-aside"
    locks.rename(aside)
    try:
        return state_hash(home)
    finally:
        db.write_bytes(keep)
        aside.rename(locks)


def _visible(home: Path) -> tuple[object, object]:
    return cli.run_json(home, "list"), cli.run_json(home, "volume", "list")


Builder = Callable[[Path], Path]
DISK_CASES: dict[str, tuple[Builder, str]] = {
    "json-backing": (json_backing, r"disk\.qcow2: unsafe image: backing-filename is 'json:"),
    "zeroed-refcounts": (zeroed_refcounts, r"disk\.qcow2 fails qemu-img check \(\d+ corruptions"),
    "1-pib": (pib_qcow2, r"disk\.qcow2 has a virtual size of 1024 TiB, over this host's cap"),
}


@pytest.mark.parametrize("case", sorted(DISK_CASES))
@pytest.mark.parametrize("member", ["disk.qcow2", "volumes/data.qcow2"])
def test_hostile_disk_in_an_export_is_refused(
    case: str, member: str, home: Path, export: dict[str, bytes], tmp_path: Path
) -> None:
    build, expected = DISK_CASES[case]
    members = {**export, member: build(tmp_path).read_bytes()}
    if member != "disk.qcow2":  # list the volume in the manifest
        manifest = json.loads(members["manifest.json"])
        manifest["volumes"] = [{"name": "data", "file": member, "size": 1 << 20}]
        members["manifest.json"] = json.dumps(manifest).encode()
        expected = expected.replace(r"disk\.qcow2", r"volumes/data\.qcow2")
    tar = crafted(members, tmp_path / "evil.cloudlet")
    before, seen = _outside_db(home), _visible(home)
    proc = cli.run(home, "import", str(tar), "--name", "evil", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert _visible(home) == seen
    assert _outside_db(home) == before


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"it ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    processes.wait_gone(proc.pid, 10.0)


def _staged(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(PREFIX)]


def test_killed_vm_import_is_rolled_back_and_swept(
    home: Path, export: dict[str, bytes], tmp_path: Path
) -> None:
    pool = Path(cli.run_json(home, "pool", "list")[0]["path"])
    tar = crafted(export, tmp_path / "slow.cloudlet", big={"volumes/data.qcow2": 1 << 30})
    canary = pool / ".cloudlet-notes"  # not ours to sweep, even in a pool
    canary.write_text("keep")
    seen = _visible(home)
    proc = cli.spawn(home, "import", str(tar), "--name", "half")

    def volume_staged() -> bool:
        return any(f.stat().st_size > 0 for d in _staged(pool) for f in d.iterdir())

    _wait_for(volume_staged, proc, "the volume being staged in the pool")
    _kill(proc)
    assert _staged(pool), "the kill left the staged volume behind"

    cli.run(home, "list")  # the next command recovers
    assert _staged(pool) == []
    assert canary.read_text() == "keep"
    assert _visible(home) == seen
    instance_dirs = {p.name for p in (home / "instances").iterdir()}
    assert instance_dirs == {cli.run_json(home, "show", "src")["id"]}


def test_killed_image_import_is_swept(home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(64 << 30)
    images = home / "images"
    before = sorted(p.name for p in images.iterdir())
    proc = cli.spawn(home, "image", "import", str(big), "--name", "big", "--format", "raw")
    _wait_for(lambda: any((d / "source.raw").exists() for d in _staged(images)), proc, "staging")
    _kill(proc)
    assert _staged(images), "the kill left the staging copy behind"
    cli.run(home, "image", "list")  # the next command recovers
    assert sorted(p.name for p in images.iterdir()) == before


def test_backup_of_a_stopped_vm_maps_its_disk_confined(home: Path) -> None:
    """A backup reads its target's map through the confined qemu-img (as nobody, by fd)."""
    made = cli.run_json(home, "backup", "create", "src")
    assert made["kind"] == "full" and int(made["stored"]) > 0
    cli.run(home, "backup", "verify", "src")


def test_create_refuses_a_disk_over_the_cap(home: Path) -> None:
    seen = _visible(home)
    proc = cli.run(home, "create", "huge", "--image", "tiny", "--disk-size", "1024T", "--no-start",
                   check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(
        r"error: the disk of huge has a virtual size of 1024 TiB, over this host's cap of "
        r"[\d.]+ [GT]iB: raise images\.max_virtual_size in config\.toml, or use a smaller image",
        proc.stderr.strip(),
    ), proc.stderr
    assert _visible(home) == seen
