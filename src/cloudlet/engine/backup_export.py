"""Export a stopped VM with its volumes into one tar, and import such a tar as a new VM.

::

    manifest.json           format, the VM's row, its volumes, the SHA-256 of every file
    spec.json               the VM's spec
    disk.qcow2              the root disk, flattened
    volumes/<name>.qcow2    each attached volume, flattened (format 2; format 1 had none)

Every disk of an import goes through the image importer's checks (no backing file, no
external data file): an export is a file from anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cloudlet.engine.backup_restore import (
    NewVolume,
    check_new_volumes,
    new_volume_name,
    pool_dir,
)
from cloudlet.engine.image_cap import image_size_cap
from cloudlet.engine.storage_ops import _OFFLINE, DEFAULT_POOL, active_disk, attached_volumes
from cloudlet.errors import CloudletError, Conflict, InvalidInput
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.names import validate_name
from cloudlet.storage.staging import staging
from cloudlet.store.models import InstanceRow, utcnow

if TYPE_CHECKING:
    from cloudlet.engine.backup_ops import BackupOps
    from cloudlet.engine.views import InstanceView

EXPORT_FORMAT = 2
READABLE_FORMATS = (1, 2)
ROW_FIELDS = ("image", "image_path", "type_name", "cpus", "memory", "disk_size", "arch",
              "location")  # fmt: skip


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def vm_row_data(ops: BackupOps, row: InstanceRow) -> dict[str, Any]:
    """What a new VM made from a backup or an export needs of the old one's row."""
    seed = (ops.e.paths.instance_dir(row.id) / "seed.iso").exists()
    return {
        **{f: getattr(row, f) for f in ROW_FIELDS},
        "ssh": row.ssh_port is not None,
        "seed": seed,
    }


def export(ops: BackupOps, vm: str, dest: Path) -> str:
    e = ops.e
    dest = dest.absolute()
    if dest.exists():
        raise Conflict(f"{dest} already exists", hint="pick another file name")
    with e._lock(vm):
        row = e._reconcile_locked(e._row(vm))
        if row.state not in _OFFLINE:
            raise Conflict(
                f"cannot export {vm}: it is {row.state}",
                hint=f"stop it first ('cloudlet stop {vm}'), or restore a backup "
                "as a stopped copy with 'cloudlet restore --as' and export that",
            )
        work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            (work / "volumes").mkdir()
            e.deps.disks.flatten(active_disk(e, row.id, heal=True), work / "disk.qcow2")
            volumes = []
            for vol in attached_volumes(e, row.id):
                file = f"volumes/{vol.name}.qcow2"
                e.deps.disks.flatten(Path(vol.path), work / file, vol.format)
                volumes.append({"name": vol.name, "file": file, "size": vol.size})
            spec = InstanceSpec.model_validate_json(row.spec_json).model_dump(mode="json")
            (work / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
            names = ["spec.json", "disk.qcow2", *(str(v["file"]) for v in volumes)]
            manifest = {
                "format": EXPORT_FORMAT,
                "vm": vm,
                "exported_at": utcnow().isoformat() + "Z",
                "vm_row": vm_row_data(ops, row),
                "volumes": volumes,
                "files": {n: sha256_of(work / n) for n in names},
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
            partial = work / "out.tar"
            with tarfile.open(partial, "w") as tar:
                for name in ("manifest.json", *names):
                    tar.add(work / name, arcname=name)
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.replace(partial, dest)
        except OSError as exc:
            raise CloudletError(
                f"cannot write {dest}: {exc.strerror}", hint="check the path and free space"
            ) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    size = dest.stat().st_size
    return f"{vm} exported to {dest} ({size >> 20} MiB)"


def _copy_checked(f: IO[bytes], dest: Path, expected: object, what: str) -> None:
    """Copy a tar member to ``dest``, refused (and removed) unless its SHA-256 matches."""
    digest = hashlib.sha256()
    try:
        with open(dest, "wb") as out:
            while block := f.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != expected:
            raise InvalidInput(f"{what} does not match its SHA-256")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def import_(ops: BackupOps, src: Path, name: str | None = None) -> InstanceView:
    e = ops.e
    src = src.absolute()
    try:
        tar = tarfile.open(src, "r:")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise InvalidInput(f"{src} is not a cloudlet export: {exc}") from None
    with tar:
        members = {m.name: m for m in tar.getmembers()}

        def read(member: str, limit: int = 1 << 20) -> bytes:
            f = tar.extractfile(members[member])
            assert f is not None
            return f.read(limit)

        if "manifest.json" not in members or not members["manifest.json"].isfile():
            raise InvalidInput(
                f"{src} is not a cloudlet export: it holds {sorted(members)}",
                hint="make one with 'cloudlet export VM FILE'",
            )
        try:
            manifest = json.loads(read("manifest.json"))
            sums = manifest["files"]
            vm_row = manifest["vm_row"]
            volumes = [(str(v["name"]), str(v["file"])) for v in manifest.get("volumes", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{src}: its manifest is not valid ({exc})") from None
        if manifest.get("format") not in READABLE_FORMATS:
            raise InvalidInput(f"{src}: unknown export format {manifest.get('format')!r}")
        for vol_name, file in volumes:
            validate_name(vol_name, what="volume name")
            if file != f"volumes/{vol_name}.qcow2":
                raise InvalidInput(f"{src}: volume {vol_name} is stored as {file!r}")
        expected = {"manifest.json", "spec.json", "disk.qcow2", *(f for _, f in volumes)}
        files = {n for n, m in members.items() if not (m.isdir() and n == "volumes")}
        if files != expected or not all(members[n].isfile() for n in expected):
            raise InvalidInput(
                f"{src} is not a cloudlet export: it holds {sorted(members)}",
                hint="make one with 'cloudlet export VM FILE'",
            )
        spec_bytes = read("spec.json")
        try:
            spec_data = json.loads(spec_bytes)
        except ValueError as exc:
            raise InvalidInput(f"{src}: its spec is not valid ({exc})") from None
        if hashlib.sha256(spec_bytes).hexdigest() != sums.get("spec.json"):
            raise InvalidInput(f"{src}: spec.json does not match its SHA-256")
        name = name or str(spec_data.get("name"))
        source_vm = str(manifest.get("vm", spec_data.get("name")))
        new_names = [new_volume_name(name, source_vm, v) for v, _ in volumes]
        validate_name(name)
        e._ensure_name_free(name)
        check_new_volumes(e, [(n, DEFAULT_POOL) for n in new_names], str(src))

        def extract(member: str, dest: Path) -> int:
            """One disk of the export, checked; its virtual size."""
            f = tar.extractfile(members[member])
            assert f is not None
            _copy_checked(f, dest, sums.get(member), f"{src}: {member}")
            try:
                # no backing file, no data file, a clean check, not over the cap
                return e.deps.disks.inspect_import(dest, image_size_cap(e), f"{src.name}: {member}")
            except BaseException:
                dest.unlink(missing_ok=True)
                raise

        def fill(disk: Path) -> list[NewVolume]:
            part = disk.with_name(".import.qcow2")
            extract("disk.qcow2", part)
            os.replace(part, disk)
            made: list[NewVolume] = []
            try:
                for new, (_, file) in zip(new_names, volumes, strict=True):
                    # staged in the pool (so it moves in by a rename), swept if we die
                    where = stage.enter_context(staging(pool_dir(e, DEFAULT_POOL, new, str(src))))
                    dest = where / f"{new}.qcow2"
                    size = extract(file, dest)
                    made.append(NewVolume(new, DEFAULT_POOL, size, dest))
            except BaseException:
                for vol in made:
                    vol.file.unlink(missing_ok=True)
                raise
            return made

        with ExitStack() as stage:
            return ops._new_vm(name, spec_data, vm_row, fill, lambda: f"imported from {src.name}")
