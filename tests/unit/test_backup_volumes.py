"""Backups of VMs with volumes, on the fake driver and fake disks (tests/unit/test_backup.py
explains the fake disks): every disk in one backup, per-disk bitmaps, restores of all
disks or none, exports that carry the volumes."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from cloudlet.backup.store import CHUNK_SIZE, ROOT, Manifest
from cloudlet.driver.base import DirtyBitmap
from cloudlet.engine.backup_disks import VmDisk, usable_bitmap
from cloudlet.engine.backup_volumes import pool_dir
from cloudlet.engine.backups import BackupService
from cloudlet.engine.engine import Engine
from cloudlet.engine.storage_rows import active_disk
from cloudlet.errors import Conflict, InvalidInput, NotFound, StoreCorrupt
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody
from cloudlet.store.models import PoolRow
from tests.fakes import FakeDisks, make_vm_with_volume

MIB = 1 << 20


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_vm_with_volume(short_tmp / "home")


@pytest.fixture
def ops(engine: Engine) -> BackupService:
    return engine.backups


def root_of(engine: Engine, vm: str) -> Path:
    return active_disk(engine, engine.show(vm).id)


def vol(engine: Engine, name: str) -> Path:
    return Path(engine.storage.volume(name).path)


def put(path: Path, offset: int, text: str) -> None:
    FakeDisks.write(path, str(offset), text)


def test_one_backup_holds_every_disk_and_each_reads_incrementally(
    engine: Engine, ops: BackupService
) -> None:
    put(root_of(engine, "web1"), 0, "root v1")
    put(vol(engine, "data1"), CHUNK_SIZE, "data v1")
    full = ops.create("web1")
    assert full.kind == "full" and [d.name for d in full.disks] == [ROOT, "data1"]
    assert [d.size for d in full.disks][1] == 64 * MIB and full.chunks == 2
    manifest = ops.records.manifest(ops.records.find("web1", full.id))
    assert manifest.disks[1].volume_id and manifest.disks[1].pool == "default"
    assert all(d.bitmap is not None for d in manifest.disks)
    # only the volume changed: both disks read by bitmap, only the volume's bytes read
    put(vol(engine, "data1"), CHUNK_SIZE + 10, "v2")
    inc = ops.create("web1")
    assert inc.kind == "incremental" and inc.note == "" and inc.read == 2
    assert [(d.name, d.read) for d in inc.disks] == [(ROOT, 0), ("data1", 2)]
    # each disk keeps only the newest bitmap
    iid = engine.show("web1").id
    for node in (None, engine.storage.volume_row("data1").id):
        node_name = None if node is None else "v" + node.replace("-", "")[:12]
        names = [b.name for b in engine.driver.disk_bitmaps(iid, node_name)]
        assert names == ["cloudlet-" + inc.id]
    # a volume attached since: read whole, said which and why; the others incremental
    engine.storage.volume_create("data2", 8 * MIB)
    engine.storage.volume_attach("data2", "web1")
    put(vol(engine, "data2"), 0, "new volume")
    third = ops.create("web1")
    assert third.kind == "incremental" and [d.name for d in third.disks][-1] == "data2"
    assert third.note.startswith(f"volume data2 is new since backup {inc.id}")
    assert "read the whole disk" in third.note and "data1" not in third.note
    assert ops.verify("web1").problems == []


def test_bitmap_decisions_per_disk() -> None:
    parent = Manifest(
        id="p", vm="web1", vm_id="i", created_at="t", finished_at="t", kind="full",
        parent=None, disks=[], spec={}, vm_row={}, consistency="file systems frozen",
    )  # fmt: skip
    disk = VmDisk("data1", Path("/pool/data1.qcow2"), 100, node="vx", volume_id="id1")
    good = [DirtyBitmap("cloudlet-p", True, False, 0)]
    parent.disks = [disk.manifest([None], "cloudlet-p")]
    assert usable_bitmap(parent, disk, good) == ("cloudlet-p", "")
    grown = VmDisk("data1", disk.path, 200, node="vx", volume_id="id1")
    assert "size of volume data1 changed" in usable_bitmap(parent, grown, good)[1]
    spoiled = [DirtyBitmap("cloudlet-p", True, True, 0)]
    assert "inconsistent" in usable_bitmap(parent, disk, spoiled)[1]
    assert "is lost" in usable_bitmap(parent, disk, [])[1]
    other = VmDisk("data1", disk.path, 100, node="vy", volume_id="id2")  # same name, new id
    assert "is new since backup p" in usable_bitmap(parent, other, good)[1]
    # a raw (LVM) volume keeps no bitmap: read whole every time, and said so
    raw = VmDisk("lv1", Path("/dev/vg/lv1"), 100, "raw", node="vz", volume_id="id3")
    parent.disks.append(raw.manifest([None], None))
    since, why = usable_bitmap(parent, raw, [])
    assert since is None and "volume lv1 is raw" in why


def test_an_old_single_disk_manifest_still_reads_and_an_incremental_builds_on_it(
    engine: Engine, ops: BackupService
) -> None:
    engine.storage.volume_detach("data1")
    put(root_of(engine, "web1"), 0, "old")
    first = ops.create("web1")
    path = ops.store.manifest_path(engine.show("web1").id, first.id)
    body = json.loads(path.read_text())
    del body["sha256"], body["hmac"]  # written before manifests were signed
    # as written before volumes were backed up: the bitmap only at the top
    body["disks"] = [{k: body["disks"][0][k] for k in ("name", "virtual_size", "chunks")}]
    digest = Manifest.digest(body)
    path.write_text(json.dumps({**body, "sha256": digest}))
    with engine.db.session() as s:
        from cloudlet.store.models import BackupRow

        row = s.get(BackupRow, first.id)
        assert row is not None
        row.manifest_sha256 = digest
    old = ops.records.manifest(ops.records.find("web1", first.id))
    assert old.root.bitmap == body["bitmap"] and old.root.bitmap is not None
    put(root_of(engine, "web1"), 5, "x")
    assert ops.create("web1").kind == "incremental"
    assert ops.verify("web1").problems == []


def test_restore_as_makes_new_volumes_and_refuses_a_taken_name_first(
    engine: Engine, ops: BackupService
) -> None:
    put(root_of(engine, "web1"), 0, "root")
    put(vol(engine, "data1"), 7, "volume data")
    backup = ops.create("web1")
    message = ops.restore("web1", backup_id=backup.id, as_name="copy").message
    assert "with volume(s) copy-data1" in message
    assert FakeDisks.content(vol(engine, "copy-data1")) == {"7": "volume data"}
    assert engine.storage.volume("copy-data1").attached_to == "copy"
    # a name taken: refused in one line, nothing made
    engine.storage.volume_create("again-data1", MIB)
    before = sorted(v.name for v in engine.storage.volumes())
    with pytest.raises(Conflict, match="'again-data1' already exists") as info:
        ops.restore("web1", backup_id=backup.id, as_name="again")
    assert "\n" not in info.value.one_line()
    assert "again" not in [v.name for v in engine.instances()]
    assert sorted(v.name for v in engine.storage.volumes()) == before


def test_restore_in_place_is_all_or_nothing_and_recreates_deleted_volumes(
    engine: Engine, ops: BackupService
) -> None:
    put(root_of(engine, "web1"), 0, "root v1")
    put(vol(engine, "data1"), 0, "data v1")
    backup = ops.create("web1")
    put(root_of(engine, "web1"), 0, "root v2")
    put(vol(engine, "data1"), 0, "data v2")
    # a chunk of the volume rots: the restore fails and neither disk changes
    manifest = ops.records.manifest(ops.records.find("web1", backup.id))
    (chunk,) = [c for c in manifest.disks[1].chunks if c]
    good = ops.store.chunk_path(chunk).read_bytes()
    ops.store.chunk_path(chunk).write_bytes(b"rot")
    with pytest.raises(StoreCorrupt, match=r"\(disk data1\): chunk"):
        ops.restore("web1", backup_id=backup.id, force=True)
    assert FakeDisks.content(root_of(engine, "web1")) == {"0": "root v2"}
    assert FakeDisks.content(vol(engine, "data1")) == {"0": "data v2"}
    pool = vol(engine, "data1").parent
    assert not list(pool.glob(".restore-*")) and not list(
        engine.paths.instance_dir(engine.show("web1").id).glob(".restore-*")
    )
    ops.store.chunk_path(chunk).write_bytes(good)
    # the volume deleted since, another attached now: the first comes back, the other stays
    engine.stop("web1")
    engine.storage.volume_detach("data1")
    engine.storage.volume_delete("data1")
    engine.storage.volume_create("scratch", MIB)
    engine.storage.volume_attach("scratch", "web1")
    message = ops.restore("web1", backup_id=backup.id).message
    assert "volume data1 recreated in pool default" in message
    assert "scratch were not in the backup and stay as they are" in message
    assert FakeDisks.content(root_of(engine, "web1")) == {"0": "root v1"}
    assert FakeDisks.content(vol(engine, "data1")) == {"0": "data v1"}
    assert engine.storage.volume("data1").attached_to == "web1"
    assert engine.storage.volume("scratch").attached_to == "web1"


def test_restore_swaps_every_disk_in_one_commit_and_sweeps_what_a_killed_one_left(
    engine: Engine, ops: BackupService, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(root_of(engine, "web1"), 0, "root v1")
    put(vol(engine, "data1"), 0, "data v1")
    backup = ops.create("web1")
    put(root_of(engine, "web1"), 0, "root v2")
    put(vol(engine, "data1"), 0, "data v2")
    engine.stop("web1")
    pool = vol(engine, "data1").parent
    instance_dir = engine.paths.instance_dir(engine.show("web1").id)
    before = {p.name for p in [*pool.iterdir(), *instance_dir.iterdir()]}

    # the last step before the commit fails (as a kill there would stop it): no disk
    # changed, and nothing of the restore is left behind
    def fail(*_args: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr("cloudlet.engine.restore_disks.Restorer.point_volumes", fail)
    with pytest.raises(OSError, match="killed"):
        ops.restore("web1", backup_id=backup.id)
    monkeypatch.undo()
    assert FakeDisks.content(root_of(engine, "web1")) == {"0": "root v2"}
    assert FakeDisks.content(vol(engine, "data1")) == {"0": "data v2"}
    assert {p.name for p in [*pool.iterdir(), *instance_dir.iterdir()]} == before

    # files a SIGKILLed restore leaves (temp files of this VM, a restored volume file no
    # volume points at) go with the next restore; another VM's temp files stay
    other = engine.create("web2", VMBody()).id
    strays = [pool / f".restore-{engine.show('web1').id[:8]}-0badc0de.raw",
              pool / "data1@0123456789ab.qcow2"]  # fmt: skip
    theirs = pool / f".restore-{other[:8]}-0badc0de.qcow2"
    for path in [*strays, theirs]:
        path.write_bytes(b"left over")
    message = ops.restore("web1", backup_id=backup.id).message
    assert "volume data1 restored" in message
    assert FakeDisks.content(root_of(engine, "web1")) == {"0": "root v1"}
    assert FakeDisks.content(vol(engine, "data1")) == {"0": "data v1"}
    assert not any(p.exists() for p in strays) and theirs.exists()
    # the volume keeps its restored file; the old one is gone
    assert "@" in vol(engine, "data1").name and not (pool / "data1.qcow2").exists()


def test_restore_refuses_clearly_when_a_volume_cannot_go_back(
    engine: Engine, ops: BackupService, short_tmp: Path
) -> None:
    storage = engine.storage
    storage.pool_create("fast", short_tmp / "fast")
    storage.volume_create("quick", MIB, "fast")
    storage.volume_attach("quick", "web1")
    backup = ops.create("web1")
    engine.stop("web1")
    for name in ("quick",):
        storage.volume_detach(name)
        storage.volume_delete(name)
    storage.pool_delete("fast")
    with pytest.raises(NotFound, match="lived in pool fast, which is gone") as info:
        ops.restore("web1", backup_id=backup.id)
    assert "create pool fast again" in (info.value.hint or "")
    assert step(Step.POOL_CREATE, pool="fast") in info.value.next_steps
    # attached to another VM now: refused before anything stops
    engine.create("other", VMBody())
    storage.volume_detach("data1")
    storage.volume_attach("data1", "other")
    engine.start("web1")
    with pytest.raises(Conflict, match=r"volume data1 of backup .* is attached to other"):
        ops.restore("web1", backup_id=backup.id, force=True)
    assert engine.show("web1").state == "running"
    # a pool whose volumes are block devices (LVM) is refused by name
    with engine.db.session() as s:
        s.add(PoolRow(name="vg", kind="lvm", path="/dev/vg0"))
    with pytest.raises(InvalidInput, match="lvm pool vg"):
        pool_dir(engine.storage, "vg", "lv1", "backup b")


def test_export_import_carries_the_volumes_and_old_exports_still_import(
    engine: Engine, ops: BackupService, short_tmp: Path
) -> None:
    put(root_of(engine, "web1"), 0, "root")
    put(vol(engine, "data1"), 3, "in the volume")
    engine.stop("web1")
    ops.export("web1", short_tmp / "web1.cloudlet")
    with tarfile.open(short_tmp / "web1.cloudlet") as tar:
        names = sorted(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names == ["disk.qcow2", "manifest.json", "spec.json", "volumes/data1.qcow2"]
    assert manifest["format"] == 3 and set(manifest["files"]) == set(manifest["bytes"]) == {
        "spec.json", "disk.qcow2", "volumes/data1.qcow2"
    }  # fmt: skip
    view = ops.import_(short_tmp / "web1.cloudlet", "web2")
    assert view.state == "stopped"
    assert FakeDisks.content(vol(engine, "web2-data1")) == {"3": "in the volume"}
    assert engine.storage.volume("web2-data1").attached_to == "web2"

    # a volume with a backing file is refused, and nothing is left behind
    x = short_tmp / "x"
    with tarfile.open(short_tmp / "web1.cloudlet") as tar:
        tar.extractall(x, filter="data")
    evil = x / "volumes" / "data1.qcow2"
    evil.write_text(json.dumps({"size": MIB, "backing": "/etc/shadow"}))
    manifest["files"]["volumes/data1.qcow2"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    manifest["bytes"]["volumes/data1.qcow2"] = evil.stat().st_size
    (x / "manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(short_tmp / "bad.cloudlet", "w") as tar:
        for name in names:
            tar.add(x / name, arcname=name)
    vols_before = sorted(v.name for v in engine.storage.volumes())
    with pytest.raises(InvalidInput, match="backing"):
        ops.import_(short_tmp / "bad.cloudlet", "evil")
    assert "evil" not in [v.name for v in engine.instances()]
    assert sorted(v.name for v in engine.storage.volumes()) == vols_before
    assert not list(vol(engine, "data1").parent.glob(".import-*"))

    # a format 1 export (root disk only, as cloudlet wrote before) still imports
    old = {k: v for k, v in manifest.items() if k not in ("volumes", "bytes")}
    old["format"] = 1
    old["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("volumes/")}
    (x / "manifest.json").write_text(json.dumps(old))
    with tarfile.open(short_tmp / "old.cloudlet", "w") as tar:
        for name in ("manifest.json", "spec.json", "disk.qcow2"):
            tar.add(x / name, arcname=name)
    old_view = ops.import_(short_tmp / "old.cloudlet", "web3")
    assert FakeDisks.content(root_of(engine, "web3")) == {"0": "root"}
    assert old_view.state == "stopped"
