"""Backups on the fake driver and fake disks, with a real chunk store in a tmp directory.

A fake disk's numeric "data" keys are byte offsets (tests.fakes.FakeDisks.extents), so
what a test writes lands in known 4 MiB chunks.
"""

from __future__ import annotations

import errno
import json
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cloudlet.backup.chunking import build_chunks
from cloudlet.backup.retention import keep_set
from cloudlet.backup.store import CHUNK_SIZE, BackupStore, DiskManifest, Manifest, VerifyProblem
from cloudlet.driver.base import DiskCopy
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.backup_requests import PolicyUpdate
from cloudlet.engine.backups import BackupService
from cloudlet.engine.engine import Engine
from cloudlet.engine.storage_rows import active_disk
from cloudlet.errors import CapacityExceeded, Conflict, InvalidInput, OutOfSpace, StoreCorrupt
from cloudlet.spec.document import VMBody
from cloudlet.spec.instance import BackupPolicy, Retention
from cloudlet.spec.units import parse_duration
from cloudlet.store.models import BackupRow
from tests.fakes import FakeDisks, make_fake_engine

MIB = 1 << 20


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    e.create("web1", VMBody())
    return e


@pytest.fixture
def ops(engine: Engine) -> BackupService:
    return engine.backups


def vm_id(engine: Engine, name: str = "web1") -> str:
    return engine.show(name).id


def write(engine: Engine, offset: int, text: str, vm: str = "web1") -> None:
    FakeDisks.write(active_disk(engine, vm_id(engine, vm)), str(offset), text)


def content(engine: Engine, vm: str) -> dict[str, str]:
    return FakeDisks.content(active_disk(engine, vm_id(engine, vm)))


def fake(engine: Engine) -> FakeDriver:
    assert isinstance(engine.driver, FakeDriver)
    return engine.driver


def chunk_files(ops: BackupService) -> list[Path]:
    return sorted(ops.store.all_chunks())


# ---------------------------------------------------------------- store and chunking
def test_identical_data_is_stored_once_and_zero_chunks_never(short_tmp: Path) -> None:
    store = BackupStore(short_tmp / "store", short_tmp / "key")
    store.ensure()
    block = b"A" * CHUNK_SIZE
    extents = [(0, block, CHUNK_SIZE), (2 * CHUNK_SIZE, block, CHUNK_SIZE)]
    one = build_chunks(store, extents, 4 * CHUNK_SIZE, None, backup="b1")
    assert one.chunks[0] == one.chunks[2] is not None and one.chunks[1] is None
    assert one.chunks[3] is None and one.new_bytes == CHUNK_SIZE
    two = build_chunks(store, [(CHUNK_SIZE, block, CHUNK_SIZE)], 4 * CHUNK_SIZE, None, backup="b2")
    assert two.new_bytes == 0 and len(list(store.all_chunks())) == 1
    # written zeros are not stored either
    zeros = build_chunks(store, [(0, bytes(4096), 4096)], CHUNK_SIZE, None, backup="b3")
    assert zeros.chunks == [None] and zeros.new_bytes == 0


def test_chunks_a_failed_backup_removed_do_not_fail_the_next_sync(short_tmp: Path) -> None:
    """Found on real QEMU: one engine, a cancelled backup, then a backup that stored
    other chunks failed in sync() on the removed ones."""
    store = BackupStore(short_tmp / "store", short_tmp / "key")
    store.ensure()
    gone, _ = store.put(b"cancelled")
    store.remove_chunks({gone})
    kept, new = store.put(b"next backup")
    store.sync()
    assert new and store.get(kept) == b"next backup" and not store.has(gone)


def test_an_incremental_patches_the_parents_chunks(short_tmp: Path) -> None:
    store = BackupStore(short_tmp / "store", short_tmp / "key")
    store.ensure()
    size = 2 * CHUNK_SIZE + 100  # a short last chunk
    full = build_chunks(store, [(0, b"x" * 10, 10), (2 * CHUNK_SIZE, b"t" * 100, 100)], size,
                        None, backup="b1")  # fmt: skip
    inc = build_chunks(store, [(5, b"YY", 2)], size, full.chunks, backup="b2")
    assert inc.chunks[2] == full.chunks[2] and inc.chunks[0] != full.chunks[0]
    assert store.get(inc.chunks[0] or "")[:10] == b"xxxxxYYxxx"
    assert len(store.get(full.chunks[2] or "")) == 100
    # an explicit zero range on an incremental clears data of the parent
    cleared = build_chunks(store, [(0, None, 10)], size, full.chunks, backup="b3")
    assert cleared.chunks[0] is None


def test_manifest_checks_its_own_sha256(short_tmp: Path) -> None:
    store = BackupStore(short_tmp / "store", short_tmp / "key")
    store.ensure()
    vm_id, backup_id = "0" * 8 + "-0000-0000-0000-" + "0" * 12, "20260101T000000-abcdef"
    m = Manifest(
        id=backup_id, vm="web1", vm_id=vm_id, created_at="t", finished_at="t", kind="full",
        parent=None, disks=[DiskManifest("root", CHUNK_SIZE, [None])], spec={}, vm_row={},
    )  # fmt: skip
    path = store.write_manifest(m)
    assert store.read_manifest(vm_id, backup_id).sha256 == m.sha256 != ""
    path.write_text(path.read_text().replace('"web1"', '"evil"'))
    with pytest.raises(StoreCorrupt, match="does not match its sha256"):
        store.read_manifest(vm_id, backup_id)


# ---------------------------------------------------------------- backups through the engine
def test_full_then_incremental_stores_only_the_changed_chunks(
    engine: Engine, ops: BackupService
) -> None:
    for i in range(8):
        write(engine, i * CHUNK_SIZE, f"block {i} " * 50)
    first = ops.create("web1")
    assert (first.kind, first.chunks, first.note) == ("full", 8, "")
    # frozen for the backup's instant, thawed before the copy ran on
    assert first.consistency == "file systems frozen"
    assert not fake(engine).vms[vm_id(engine)].frozen
    assert first.stored == 8 * CHUNK_SIZE
    write(engine, 3 * CHUNK_SIZE + MIB, "changed")
    second = ops.create("web1")
    assert second.kind == "incremental" and second.read == len("changed")
    assert second.stored == CHUNK_SIZE and len(chunk_files(ops)) == 9
    # the bitmap of the first backup is gone, the second's records
    assert [b.name for b in fake(engine).disk_bitmaps(vm_id(engine))] == ["cloudlet-" + second.id]
    # each backup restores to what the disk held then
    ops.restore("web1", backup_id=first.id, as_name="old")
    ops.restore("web1", backup_id=second.id, as_name="new")
    now = content(engine, "web1")
    assert content(engine, "new") == now
    assert content(engine, "old")[str(3 * CHUNK_SIZE)] == "block 3 " * 50
    assert content(engine, "old") != now
    assert engine.spec("new").cpus == engine.spec("web1").cpus
    # backups outlive their VM: a deleted one comes back under its own name
    engine.delete("web1", force=True)
    ops.restore("web1", as_name="web1")
    assert content(engine, "web1") == now


def test_lost_or_inconsistent_bitmaps_read_everything_and_say_why(
    engine: Engine, ops: BackupService
) -> None:
    write(engine, 0, "a")
    ops.create("web1")
    engine.storage.snapshot_create("web1", "s1")  # a new active layer: no bitmap
    write(engine, CHUNK_SIZE, "b")
    after_snapshot = ops.create("web1")
    assert after_snapshot.kind == "full" and "snapshot" in after_snapshot.note
    assert after_snapshot.stored == CHUNK_SIZE  # read all, stored only the changed chunk
    fake(engine).spoil_bitmaps(vm_id(engine))  # as after QEMU was killed
    spoiled = ops.create("web1")
    assert spoiled.kind == "full" and "inconsistent" in spoiled.note
    assert ops.create("web1").kind == "incremental"
    engine.stop("web1")
    stopped = ops.create("web1")
    assert stopped.kind == "full" and "stopped" in stopped.note and stopped.stored == 0
    assert stopped.consistency == "offline"
    engine.start("web1")
    assert "stopped" in ops.create("web1").note  # no bitmap since the offline backup
    assert ops.create("web1").kind == "incremental"


def test_verify_names_the_backup_and_chunk_of_a_flipped_byte(
    engine: Engine, ops: BackupService
) -> None:
    write(engine, 0, "same")
    older = ops.create("web1")
    write(engine, CHUNK_SIZE, "only in the newer one")
    newer = ops.create("web1")
    assert ops.verify("web1").problems == []
    newest_chunk = set(ops.records.manifest(ops.records.find("web1", newer.id)).chunk_ids()) - set(
        ops.records.manifest(ops.records.find("web1", older.id)).chunk_ids()
    )
    (digest,) = newest_chunk
    path = ops.store.chunk_path(digest)
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.write_bytes(bytes(data))
    report = ops.verify("web1")
    assert report.problems == [VerifyProblem("corrupt", newer.id, "root", digest)]
    assert str(report.problems[0]) == f"backup {newer.id}: disk root: chunk {digest} is corrupt"
    assert report.to_dict()["problems"] == [
        {"kind": "corrupt", "backup": newer.id, "disk": "root", "chunk": digest, "detail": ""}
    ]
    assert [b.verified for b in ops.backups("web1")] == ["failed", "ok"]
    # --latest skips the corrupt backup and restores the newest good one
    ops.restore("web1", as_name="back")
    assert content(engine, "back") == {"0": "same"}
    with pytest.raises(StoreCorrupt, match=rf"backup {newer.id} \(disk root\): chunk {digest}"):
        ops.restore("web1", backup_id=newer.id, as_name="bad")
    assert [v.name for v in engine.instances()] == ["back", "web1"]


def test_a_corrupt_parent_chunk_stops_the_incremental_and_the_next_reads_all(
    engine: Engine, ops: BackupService
) -> None:
    write(engine, 0, "base")
    first = ops.create("web1")
    (digest,) = ops.records.manifest(ops.records.find("web1", first.id)).chunk_ids()
    ops.store.chunk_path(digest).write_bytes(b"rot")
    write(engine, 100, "patch")  # the incremental must patch the rotten chunk
    with pytest.raises(StoreCorrupt, match=f"chunk {digest}") as info:
        ops.create("web1")
    assert "reads the whole disk" in info.value.one_line()
    again = ops.create("web1")
    assert again.kind == "full" and f"backup {first.id} failed verify" in again.note
    ops.restore("web1", backup_id=again.id, as_name="back")
    assert content(engine, "back") == {"0": "base", "100": "patch"}


def test_a_full_backup_store_fails_cleanly_and_keeps_earlier_backups(
    engine: Engine, ops: BackupService
) -> None:
    write(engine, 0, "first")
    first = ops.create("web1")
    for i in range(1, 4):
        write(engine, i * CHUNK_SIZE, f"more {i}")
    real_write, calls = ops.store.write_file, []

    def fill_up(path: Path, data: bytes, *, sync: bool = True) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data, sync=sync)

    ops.store.write_file = fill_up
    with pytest.raises(CapacityExceeded) as info:
        ops.create("web1")
    assert "is full" in info.value.one_line() and "\n" not in info.value.one_line()
    assert [b.id for b in ops.backups("web1")] == [first.id]
    assert len(chunk_files(ops)) == 1  # the chunk written before it filled up is gone
    assert list(ops.store.tmp.iterdir()) == []
    assert ops.verify("web1").problems == []
    ops.store.write_file = real_write
    again = ops.create("web1")  # the first backup's bitmap still counts
    assert again.kind == "incremental" and again.stored == 3 * CHUNK_SIZE


def test_qemu_finding_the_store_full_says_the_store_is_full(
    engine: Engine, ops: BackupService, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(engine, 0, "first")
    first = ops.create("web1")
    write(engine, CHUNK_SIZE, "more")

    def full(instance_id: str, copies: list[DiskCopy], **_: object) -> None:
        target = copies[0].target
        raise OutOfSpace("the backup copy failed: No space left on device", path=target)

    monkeypatch.setattr(engine.driver, "backup_disks", full)
    with pytest.raises(CapacityExceeded) as info:
        ops.create("web1")
    assert info.value.message.startswith(f"the backup store {ops.store.root} is full")
    assert "prune" in (info.value.hint or "")
    assert [b.id for b in ops.backups("web1")] == [first.id]
    assert list(ops.store.tmp.iterdir()) == []
    monkeypatch.undo()
    assert ops.create("web1").kind == "incremental"  # the first backup's bitmap is kept


def test_a_full_disk_outside_the_store_is_not_blamed_on_it(
    engine: Engine, ops: BackupService, monkeypatch: pytest.MonkeyPatch, short_tmp: Path
) -> None:
    elsewhere = short_tmp / "elsewhere.qcow2"

    def full(instance_id: str, copies: list[DiskCopy], **_: object) -> None:
        raise OutOfSpace(f"no space left for {elsewhere}", path=elsewhere)

    monkeypatch.setattr(engine.driver, "backup_disks", full)
    with pytest.raises(OutOfSpace) as info:
        ops.create("web1")
    assert info.value.path == elsewhere and "backup store" not in info.value.message


def test_stale_work_files_of_a_killed_backup_are_cleaned(
    engine: Engine, ops: BackupService
) -> None:
    ops.store.ensure()
    (ops.store.tmp / "20260101T000000-dead.qcow2").write_text("half")
    ops.create("web1")
    assert list(ops.store.tmp.iterdir()) == []
    assert any("interrupted backup" in n for n in engine.notices)


# ---------------------------------------------------------------- retention and schedules
def test_retention_keeps_the_newest_of_each_period() -> None:
    base = datetime(2026, 3, 2, 0, 30)  # a Monday
    backups = [(f"h{i:02d}", base + timedelta(hours=i)) for i in range(0, 72, 6)]
    assert keep_set(backups, Retention()) == {b for b, _ in backups}
    assert keep_set(backups, Retention(last=2)) == {"h66", "h60"}
    assert keep_set(backups, Retention(daily=2)) == {"h66", "h42"}
    assert keep_set(backups, Retention(last=1, daily=3)) == {"h66", "h42", "h18"}
    assert keep_set(backups, Retention(hourly=3)) == {"h66", "h60", "h54"}
    weekly = [("sun", datetime(2026, 3, 1, 12)), ("mon", base), ("tue", base + timedelta(1))]
    assert keep_set(weekly, Retention(weekly=5)) == {"sun", "tue"}
    monthly = [("feb", datetime(2026, 2, 27)), ("feb2", datetime(2026, 2, 28)), ("mar", base)]
    assert keep_set(monthly, Retention(monthly=1)) == {"mar"}
    assert keep_set(monthly, Retention(monthly=2)) == {"mar", "feb2"}


def test_policy_is_stored_in_the_spec_and_legacy_keep_means_keep_last() -> None:
    assert BackupPolicy(schedule="daily", keep=7).retention() == Retention(last=7)
    assert BackupPolicy(schedule="daily", keep=7).interval() == 86400
    p = BackupPolicy(every=3600, keep_hourly=24, keep_daily=7)
    assert p.interval() == 3600 and p.retention() == Retention(hourly=24, daily=7)
    assert parse_duration("1h") == 3600 and parse_duration("2w") == 14 * 86400
    with pytest.raises(InvalidInput):
        parse_duration("soon")


def test_run_due_backs_up_due_vms_then_prunes(engine: Engine, ops: BackupService) -> None:
    real_write = ops.store.write_file

    def broken_store(path: Path, data: bytes, *, sync: bool = True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    engine.create("idle", VMBody())  # no policy: never backed up
    ops.set_policy("web1", PolicyUpdate(every="1h", keep_last=2))
    assert engine.spec("web1").backup.every == 3600  # stored with the VM's spec
    write(engine, 0, "v1")
    result = ops.run_due()
    assert [run.vm for run in result.runs] == ["web1"] and result.failed == 0
    assert ops.run_due().runs == ()  # not due yet
    later = datetime.now().timestamp() + 3600
    for i in range(3):
        write(engine, 0, f"v{i + 2}")
        ops.run_due(now=later + i * 3600)
    assert len(ops.backups("web1")) == 2 and ops.backups("idle") == []
    # one VM failing does not stop the others, and is counted
    engine.create("web2", VMBody())
    ops.set_policy("web2", PolicyUpdate(every="1h"))
    engine.delete("idle", force=True)
    ops.store.write_file = broken_store
    result = ops.run_due(now=later + 10 * 3600)
    assert result.failed == 2 and all("is full" in (run.error or "") for run in result.runs)
    assert all(run.backup is None for run in result.runs)
    ops.store.write_file = real_write
    assert ops.verify("web1").problems == []
    with engine.db.session() as s:
        assert s.query(BackupRow).count() == 2
    # chunks only the pruned backups used are gone
    kept = set().union(*(ops.records.manifest(ops.records.find("web1", b.id)).chunk_ids()
                         for b in ops.backups("web1")))  # fmt: skip
    assert {p.name for p in chunk_files(ops)} == kept


# ---------------------------------------------------------------- restore in place
def test_restore_in_place_drops_memory_snapshot_states(engine: Engine, ops: BackupService) -> None:
    backup = ops.create("web1")
    engine.storage.snapshot_create("web1", "s1", memory=True)
    instance_dir = engine.paths.instance_dir(vm_id(engine))
    assert len(list(instance_dir.rglob("*.vmstate"))) == 1
    ops.restore("web1", backup_id=backup.id, force=True)
    assert not list(instance_dir.rglob("*.vmstate"))


def test_restore_in_place_needs_a_stopped_vm_or_force(engine: Engine, ops: BackupService) -> None:
    write(engine, 0, "good")
    backup = ops.create("web1")
    engine.storage.snapshot_create("web1", "s1")
    write(engine, 0, "bad")
    with pytest.raises(Conflict, match="it is running"):
        ops.restore("web1", backup_id=backup.id)
    assert engine.show("web1").state == "running"
    message = ops.restore("web1", backup_id=backup.id, force=True).message
    assert "snapshots (s1) were dropped" in message
    assert engine.show("web1").state == "stopped"
    assert content(engine, "web1") == {"0": "good"}
    disk = active_disk(engine, vm_id(engine))
    assert disk.name.startswith("disk-") and FakeDisks().backing(disk) is None
    assert sorted(p.name for p in disk.parent.glob("*.qcow2")) == [disk.name]
    assert engine.storage.snapshots("web1") == []
    assert not list((engine.paths.instance_dir(vm_id(engine)) / "layers").iterdir())
    # a snapshot on the restored disk, then a restore killed before its switch: the next
    # restore removes the orphan, never the restored disk the chain grows from
    engine.storage.snapshot_create("web1", "s2")
    (disk.parent / ".restore-dead.raw").write_text("x")
    (disk.parent / "disk-orphan.qcow2").write_text("{}")
    ops.restore("web1", backup_id=backup.id, force=True)
    assert not (disk.parent / ".restore-dead.raw").exists()
    assert not (disk.parent / "disk-orphan.qcow2").exists()
    assert content(engine, "web1") == {"0": "good"}


# ---------------------------------------------------------------- export / import
def test_export_import_round_trip_and_tampering(
    engine: Engine, ops: BackupService, short_tmp: Path
) -> None:
    write(engine, 4096, "exported")
    with pytest.raises(Conflict, match="it is running"):
        ops.export("web1", short_tmp / "web1.cloudlet")
    engine.stop("web1")
    ops.export("web1", short_tmp / "web1.cloudlet")
    view = ops.import_(short_tmp / "web1.cloudlet", "web1-copy")
    assert view.state == "stopped" and content(engine, "web1-copy") == {"4096": "exported"}
    assert view.id != vm_id(engine)

    # a disk that does not match its checksum is refused, and no VM is left behind
    with tarfile.open(short_tmp / "web1.cloudlet") as tar:
        tar.extractall(short_tmp / "x", filter="data")
    disk = short_tmp / "x" / "disk.qcow2"
    disk.write_text(json.dumps({"size": 1, "data": {"0": "evil"}}))
    with tarfile.open(short_tmp / "bad.cloudlet", "w") as tar:
        for name in ("manifest.json", "spec.json", "disk.qcow2"):
            tar.add(short_tmp / "x" / name, arcname=name)
    with pytest.raises(InvalidInput, match="not the size its manifest says"):
        ops.import_(short_tmp / "bad.cloudlet", "evil")
    # a disk with a backing file is refused even with matching checksums
    disk.write_text(json.dumps({"size": 1, "backing": "/etc/shadow"}))
    manifest = json.loads((short_tmp / "x" / "manifest.json").read_text())
    import hashlib

    manifest["files"]["disk.qcow2"] = hashlib.sha256(disk.read_bytes()).hexdigest()
    manifest["bytes"]["disk.qcow2"] = disk.stat().st_size
    (short_tmp / "x" / "manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(short_tmp / "bad2.cloudlet", "w") as tar:
        for name in ("manifest.json", "spec.json", "disk.qcow2"):
            tar.add(short_tmp / "x" / name, arcname=name)
    with pytest.raises(InvalidInput, match="backing"):
        ops.import_(short_tmp / "bad2.cloudlet", "evil")
    assert sorted(v.name for v in engine.instances()) == ["web1", "web1-copy"]
