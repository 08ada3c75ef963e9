"""Crafted backup manifests (the store may sit on shared storage): each one is refused in
one line naming its file, `backup verify` reports it, and no restore uses it; nothing is
made. Table-driven: a new field or check adds a row."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudlet.backup.manifest_check import canonical
from cloudlet.backup.store import Manifest
from cloudlet.engine.backup_records import MANIFEST_KEY
from cloudlet.engine.backups import BackupService
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError, ManifestRefused, NotFound, StoreCorrupt
from tests.fakes import FakeDisks, make_vm_with_volume

MIB = 1 << 20
Body = dict[str, Any]


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    """VM web1, which has volume data1."""
    return make_vm_with_volume(short_tmp / "home")


@pytest.fixture
def ops(engine: Engine) -> BackupService:
    """The backups of web1's engine."""
    return engine.backups


def snapshot(engine: Engine) -> dict[str, str]:
    """What a refused restore must not change: every file of the instances and pools
    (names and content), and the VMs and volumes the database knows."""
    found: dict[str, str] = {}
    for top in (engine.paths.instances, engine.paths.pools):
        for path in sorted(top.rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    found["vms"] = ",".join(sorted(v.name for v in engine.instances()))
    found["volumes"] = ",".join(sorted(v.name for v in engine.storage.volumes()))
    return found


def rehash(body: Body) -> Body:
    """What an attacker who can write the store does: fix up the manifest's own SHA-256."""
    body.pop("sha256", None)
    return {**body, "sha256": Manifest.digest({k: v for k, v in body.items() if k != "hmac"})}


def unsigned(body: Body) -> Body:
    body.pop("hmac")
    return body


def other_key(body: Body) -> Body:
    core = {k: v for k, v in body.items() if k not in ("sha256", "hmac")}
    body["hmac"] = hmac.new(b"k" * 32, canonical(core), hashlib.sha256).hexdigest()
    return body


def disk(i: int, **changes: Any) -> Callable[[Body], Body]:
    def edit(body: Body) -> Body:
        body["disks"][i].update(changes)
        return body

    return edit


def top(**changes: Any) -> Callable[[Body], Body]:
    def edit(body: Body) -> Body:
        body.update(changes)
        return body

    return edit


def chunks(value: list[Any]) -> Callable[[Body], Body]:
    def edit(body: Body) -> Body:
        body["disks"][0]["chunks"][: len(value)] = value
        return body

    return edit


def drop_chunk(body: Body) -> Body:
    body["disks"][0]["chunks"].pop()
    return body


def twice(body: Body) -> Body:
    body["disks"].append(dict(body["disks"][1]))
    return body


# (case, edit of the parsed manifest, what the one line says)
CASES: list[tuple[str, Callable[[Body], Body], str]] = [
    ("chunk id upper case", chunks(["A" * 64]), "chunk id"),
    ("chunk id 63 digits", chunks(["a" * 63]), "chunk id"),
    ("chunk id a path", chunks(["../../../../etc/passwd"]), "chunk id"),
    ("chunk id with newline", chunks(["a" * 64 + "\n"]), "chunk id"),
    ("chunk id a number", chunks([7]), "chunk id"),
    ("one chunk too few", drop_chunk, "one chunk per 4 MiB"),
    ("volume leaves the pool", disk(1, name="../../../../tmp/x"), "volume name"),
    ("volume absolute", disk(1, name="/etc/x"), "volume name"),
    ("volume name newline", disk(1, name="data1\n"), "volume name"),
    ("pool a path", disk(1, pool="../etc"), "pool name"),
    ("volume id not a uuid", disk(1, volume_id="x' OR 1"), "volume id"),
    ("disk format vmdk", disk(1, format="vmdk"), "disk format"),
    ("root not first", disk(0, name="data9"), "root disk"),
    ("negative size", disk(0, virtual_size=-5), "virtual_size"),
    ("size a bool", disk(0, virtual_size=True), "virtual_size"),
    ("size 2 PiB", disk(0, virtual_size=1 << 51), "virtual_size"),
    ("same volume twice", twice, "same name"),
    ("no disks", top(disks=[]), "disks"),
    ("kind unknown", top(kind="x;rm -rf /"), "kind"),
    ("other chunk size", top(chunk_size=1), "chunk size"),
    ("note with escape", top(note="\x1b]0;pwned\x07"), "note"),
    ("unknown field", top(kernel="/boot/vmlinuz"), "known fields"),
    ("row with a path field", top(vm_row={"kernel": "/etc/shadow"}), "VM record"),
    ("spec not an object", top(spec=[1]), "spec"),
    ("vm id not a uuid", top(vm_id="../x"), "VM id"),
    ("bitmap name", disk(0, bitmap={"layer": "/x", "name": "evil"}), "bitmap"),
    ("edited, re-hashed, signature kept", top(note="restored by root"), "signature is not"),
    ("chunk swapped, re-hashed, unsigned", lambda b: unsigned(chunks(["b" * 64])(b)), "not signed"),
    ("re-hashed, another host's key", other_key, "signature is not this host's"),
    (
        "re-hashed, signature removed then a field edited",
        lambda b: unsigned(top(note="x")(b)),
        "not signed",
    ),
]


@pytest.mark.parametrize(("case", "edit", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_crafted_manifest_is_refused_by_every_reader(
    engine: Engine, ops: BackupService, case: str, edit: Callable[[Body], Body], says: str
) -> None:
    FakeDisks.write(Path(engine.storage.volume("data1").path), "0", "data")
    backup = ops.create("web1")
    engine.stop("web1")
    path = ops.store.manifest_path(engine.show("web1").id, backup.id)
    path.write_text(json.dumps(rehash(edit(json.loads(path.read_text())))))
    before = snapshot(engine)
    for attempt in (
        lambda: ops.restore("web1", as_name="copy2"),  # --latest: refused, marked failed
        lambda: ops.restore("web1", backup_id=backup.id, as_name="copy"),
        lambda: ops.restore("web1", backup_id=backup.id),
    ):
        with pytest.raises(CloudletError) as info:
            attempt()
        assert says in info.value.message and str(path) in info.value.message, case
        assert isinstance(info.value, ManifestRefused) and info.value.exit_code == 2
        assert "\n" not in info.value.one_line()
        assert snapshot(engine) == before, case
    with pytest.raises(NotFound, match="no usable backup"):  # --latest never tries it again
        ops.restore("web1", as_name="copy2")
    report = ops.verify("web1")
    (problem,) = report.problems
    assert problem.kind == "unreadable" and problem.backup and says in problem.detail
    assert str(problem) == f"backup {problem.backup}: {problem.detail}"
    assert ops.backups("web1")[0].verified == "failed"


def test_the_signed_manifest_of_another_backup_copied_over_is_refused(
    engine: Engine, ops: BackupService
) -> None:
    old = ops.create("web1")
    new = ops.create("web1")
    vm_id = engine.show("web1").id
    target = ops.store.manifest_path(vm_id, new.id)
    target.write_bytes(ops.store.manifest_path(vm_id, old.id).read_bytes())
    with pytest.raises(ManifestRefused, match="the manifest of another backup"):
        ops.restore("web1", backup_id=new.id, as_name="copy")
    assert [v.name for v in engine.instances()] == ["web1"]


def test_truncated_or_garbage_manifests_are_corrupt_not_internal_errors(
    engine: Engine, ops: BackupService
) -> None:
    backup = ops.create("web1")
    path = ops.store.manifest_path(engine.show("web1").id, backup.id)
    text = path.read_text()
    for case in (text[: len(text) // 2], "", "[]", "null", '{"sha256": 5}', "\xff" * 10,
                 "[" * 100000):  # fmt: skip
        path.write_text(case)
        with pytest.raises(StoreCorrupt) as info:
            ops.restore("web1", backup_id=backup.id, as_name="copy")
        assert str(path) in info.value.message
        assert [v.name for v in engine.instances()] == ["web1"]


def test_the_key_is_made_once_private_and_outside_the_store(
    engine: Engine, ops: BackupService
) -> None:
    key = engine.paths.home / MANIFEST_KEY
    assert not key.exists()
    first = ops.create("web1")
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert not key.is_relative_to(ops.store.root)
    made = key.read_bytes()
    key.chmod(0o644)
    second = BackupService(
        engine.ctx, engine.storage
    )  # a new process reads the same key and trusts the backup
    assert second.create("web1").kind and second.verify("web1").problems == []
    assert key.read_bytes() == made and first.id in [b.id for b in second.backups("web1")]
    assert key.stat().st_mode & 0o777 == 0o600  # a key loosened by hand is tightened again
    # another host (another key) does not trust this host's manifests
    os.replace(key, key.with_name("elsewhere"))
    with pytest.raises(ManifestRefused, match="signature is not this host's"):
        BackupService(engine.ctx, engine.storage).restore(
            "web1", backup_id=first.id, as_name="copy"
        )


def test_restore_as_checks_the_record_even_in_a_signed_manifest(
    engine: Engine, ops: BackupService
) -> None:
    """Defence in depth: a manifest signed with this host's key (as one written before
    these checks) still gets the record checks of a create, and no host path from it."""
    backup = ops.create("web1")
    path = ops.store.manifest_path(engine.show("web1").id, backup.id)

    def signed(**row: Any) -> None:
        body = json.loads(path.read_text())
        core = {k: v for k, v in body.items() if k not in ("sha256", "hmac")}
        core["vm_row"].update(row)
        mac = ops.store.key.sign(core)
        path.write_text(json.dumps({**core, "sha256": Manifest.digest(core), "hmac": mac}))
        with engine.db.session() as s:
            from cloudlet.store.models import BackupRow

            fresh = s.get(BackupRow, backup.id)
            assert fresh is not None
            fresh.manifest_sha256 = Manifest.digest(core)

    signed(cpus=-5)
    with pytest.raises(CloudletError, match="cpus"):
        ops.restore("web1", backup_id=backup.id, as_name="copy")
    signed(cpus=engine.show("web1").cpus, image_path="/etc", kernel="/etc/shadow")
    with pytest.raises(CloudletError, match="known fields"):
        ops.restore("web1", backup_id=backup.id, as_name="copy")
    assert [v.name for v in engine.instances()] == ["web1"]
    body = json.loads(path.read_text())
    del body["vm_row"]["kernel"]
    path.write_text(json.dumps(body))
    signed()
    ops.restore("web1", backup_id=backup.id, as_name="copy")
    assert engine.show("copy").paths["image"] == engine.show("web1").paths["image"] != "/etc"


def test_latest_skips_a_forged_newest_manifest_and_restores_the_one_before(
    engine: Engine,
    ops: BackupService,
) -> None:
    FakeDisks.write(Path(engine.storage.volume("data1").path), "0", "good")
    good = ops.create("web1")
    forged = ops.create("web1")
    path = ops.store.manifest_path(engine.show("web1").id, forged.id)
    body = json.loads(path.read_text())
    body["note"] = "forged"
    path.write_text(json.dumps(rehash(body)))
    engine.notices.clear()
    message = ops.restore("web1", as_name="copy").message  # --latest
    assert good.id in message and forged.id not in message
    assert any(forged.id in n and str(path) in n for n in engine.notices)
    assert FakeDisks.content(Path(engine.storage.volume("copy-data1").path)) == {"0": "good"}
    assert {b.id: b.verified for b in ops.backups("web1")}[forged.id] == "failed"
    engine.stop("web1")
    assert good.id in ops.restore("web1").message  # in place, --latest: the same
