"""The backup store: a directory of content-addressed chunks and one manifest per backup.

::

    <root>/chunks/ab/ab12...ef     4 MiB (or less, the disk's tail) of disk data, named by
                                   its SHA-256; all-zero chunks are never stored
    <root>/manifests/<vm id>/<backup id>.json
    <root>/tmp/                    work files; whatever is there while nobody holds the
                                   store's lock is left over from a killed backup

Identical data is stored once, whatever VM or backup it came from (as in Proxmox Backup
Server's fixed-size chunk store). Every file is written to a temporary name, fsynced and
renamed, and its directory fsynced: a manifest exists only once all its chunks are
durable, and a backup is recorded only once its manifest is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudlet.backup.manifest_check import MAX_MANIFEST_BYTES, HostKey, check_body
from cloudlet.errors import (
    CapacityExceeded,
    CloudletError,
    ManifestRefused,
    NotFound,
    StoreCorrupt,
)
from cloudlet.next_steps import Step, step
from cloudlet.spec.names import name_path

CHUNK_SIZE = 4 << 20
FORMAT = 1
ROOT = "root"  # the name of a VM's root disk in a manifest (volumes go by their names)


@dataclass
class DiskManifest:
    """One disk of a backup: its virtual size and the chunk for each 4 MiB (None: zeros).

    ``name`` is "root" or the volume's name; a volume also records what restore needs to
    make it again (its pool, format and id). ``bitmap`` is where the next incremental of
    this disk reads from (the dirty bitmap started at this backup's instant, on this
    layer); None: the next one reads it whole.
    """

    name: str
    virtual_size: int
    chunks: list[str | None]
    format: str = "qcow2"
    pool: str = ""
    volume_id: str = ""
    bitmap: dict[str, str] | None = None
    read_bytes: int = 0
    new_bytes: int = 0

    @property
    def is_root(self) -> bool:
        return self.name == ROOT

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "virtual_size": self.virtual_size,
            "chunks": self.chunks,
            "format": self.format,
            "pool": self.pool,
            "volume_id": self.volume_id,
            "bitmap": self.bitmap,
            "read_bytes": self.read_bytes,
            "new_bytes": self.new_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiskManifest:
        return cls(
            name=data["name"],
            virtual_size=data["virtual_size"],
            chunks=data["chunks"],
            format=data.get("format", "qcow2"),
            pool=data.get("pool", ""),
            volume_id=data.get("volume_id", ""),
            bitmap=data.get("bitmap"),
            read_bytes=data.get("read_bytes", 0),
            new_bytes=data.get("new_bytes", 0),
        )


@dataclass
class Manifest:
    id: str
    vm: str
    vm_id: str
    created_at: str
    finished_at: str
    kind: str  # "full" (read the whole disk) or "incremental" (read the dirty clusters)
    parent: str | None
    disks: list[DiskManifest]
    spec: dict[str, Any]
    vm_row: dict[str, Any]
    note: str = ""
    consistency: str = ""
    read_bytes: int = 0
    new_bytes: int = 0  # bytes of chunks this backup added to the store
    # The root disk's bitmap (DiskManifest.bitmap), also kept here where manifests
    # written before volumes were backed up have it.
    bitmap: dict[str, str] | None = None
    chunk_size: int = CHUNK_SIZE
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "vm": self.vm,
            "vm_id": self.vm_id,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "kind": self.kind,
            "parent": self.parent,
            "note": self.note,
            "consistency": self.consistency,
            "chunk_size": self.chunk_size,
            "read_bytes": self.read_bytes,
            "new_bytes": self.new_bytes,
            "bitmap": self.root.bitmap if self.disks else self.bitmap,
            "disks": [d.to_dict() for d in self.disks],
            "spec": self.spec,
            "vm_row": self.vm_row,
        }

    @staticmethod
    def digest(body: dict[str, Any]) -> str:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canonical).hexdigest()

    def to_json(self, key: HostKey) -> str:
        body = self.body()
        self.sha256 = self.digest(body)
        signed = {**body, "sha256": self.sha256, "hmac": key.sign(body)}
        return json.dumps(signed, indent=1, sort_keys=True)

    @classmethod
    def from_json(
        cls, text: str, where: str, key: HostKey | None, recorded: str | None = None
    ) -> Manifest:
        """The manifest in ``text`` (the file ``where``), checked strictly and, with
        ``key``, authenticated: by its HMAC, or (written before signing) by the SHA-256
        this host ``recorded`` for it. Without ``key`` only its shape is checked (for
        garbage collection, which only keeps more chunks for it)."""
        try:
            data = json.loads(text)
            claimed = data.pop("sha256")
            mac = data.pop("hmac", None)
        except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
            raise StoreCorrupt(f"manifest {where} is not valid JSON") from None
        if not isinstance(claimed, str) or cls.digest(data) != claimed:
            raise StoreCorrupt(f"manifest {where} does not match its sha256")
        check_body(data, where, chunk_size=CHUNK_SIZE, fmt=FORMAT)
        if key is not None:
            if mac is None:
                if recorded != claimed:
                    raise ManifestRefused(
                        f"backup manifest {where} is refused: it is not signed, and this "
                        "host has no record of writing it",
                        hint="only backups this host took before manifests were signed "
                        "restore unsigned; take a new backup",
                    )
            elif not isinstance(mac, str) or not key.verify(data, mac):
                raise ManifestRefused(
                    f"backup manifest {where} is refused: its signature is not this host's",
                    hint="it was changed or written elsewhere; restore another backup, "
                    "and find out who wrote it",
                )
        disks = [DiskManifest.from_dict(d) for d in data["disks"]]
        if disks and disks[0].bitmap is None and data.get("bitmap"):
            disks[0].bitmap = data["bitmap"]  # written before each disk had its own
        return cls(
            id=data["id"],
            vm=data["vm"],
            vm_id=data["vm_id"],
            created_at=data["created_at"],
            finished_at=data["finished_at"],
            kind=data["kind"],
            parent=data["parent"],
            note=data.get("note", ""),
            consistency=data.get("consistency", ""),
            chunk_size=data["chunk_size"],
            read_bytes=data.get("read_bytes", 0),
            new_bytes=data.get("new_bytes", 0),
            bitmap=data.get("bitmap"),
            disks=disks,
            spec=data["spec"],
            vm_row=data["vm_row"],
            sha256=claimed,
        )

    @property
    def root(self) -> DiskManifest:
        return self.disks[0]

    def chunk_ids(self) -> set[str]:
        return {c for d in self.disks for c in d.chunks if c is not None}


@dataclass(frozen=True)
class VerifyProblem:
    """One problem a verify found in a backup, typed so no client parses the sentence.

    ``kind``: "missing" or "corrupt" (a chunk of ``disk``), "manifest-changed" (not the
    manifest recorded when the backup was taken) or "unreadable" (``detail`` says why)."""

    kind: str
    backup: str
    disk: str = ""
    chunk: str = ""
    detail: str = ""

    def __str__(self) -> str:
        if self.chunk:
            return f"backup {self.backup}: disk {self.disk}: chunk {self.chunk} is {self.kind}"
        if self.kind == "manifest-changed":
            return f"backup {self.backup}: its manifest is not the one recorded"
        return f"backup {self.backup}: {self.detail}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` under ``path`` through a temp file and a rename; with ``sync``,
    durably (fsync the file, then its directory). Without, the caller syncs later."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
            elif hasattr(os, "posix_fadvise"):
                # Start writing it back now (Linux does on DONTNEED), so the fsync that
                # makes it durable later finds it mostly on disk already.
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
        if sync:
            _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BackupStore:
    """One directory; callers hold its lock (engine) while they write or prune."""

    def __init__(self, root: Path, key_file: Path) -> None:
        self.root = root
        self.key = HostKey(key_file)  # never inside the store: see manifest_check.py
        self.chunks = root / "chunks"
        self.manifests = root / "manifests"
        self.tmp = root / "tmp"
        self.write_file = _write_file  # tests swap this to simulate a full disk
        self._unsynced: list[Path] = []
        self._lock = threading.Lock()
        self._writing: set[str] = set()

    def ensure(self) -> None:
        for path in (self.chunks, self.manifests, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    def clean_tmp(self) -> list[str]:
        """Remove work files a killed backup left (call with the store's lock held)."""
        gone = []
        if self.tmp.exists():
            for path in sorted(self.tmp.iterdir()):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                gone.append(path.name)
        for stray in self.chunks.glob("*/.*.tmp"):
            stray.unlink(missing_ok=True)
            gone.append(stray.name)
        return gone

    def _full(self, exc: OSError) -> CloudletError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self.full_error()
        return CloudletError(f"cannot write to the backup store {self.root}: {exc}")

    def full_error(self) -> CapacityExceeded:
        """What a backup that ran out of space in the store reports."""
        st = shutil.disk_usage(self.root)
        return CapacityExceeded(
            f"the backup store {self.root} is full ({st.free >> 20} MiB free now): "
            "this backup was not recorded, earlier backups are untouched",
            hint="free space there, prune old backups, or set [backup] path in config.toml",
            next_steps=[step(Step.BACKUP_PRUNE)],
        )

    def holds(self, path: Path) -> bool:
        """Whether ``path`` (a work file QEMU wrote, say) lies inside the store."""
        return path.absolute().is_relative_to(self.root.absolute())

    # ------------------------------------------------------------ chunks
    def chunk_path(self, digest: str) -> Path:
        return self.chunks / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.chunk_path(digest).exists()

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store a chunk; its SHA-256 and whether it was new. Safe from several threads.

        New chunks are made durable by sync(), which callers run before they write the
        manifest that references them (one late fsync per chunk lets the kernel write
        them back in the meantime, instead of waiting for each in turn).
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.chunk_path(digest)
        with self._lock:
            if digest in self._writing or path.exists():
                return digest, False
            self._writing.add(digest)
        try:
            path.parent.mkdir(exist_ok=True)
            self.write_file(path, data, sync=False)
        except OSError as exc:
            raise self._full(exc) from None
        finally:
            with self._lock:
                self._writing.discard(digest)
        with self._lock:
            self._unsynced.append(path)
        return digest, True

    def sync(self) -> None:
        """Make every chunk put() wrote durable: fsync each file, then its directory."""
        pending, self._unsynced = self._unsynced, []
        try:
            for path in pending:
                _fsync_file(path)
            for directory in {p.parent for p in pending}:
                _fsync_dir(directory)
        except OSError as exc:
            raise self._full(exc) from None

    def get(self, digest: str, *, backup: str = "?") -> bytes:
        """A chunk's bytes, checked against its name."""
        try:
            data = self.chunk_path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreCorrupt(
                f"backup {backup}: chunk {digest} is missing from {self.chunks}",
                hint="verify the backups and restore another one",
                next_steps=[step(Step.BACKUP_VERIFY), step(Step.BACKUP_LIST)],
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreCorrupt(
                f"backup {backup}: chunk {digest} is corrupt (its content does not match "
                "its SHA-256)",
                hint="restore another backup; the next backup stores that data again",
                next_steps=[step(Step.BACKUP_LIST)],
            )
        return data

    def remove_chunks(self, digests: set[str]) -> None:
        """Delete chunks (those a failed backup added); a removed chunk is no longer
        waiting for sync(), which would otherwise fail the next backup on its absence."""
        paths = {self.chunk_path(d) for d in digests}
        with self._lock:
            self._unsynced = [p for p in self._unsynced if p not in paths]
        for path in paths:
            path.unlink(missing_ok=True)

    def all_chunks(self) -> Iterator[Path]:
        if self.chunks.exists():
            yield from (p for p in self.chunks.glob("*/*") if not p.name.startswith("."))

    # ------------------------------------------------------------ manifests
    def manifest_path(self, vm_id: str, backup_id: str) -> Path:
        return name_path(name_path(self.manifests, vm_id), backup_id, ".json")

    def write_manifest(self, manifest: Manifest) -> Path:
        """Write a manifest durably, after the chunks it references (sync() first)."""
        self.sync()
        path = self.manifest_path(manifest.vm_id, manifest.id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.write_file(path, manifest.to_json(self.key).encode())
        except OSError as exc:
            raise self._full(exc) from None
        return path

    def read_manifest(self, vm_id: str, backup_id: str, recorded: str | None = None) -> Manifest:
        """The manifest of a backup, checked and authenticated (manifest_check.py); a
        manifest of another backup or VM copied over this one's file is refused too."""
        path = self.manifest_path(vm_id, backup_id)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"backup {backup_id}: its manifest {path} is missing") from None
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestRefused(f"backup manifest {path} is refused: it is too large")
        manifest = Manifest.from_json(raw.decode(errors="replace"), str(path), self.key, recorded)
        if (manifest.vm_id, manifest.id) != (vm_id, backup_id):
            raise ManifestRefused(
                f"backup manifest {path} is refused: it is the manifest of another backup",
                hint="restore another backup, and find out who moved it there",
            )
        return manifest

    def all_manifests(self) -> Iterator[Path]:
        if self.manifests.exists():
            yield from self.manifests.glob("*/*.json")

    def delete_manifest(self, vm_id: str, backup_id: str) -> None:
        path = self.manifest_path(vm_id, backup_id)
        path.unlink(missing_ok=True)
        if path.parent.exists() and not any(path.parent.iterdir()):
            path.parent.rmdir()

    # ------------------------------------------------------------ checks
    def verify(self, manifest: Manifest) -> list[VerifyProblem]:
        """Re-read every chunk of every disk of a backup and check its hash (a chunk
        shared by several disks is read once, and named for each disk)."""
        problems = []
        seen: dict[str, str] = {}  # digest -> "" (good), "missing" or "corrupt"
        for disk in manifest.disks:
            for digest in sorted({c for c in disk.chunks if c is not None}):
                if digest not in seen:
                    try:
                        self.get(digest, backup=manifest.id)
                        seen[digest] = ""
                    except StoreCorrupt as exc:
                        seen[digest] = "missing" if "missing" in exc.message else "corrupt"
                if seen[digest]:
                    problems.append(VerifyProblem(seen[digest], manifest.id, disk.name, digest))
        return problems

    def garbage_collect(self) -> tuple[int, int]:
        """Delete chunks no manifest references: (count, bytes)."""
        referenced: set[str] = set()
        for path in self.all_manifests():
            try:
                text = path.read_text(errors="replace")
                referenced |= Manifest.from_json(text, str(path), None).chunk_ids()
            except (StoreCorrupt, ManifestRefused, OSError):
                # A manifest we cannot read might still reference anything: keep all.
                return 0, 0
        count = size = 0
        for chunk in list(self.all_chunks()):
            if chunk.name not in referenced:
                size += chunk.stat().st_size
                chunk.unlink(missing_ok=True)
                count += 1
        return count, size
