"""Backup manifests are read as hostile files: the store may sit on shared storage.

A manifest is accepted only when its structure is exactly what cloudlet writes (chunk
ids of 64 lowercase hex digits, valid names, sizes and counts bounded and consistent,
allow-listed kinds and formats, no host paths used) and when it is authenticated: an
HMAC-SHA256 of its canonical body with this host's secret key (made on first use, mode
0600, in ``keys/backup-manifest.key`` of the state directory, never in the store). Its
own SHA-256 only catches accidents: anyone who can write the store can recompute it.

Manifests written before signing carry no HMAC: one is accepted only when its SHA-256 is
the one this host's database recorded for that backup when it wrote it (the database is
in the state directory, out of the store's reach). Without that record it is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from cloudlet.errors import CloudletError, ManifestRefused
from cloudlet.spec import names
from cloudlet.spec.names import validate_name
from cloudlet.spec.storage import HOTPLUG_SLOTS

KEY_BYTES = 32
HEX64 = re.compile(r"[0-9a-f]{64}")
BACKUP_ID = names.BACKUP_ID.pattern
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BITMAP = re.compile(r"cloudlet-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")
MAX_DISK_BYTES = 1 << 50  # 1 PiB: no disk cloudlet backs up is larger
MAX_TEXT = 1000
MAX_MANIFEST_BYTES = 64 << 20  # 1 PiB of 4 MiB chunks would be ~18 GiB of ids: far beyond
KINDS = ("full", "incremental")
FORMATS = ("qcow2", "raw")
CONSISTENCY = ("", "file systems frozen", "crash-consistent", "offline")
TOP_KEYS = {"format", "id", "vm", "vm_id", "created_at", "finished_at", "kind", "parent",
            "note", "consistency", "chunk_size", "read_bytes", "new_bytes", "bitmap",
            "disks", "spec", "vm_row", "sha256", "hmac"}  # fmt: skip
DISK_KEYS = {"name", "virtual_size", "chunks", "format", "pool", "volume_id", "bitmap",
             "read_bytes", "new_bytes"}  # fmt: skip
ROW_KEYS = {"image", "image_path", "type_name", "cpus", "memory", "disk_size", "arch",
            "location", "ssh", "seed"}  # fmt: skip


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class HostKey:
    """This host's secret for manifest HMACs: 32 random bytes in a 0600 file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            self._key = self._load()
        return self._key

    def _load(self) -> bytes:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                if os.fstat(fd).st_mode & 0o077:  # loosened by hand: only its owner reads it
                    os.fchmod(fd, 0o600)
                data = f.read(KEY_BYTES + 1)
        except OSError as exc:
            raise CloudletError(
                f"cannot read the backup signing key {self.path}: {exc.strerror}",
                hint="check that file; without it no backup can be restored",
            ) from None
        if len(data) != KEY_BYTES:
            raise CloudletError(
                f"the backup signing key {self.path} is not {KEY_BYTES} bytes",
                hint="restore that file from a copy; a new key cannot read existing backups",
            )
        return data

    def sign(self, body: dict[str, Any]) -> str:
        return hmac.new(self.key(), canonical(body), hashlib.sha256).hexdigest()

    def verify(self, body: dict[str, Any], claimed: str) -> bool:
        return hmac.compare_digest(self.sign(body), claimed)


def _refuse(where: str, why: str) -> ManifestRefused:
    return ManifestRefused(
        f"backup manifest {where} is refused: {why}",
        hint="nothing was read from it; restore another backup, and find out who wrote it",
    )


def _int(data: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = data.get(key, 0)
    if type(value) is not int or not low <= value <= high:
        raise _refuse(where, f"{key} is {_short(value)}, not a whole number from {low} to {high}")
    return value


def _text(value: object, what: str, where: str, allowed: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise _refuse(where, f"{what} is not printable text of at most {MAX_TEXT} characters")
    if allowed is not None and value not in allowed:
        raise _refuse(where, f"{what} {_short(value)} is not one of {', '.join(allowed)}")
    return value


def _match(pattern: re.Pattern[str], value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _refuse(where, f"{what} {_short(value)} is not valid")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.isprintable():  # no trailing newline either
        raise _refuse(where, f"{what} {_short(value)} is not valid")
    try:
        return validate_name(value, what=what)
    except CloudletError as exc:
        raise _refuse(where, exc.message) from None


def _bitmap(value: object, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or set(value) != {"layer", "name"}:
        raise _refuse(where, "a bitmap is not {layer, name}")
    _match(BITMAP, value["name"], "bitmap name", where)
    layer = _text(value["layer"], "bitmap layer", where)
    if not layer.startswith("/"):  # compared with the disk's path, never opened
        raise _refuse(where, "a bitmap layer is not an absolute path")


def _disk(data: object, index: int, chunk_size: int, where: str) -> str:
    if not isinstance(data, dict) or not set(data) <= DISK_KEYS or "chunks" not in data:
        raise _refuse(where, f"disk {index} is not an object with the known fields")
    name = data.get("name")
    if index == 0:
        if name != "root":
            raise _refuse(where, "its first disk is not the root disk")
    else:
        name = _name(name, "volume name", where)
        _name(data.get("pool"), "pool name", where)
        if data.get("volume_id", ""):
            _match(UUID, data["volume_id"], "volume id", where)
    size = _int(data, "virtual_size", where, 1, MAX_DISK_BYTES)
    _text(data.get("format", "qcow2"), "disk format", where, FORMATS)
    if index == 0 and data.get("format", "qcow2") != "qcow2":
        raise _refuse(where, "its root disk is not qcow2")
    _int(data, "read_bytes", where, 0, MAX_DISK_BYTES)
    _int(data, "new_bytes", where, 0, MAX_DISK_BYTES)
    _bitmap(data.get("bitmap"), where)
    chunks = data["chunks"]
    if not isinstance(chunks, list) or len(chunks) != -(-size // chunk_size):
        raise _refuse(where, f"disk {name} has not one chunk per {chunk_size >> 20} MiB")
    for chunk in chunks:
        if chunk is not None:
            _match(HEX64, chunk, "chunk id", where)
    return str(name)


def check_body(data: object, where: str, *, chunk_size: int, fmt: int) -> dict[str, Any]:
    """``data`` (a manifest's parsed JSON, sha256 and hmac removed) when it has exactly
    the shape cloudlet writes; else ManifestRefused naming ``where``."""
    if not isinstance(data, dict) or not set(data) <= TOP_KEYS:
        raise _refuse(where, "it is not an object with the known fields")
    if data.get("format") != fmt:
        raise _refuse(where, f"unknown format {_short(data.get('format'))}")
    _match(BACKUP_ID, data.get("id"), "backup id", where)
    _name(data.get("vm"), "VM name", where)
    _match(UUID, data.get("vm_id"), "VM id", where)
    for key in ("created_at", "finished_at"):
        _text(data.get(key), key, where)
    _text(data.get("kind"), "kind", where, KINDS)
    if data.get("parent") is not None:
        _match(BACKUP_ID, data["parent"], "parent", where)
    _text(data.get("note", ""), "note", where)
    _text(data.get("consistency", ""), "consistency", where, CONSISTENCY)
    if data.get("chunk_size") != chunk_size:
        raise _refuse(where, f"its chunk size is not {chunk_size}")
    _int(data, "read_bytes", where, 0, MAX_DISK_BYTES * (HOTPLUG_SLOTS + 1))
    _int(data, "new_bytes", where, 0, MAX_DISK_BYTES * (HOTPLUG_SLOTS + 1))
    _bitmap(data.get("bitmap"), where)
    disks = data.get("disks")
    if not isinstance(disks, list) or not 1 <= len(disks) <= HOTPLUG_SLOTS + 1:
        raise _refuse(where, f"it does not list 1 to {HOTPLUG_SLOTS + 1} disks")
    names = [_disk(d, i, chunk_size, where) for i, d in enumerate(disks)]
    if len(set(names)) != len(names):
        raise _refuse(where, "two of its disks have the same name")
    if not isinstance(data.get("spec"), dict):
        raise _refuse(where, "its spec is not an object")
    row = data.get("vm_row")
    if not isinstance(row, dict) or not set(row) <= ROW_KEYS:
        raise _refuse(where, "its VM record is not an object with the known fields")
    return data
