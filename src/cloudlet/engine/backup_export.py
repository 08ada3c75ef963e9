"""Export a stopped VM with its volumes into one tar, and import such a tar as a new VM.

::

    manifest.json           format, the VM's row, its volumes, the SHA-256 of every file
    spec.json               the VM's spec
    disk.qcow2              the root disk, flattened
    volumes/<name>.qcow2    each attached volume, flattened (format 2; format 1 had none)

Every disk of an import goes through the image importer's checks (no backing file, no
external data file): an export is a file from anywhere. Its members, manifest and VM
record (vm_record.py) and the SHA-256 of every disk are checked before anything is
made; each disk is hashed again as it is copied.
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
from typing import IO, Any

from cloudlet.backup.manifest_check import HEX64
from cloudlet.driver.base import HOTPLUG_SLOTS
from cloudlet.engine import vm_state
from cloudlet.engine.backup_new_vm import new_vm
from cloudlet.engine.backup_records import vm_row_data
from cloudlet.engine.backup_volumes import NewVolume, check_new_volumes, new_volume_name, pool_dir
from cloudlet.engine.context import EngineContext
from cloudlet.engine.image_cap import image_size_cap
from cloudlet.engine.storage import StorageService
from cloudlet.engine.storage_rows import DEFAULT_POOL, OFFLINE, active_disk, attached_volumes
from cloudlet.engine.views import Done, InstanceView
from cloudlet.engine.vm_record import check_record
from cloudlet.errors import CloudletError, Conflict, InvalidInput
from cloudlet.next_steps import Step, step
from cloudlet.progress import Tracker
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.names import validate_name
from cloudlet.storage.staging import staging
from cloudlet.store.models import utcnow

EXPORT_FORMAT = 3  # 3: the manifest says each file's size
READABLE_FORMATS = (1, 2, 3)
MAX_MEMBERS = 4 + HOTPLUG_SLOTS  # manifest, spec, disk, the volumes directory, volumes
SMALL_FILE = 1 << 20  # manifest.json and spec.json
WRITING = "writing the archive"  # stages that count bytes
CHECKING = "checking the disks' SHA-256"


# What to do with a file that is no export: make one (in words, and as a step).
EXPORT_HINT = ("make one by exporting a stopped VM", (step(Step.EXPORT),))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def export(ctx: EngineContext, vm: str, dest: Path, track: Tracker | None = None) -> Done:
    """One tar with the VM's spec, its root disk and its volumes; ``track`` hears the
    stages, and a cancel at any of them leaves no file and no work directory."""
    track = track or Tracker()
    dest = dest.absolute()
    if dest.exists():
        raise Conflict(f"{dest} already exists", hint="pick another file name")
    with ctx.lock(vm, cancel=track.cancel):
        row = vm_state.reconcile_locked(ctx, ctx.row(vm))
        if row.state not in OFFLINE:
            raise Conflict(
                f"cannot export {vm}: it is {row.state}",
                hint="stop it first, or restore a backup as a stopped copy and export that",
                next_steps=[step(Step.VM_STOP, vm=vm), step(Step.RESTORE_AS, vm=vm)],
            )
        work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            (work / "volumes").mkdir()
            track.phase("copying the root disk")
            ctx.deps.disks.flatten(active_disk(ctx, row.id, heal=True), work / "disk.qcow2")
            volumes = []
            for vol in attached_volumes(ctx, row.id):
                file = f"volumes/{vol.name}.qcow2"
                track.phase(f"copying volume {vol.name}")
                ctx.deps.disks.flatten(Path(vol.path), work / file, vol.format)
                volumes.append({"name": vol.name, "file": file, "size": vol.size})
            spec = InstanceSpec.model_validate_json(row.spec_json).model_dump(mode="json")
            (work / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
            names = ["spec.json", "disk.qcow2", *(str(v["file"]) for v in volumes)]
            track.phase("hashing the files")
            manifest = {
                "format": EXPORT_FORMAT,
                "vm": vm,
                "exported_at": utcnow().isoformat() + "Z",
                "vm_row": vm_row_data(ctx, row),
                "volumes": volumes,
                "files": {n: sha256_of(work / n) for n in names},
                "bytes": {n: (work / n).stat().st_size for n in names},
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
            partial = work / "out.tar"
            total = sum((work / n).stat().st_size for n in names)
            written = 0
            with tarfile.open(partial, "w") as tar:
                for name in ("manifest.json", *names):
                    track.count(WRITING, written, total)
                    tar.add(work / name, arcname=name)
                    written += 0 if name == "manifest.json" else (work / name).stat().st_size
            track.count(WRITING, total, total)
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
    return Done("vm", vm, "exported", f"{vm} exported to {dest} ({size >> 20} MiB)")


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


def _members(tar: tarfile.TarFile, src: Path) -> dict[str, tarfile.TarInfo]:
    """The archive's members, refused (before anything is made) unless each is a plain
    file (or the ``volumes`` directory) named once, and there are few enough of them."""
    found: dict[str, tarfile.TarInfo] = {}
    hint, steps = EXPORT_HINT
    while True:
        try:
            member = tar.next()
        except (tarfile.TarError, OSError, EOFError, UnicodeError, ValueError) as exc:
            raise InvalidInput(
                f"{src} is not a cloudlet export: {exc}", hint=hint, next_steps=steps
            ) from None
        if member is None:
            return found
        shown = repr(member.name[:80])
        if len(found) >= MAX_MEMBERS:
            raise InvalidInput(
                f"{src} holds more than {MAX_MEMBERS} members", hint=hint, next_steps=steps
            )
        if member.name in found:
            raise InvalidInput(f"{src} holds {shown} twice", hint=hint, next_steps=steps)
        plain = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
        if not plain and not (member.name == "volumes" and member.isdir()):
            raise InvalidInput(
                f"{src}: member {shown} is not a plain file (links, devices and fifos are "
                "never part of an export)",
                hint=hint,
                next_steps=steps,
            )
        found[member.name] = member


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, src: Path) -> bytes:
    if member.size > SMALL_FILE:
        raise InvalidInput(f"{src}: {member.name} is larger than {SMALL_FILE >> 10} KiB")
    f = tar.extractfile(member)
    assert f is not None
    return f.read(SMALL_FILE)


def _check_manifest(manifest: object, src: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The export's manifest (its fields typed and bounded) and its (volume, file) pairs."""
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        raise InvalidInput(f"{src}: unknown export format (or not a cloudlet export)")
    sums, volumes = manifest.get("files"), manifest.get("volumes", [])
    if not isinstance(sums, dict) or not isinstance(volumes, list):
        raise InvalidInput(f"{src}: its manifest is not valid")
    for file, digest in sums.items():
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            raise InvalidInput(f"{src}: the SHA-256 of {str(file)[:80]!r} is not valid")
    pairs: list[tuple[str, str]] = []
    for vol in volumes[: HOTPLUG_SLOTS + 1]:
        if not isinstance(vol, dict) or not isinstance(vol.get("name"), str):
            raise InvalidInput(f"{src}: its manifest lists a volume that is not valid")
        vol_name, file = vol["name"], vol.get("file")
        if not vol_name.isprintable():
            raise InvalidInput(f"{src}: invalid volume name {vol_name[:80]!r}")
        validate_name(vol_name, what="volume name")
        if file != f"volumes/{vol_name}.qcow2":
            raise InvalidInput(f"{src}: volume {vol_name} is stored as {str(file)[:80]!r}")
        pairs.append((vol_name, file))
    if len(volumes) > HOTPLUG_SLOTS:
        raise InvalidInput(f"{src} has {len(volumes)} volumes; a VM takes {HOTPLUG_SLOTS}")
    sizes = manifest.get("bytes")
    if manifest["format"] >= 3 and not (
        isinstance(sizes, dict) and all(type(v) is int for v in sizes.values())
    ):
        raise InvalidInput(f"{src}: its manifest does not say the size of each file")
    return manifest, pairs


def import_(
    ctx: EngineContext,
    storage: StorageService,
    src: Path,
    name: str | None = None,
    track: Tracker | None = None,
) -> InstanceView:
    """A new stopped VM from an export: every member, field and disk is checked before
    anything is made (an export is a file from anywhere: vm_record.py for its record).
    ``track`` hears the stages; a cancel at any of them leaves no part of the VM."""
    track = track or Tracker()
    src = src.absolute()
    try:
        tar = tarfile.open(src, "r:")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise InvalidInput(
            f"{src} is not a cloudlet export: {exc}",
            hint=EXPORT_HINT[0],
            next_steps=EXPORT_HINT[1],
        ) from None
    with tar:
        track.phase("checking the archive")
        members = _members(tar, src)
        if "manifest.json" not in members:
            raise InvalidInput(
                f"{src} is not a cloudlet export: it holds {sorted(members)[:8]}",
                hint=EXPORT_HINT[0],
                next_steps=EXPORT_HINT[1],
            )
        try:
            raw_manifest = json.loads(_read_small(tar, members["manifest.json"], src))
        except (ValueError, RecursionError) as exc:
            raise InvalidInput(f"{src}: its manifest is not valid JSON ({exc})") from None
        manifest, volumes = _check_manifest(raw_manifest, src)
        sums, vm_row = manifest["files"], manifest.get("vm_row")
        expected = {"manifest.json", "spec.json", "disk.qcow2", *(f for _, f in volumes)}
        files = {n for n, m in members.items() if not (m.isdir() and n == "volumes")}
        if files != expected:
            odd = sorted(files ^ expected)[:4]
            raise InvalidInput(
                f"{src} is not a cloudlet export: unexpected or missing members {odd}",
                hint=EXPORT_HINT[0],
                next_steps=EXPORT_HINT[1],
            )
        sizes = manifest.get("bytes")
        for member in sorted(expected - {"manifest.json"}):
            if isinstance(sizes, dict) and members[member].size != sizes.get(member):
                raise InvalidInput(f"{src}: {member} is not the size its manifest says")
        spec_bytes = _read_small(tar, members["spec.json"], src)
        if hashlib.sha256(spec_bytes).hexdigest() != sums.get("spec.json"):
            raise InvalidInput(f"{src}: spec.json does not match its SHA-256")
        try:
            spec_data = json.loads(spec_bytes)
        except (ValueError, RecursionError) as exc:
            raise InvalidInput(f"{src}: its spec is not valid ({exc})") from None
        if not isinstance(spec_data, dict):
            raise InvalidInput(f"{src}: its spec is not an object")
        name = name or str(spec_data.get("name"))
        source_vm = manifest.get("vm", spec_data.get("name"))
        if not isinstance(source_vm, str) or not source_vm.isprintable():
            raise InvalidInput(f"{src}: the name of its VM is not valid")
        validate_name(source_vm)
        new_names = [new_volume_name(name, source_vm, v) for v, _ in volumes]
        validate_name(name)
        vm_state.ensure_name_free(ctx, name)
        check_new_volumes(storage, [(n, DEFAULT_POOL) for n in new_names], str(src))
        check_record(ctx, name, spec_data, vm_row, str(src))  # again in _new_vm, for restores
        disks = ("disk.qcow2", *(f for _, f in volumes))
        total, done = sum(members[m].size for m in disks), 0
        for member in disks:  # read twice: refused early
            f = tar.extractfile(members[member])
            assert f is not None
            digest = hashlib.sha256()
            while block := f.read(1 << 20):
                digest.update(block)
                done += len(block)
                track.count(CHECKING, done, total)
            if digest.hexdigest() != sums.get(member):
                raise InvalidInput(f"{src}: {member} does not match its SHA-256")

        def extract(member: str, dest: Path) -> int:
            """One disk of the export, checked; its virtual size."""
            f = tar.extractfile(members[member])
            assert f is not None
            track.phase(f"extracting {member}")
            _copy_checked(f, dest, sums.get(member), f"{src}: {member}")
            try:
                # no backing file, no data file, a clean check, not over the cap
                return ctx.deps.disks.inspect_import(
                    dest, image_size_cap(ctx), f"{src.name}: {member}"
                )
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
                    where = stage.enter_context(
                        staging(pool_dir(storage, DEFAULT_POOL, new, str(src)))
                    )
                    dest = where / f"{new}.qcow2"
                    size = extract(file, dest)
                    made.append(NewVolume(new, DEFAULT_POOL, size, dest))
            except BaseException:
                for vol in made:
                    vol.file.unlink(missing_ok=True)
                raise
            return made

        story = lambda: f"imported from {src.name}"  # noqa: E731
        with ExitStack() as stage:
            return new_vm(ctx, storage, name, spec_data, vm_row, fill, story, str(src))
