"""Importing disk images from files we did not make: check them, then make them ours.

A qcow2 or VMDK file can name other files on the host (a backing file, an external
data file, VMDK extents); opened by QEMU, such an image reads ``/etc/shadow`` or
another VM's disk into the guest. So an import copies the file first (nothing can
change it behind our back), checks its leading bytes and ``qemu-img info`` with the
declared format pinned, and turns it into a standalone qcow2 the engine owns. An image
is built in a staging directory and appears under its name by renames only, so a
failed import leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from cloudlet.errors import Conflict, HostCommandError, InvalidInput, NotFound
from cloudlet.images import untrusted
from cloudlet.images.catalog import CatalogEntry, parse_checksum_file
from cloudlet.images.download import ByteProgress, download, fetch_text
from cloudlet.images.store import BUILTIN, Progress
from cloudlet.progress import CancelToken, check
from cloudlet.spec.names import image_name, name_path
from cloudlet.spec.units import format_size
from cloudlet.storage.staging import LEGACY_IMAGE_STAGING, staging, sweep

FORMATS = ("qcow2", "raw", "iso")
"""What users may declare: an ISO is a raw, read-only CD image."""

# (offset, magic, format) of image formats QEMU could otherwise interpret.
MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"<<< Oracle VM VirtualBox Disk Image >>>", "vdi"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"QED\x00", "qed"),
    (0, b"conectix", "vpc"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
)
ISO_OFFSET = 0x8001
ISO_MAGIC = b"CD001"
_SNIFF_BYTES = ISO_OFFSET + len(ISO_MAGIC)

_FLATTEN_HINT = (
    "import a standalone image instead: on a trusted machine, flatten it with "
    "'qemu-img convert -f FORMAT -O qcow2 SRC DEST'"
)


def _declared(declared_format: str) -> str:
    fmt = declared_format.strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput(
            f"cannot import format {declared_format!r}",
            hint=f"declare one of {', '.join(FORMATS)}; convert other formats with qemu-img first",
        )
    return fmt


def _qemu_format(fmt: str) -> str:
    return "raw" if fmt == "iso" else fmt


# ---------------------------------------------------------------- checks without QEMU


def sniff_format(path: Path) -> str | None:
    """The image format the file's own bytes announce ("iso" for ISO9660), else None."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    for offset, magic, fmt in MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    if head[ISO_OFFSET : ISO_OFFSET + len(ISO_MAGIC)] == ISO_MAGIC:
        return "iso"
    return None


def check_magic(path: Path, declared_format: str, label: str | None = None) -> None:
    """Refuse a file whose leading bytes contradict the declared format.

    We never let qemu-img probe (a probe is what lets a "raw" file become a qcow2 with a
    backing file); reading the magic ourselves tells the user what the file really is.
    """
    fmt = _declared(declared_format)
    found = sniff_format(path)
    name = label or path.name
    if fmt == "qcow2" and found != "qcow2":
        raise InvalidInput(
            f"{name} is declared qcow2 but looks like {found or 'raw data'}",
            hint="declare the format the file really has",
        )
    if fmt == "raw" and found not in (None, "iso"):
        raise InvalidInput(
            f"{name} is declared raw but looks like {found}",
            hint=f"declare it as {found} only if cloudlet supports it; else {_FLATTEN_HINT}",
        )
    if fmt == "iso" and found != "iso":
        raise InvalidInput(
            f"{name} is declared iso but has no ISO9660 signature"
            + (f" (it looks like {found})" if found else ""),
            hint="import disk images as qcow2 or raw; an ISO must be a CD image",
        )


def _get(info: dict[str, Any], *keys: str) -> Any:
    value: Any = info
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _refuse(field: str, value: object, why: str) -> InvalidInput:
    return InvalidInput(f"unsafe image: {field} is {value!r} ({why})", hint=_FLATTEN_HINT)


def check_safe(info: dict[str, Any], declared_format: str) -> None:
    """Refuse ``qemu-img info`` output that shows the image reaching other files.

    Raises InvalidInput naming the offending field: a backing file, an external data
    file, VMDK extents, a format other than declared, encryption or corruption.
    """
    fmt = _declared(declared_format)
    for field in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if info.get(field):
            raise _refuse(field, info[field], "a backing file reads another file on the host")
    if info.get("backing-image"):
        backing = _get(info, "backing-image", "filename")
        raise _refuse("backing-image", backing, "a backing file reads another file on the host")
    data_file = _get(info, "format-specific", "data", "data-file")
    if data_file:
        raise _refuse(
            "format-specific.data.data-file", data_file, "an external data file reads a host file"
        )
    extents = _get(info, "format-specific", "data", "extents")
    if info.get("format") == "vmdk" or extents:
        field = "format-specific.data.extents" if extents else "format"
        value = [e.get("filename") for e in extents if isinstance(e, dict)] if extents else "vmdk"
        raise _refuse(field, value, "VMDK extents can name any file on the host")
    if info.get("format") != _qemu_format(fmt):
        raise InvalidInput(
            f"unsafe image: format is {info.get('format')!r}, declared {fmt}",
            hint="declare the format the file really has",
        )
    for child in info.get("children") or []:
        child_name = child.get("name") if isinstance(child, dict) else child
        if child_name != "file":
            raise _refuse("children", child_name, "the image opens another node besides its file")
    if info.get("encrypted"):
        raise _refuse("encrypted", True, "cloudlet cannot boot encrypted images")
    if _get(info, "format-specific", "data", "corrupt"):
        raise InvalidInput(
            "image is marked corrupt (format-specific.data.corrupt)",
            hint="repair it with 'qemu-img check -r all' on a copy, or use another image",
        )
    if not isinstance(info.get("virtual-size"), int) or info["virtual-size"] <= 0:
        raise InvalidInput(
            f"image has no usable virtual-size ({info.get('virtual-size')!r})",
            hint="the file is empty or damaged",
        )


# ---------------------------------------------------------------- checks with qemu-img


SIZE_CAP_HINT = "raise images.max_virtual_size in config.toml, or use a smaller image"


def check_size(name: str, virtual_size: int, max_size: int | None) -> None:
    """Refuse an image whose virtual size is over the host's cap (None: no cap)."""
    if max_size is not None and virtual_size > max_size:
        raise InvalidInput(
            f"{name} has a virtual size of {format_size(virtual_size)}, over this host's "
            f"cap of {format_size(max_size)}",
            hint=SIZE_CAP_HINT,
        )


def check_clean(report: dict[str, Any], name: str) -> None:
    """Refuse a ``qemu-img check`` report with any error, corruption or leak."""
    found = {
        key: report.get(key)
        for key in ("check-errors", "corruptions", "leaks")
        if report.get(key) not in (None, 0)
    }
    if found or report.get("corruptions-fixed") or report.get("leaks-fixed"):
        what = ", ".join(f"{v} {k}" for k, v in found.items()) or "repairs"
        raise InvalidInput(
            f"{name} fails qemu-img check ({what})",
            hint="use an intact image (on a trusted machine, 'qemu-img check -r all' on a copy)",
        )


def inspect(
    path: Path, declared_format: str, *, max_size: int | None = None, label: str | None = None
) -> dict[str, Any]:
    """The magic check, then ``qemu-img info`` (format pinned, confined) and check_safe,
    the size cap, and for qcow2 a clean ``qemu-img check``. Messages call the file
    ``label`` (the user's name for it) rather than our copy's name.

    Returns the info dict of a file that passed every check.
    """
    fmt = _declared(declared_format)
    path = path.absolute()
    name = label or path.name
    check_magic(path, fmt, name)
    try:
        info = untrusted.info(path, _qemu_format(fmt), name)
    except HostCommandError as exc:
        tail = (exc.stderr or exc.stdout).strip().splitlines()
        raise InvalidInput(
            f"{name} is not a valid {fmt} image: {tail[-1] if tail else 'qemu-img failed'}",
            hint="check the file and the declared format",
        ) from None
    try:
        check_safe(info, fmt)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.message}", hint=exc.hint) from None
    check_size(name, int(info["virtual-size"]), max_size)
    if fmt == "qcow2":
        check_clean(untrusted.check(path, "qcow2", name), name)
    return info


# ---------------------------------------------------------------- import


def _exists(images_root: Path, name: str) -> bool:
    current = name_path(images_root, name, links=True) / "current"
    return name in BUILTIN or current.is_symlink() or current.exists()


def _refuse_existing(images_root: Path, name: str) -> None:
    if _exists(images_root, name):
        raise Conflict(
            f"image {name!r} already exists",
            hint=f"choose another name, or delete the image {name!r} first",
        )


def _copy_and_hash(src: Path, dest: Path) -> str:
    """Copy ``src`` (keeping runs of zeros sparse) and return the sha256 of its bytes."""
    digest = hashlib.sha256()
    chunk_size = 1 << 20
    zeros = bytes(chunk_size)
    with open(src, "rb") as inp, open(dest, "wb") as out:
        while chunk := inp.read(chunk_size):
            digest.update(chunk)
            if chunk == zeros[: len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        out.truncate()
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _point_current(name_dir: Path, version_dir: Path) -> None:
    """Atomically aim ``name_dir/current`` at ``version_dir`` (as ImageStore does)."""
    link = name_dir / "current"
    tmp = name_dir / ".current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version_dir.name)
    tmp.replace(link)


def _commit(images_root: Path, name: str, built: Path) -> Path:
    """Move a finished version directory under ``name`` and make it current."""
    name_dir = name_path(images_root, name, links=True)
    created = not name_dir.exists()
    name_dir.mkdir(exist_ok=True)
    lock_path = name_dir / ".build.lock"
    try:
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _refuse_existing(images_root, name)  # another import may have won meanwhile
            # A same-digest directory without "current" may still back a VM's overlay:
            # never replace it, pick a fresh name next to it.
            final, n = name_dir / built.name, 1
            while final.exists():
                n += 1
                final = name_dir / f"{built.name}-{n}"
            built.rename(final)
            _point_current(name_dir, final)
            return final
    except BaseException:
        if created and not (name_dir / "current").is_symlink():
            shutil.rmtree(name_dir, ignore_errors=True)
        raise


def import_image(
    src: Path,
    name: str,
    declared_format: str,
    images_root: Path,
    *,
    progress: Progress | None = None,
    licence: str = "free",
    licence_name: str = "",
    default_user: str | None = None,
    os_name: str = "",
    os_family: str = "linux",
    arch: str = "x86_64",
    cloud_init: bool = False,
    guest_agent: bool = False,
    source_url: str | None = None,
    max_size: int | None = None,
) -> Path:
    """Check ``src`` and add it as image ``name``; returns the new version directory.

    qcow2 and raw become ``disk.qcow2`` (a qcow2 without backing file, so every disk the
    engine sees has one format and no links); an ISO is kept as ``install.iso``.
    """
    image_name(name)
    return _import(
        src,
        name,
        declared_format,
        images_root,
        progress=progress,
        meta={
            "os": os_name,
            "os_family": os_family,
            "licence": licence,
            "licence_name": licence_name,
            "default_user": default_user,
            "cloud_init": cloud_init,
            "guest_agent": guest_agent,
        },
        arch=arch,
        source_url=source_url,
        max_size=max_size,
    )


def _import(
    src: Path,
    name: str,
    declared_format: str,
    images_root: Path,
    *,
    progress: Progress | None,
    meta: dict[str, Any],
    arch: str,
    source_url: str | None,
    max_size: int | None,
) -> Path:
    """import_image without the name rule (catalog names such as "ubuntu-24.04" pass).

    ``max_size`` caps the virtual size (None: no cap).
    """
    fmt = _declared(declared_format)
    _refuse_existing(images_root, name)
    src = src.absolute()
    if not src.exists():
        raise NotFound(f"{src} does not exist", hint="check the path of the image file")
    if not src.is_file():
        raise InvalidInput(f"{src} is not a regular file", hint="import an image file")
    if fmt != "qcow2":  # a raw file's size is its virtual size: refuse before copying
        check_size(src.name, src.stat().st_size, max_size)

    def say(message: str) -> None:
        if progress:
            progress(message)

    images_root.mkdir(parents=True, exist_ok=True)
    sweep(images_root, LEGACY_IMAGE_STAGING)  # what a killed import left behind
    with staging(images_root) as work:
        say(f"copying {src.name}")
        copy = work / f"source.{fmt}"
        sha256 = _copy_and_hash(src, copy)
        say(f"checking {src.name} ({fmt})")
        info = inspect(copy, fmt, max_size=max_size, label=src.name)
        version = work / sha256[:16]
        version.mkdir()
        if fmt == "iso":
            disk = version / "install.iso"
            copy.rename(disk)
        else:
            say(f"converting {src.name} to qcow2")
            converted = work / "converted.qcow2"
            untrusted.convert_to_qcow2(copy, fmt, converted, int(info["virtual-size"]), src.name)
            copy.unlink()
            disk = version / "disk.qcow2"
            _copy_and_hash(converted, disk)  # a file no confined process ever held
            converted.unlink()
            # what we made must pass the same checks
            inspect(disk, "qcow2", max_size=max_size, label=f"{src.name} (converted)")
        _fsync(disk)
        source: dict[str, str] = {"url": source_url} if source_url else {"path": str(src)}
        record: dict[str, Any] = {
            "name": name,
            "arch": arch,
            "format": "iso" if fmt == "iso" else "qcow2",
            "disk": disk.name,
            "kernel": None,
            "initrd": None,
            "cmdline": "",
            "recipe": "",
            "os": "",
            "min_disk_bytes": int(info["virtual-size"]),
            **meta,
            "source": {**source, "sha256": sha256},
        }
        meta_path = version / "image.json"
        with open(meta_path, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # mkdtemp made these private; QEMU may run as another user and must read them.
        version.chmod(0o755)
        disk.chmod(0o644)
        meta_path.chmod(0o644)
        say(f"adding image {name}")
        return _commit(images_root, name, version)


def pull(
    entry: CatalogEntry,
    images_root: Path,
    cache_dir: Path,
    progress: ByteProgress | None = None,
    *,
    name: str | None = None,
    status: Progress | None = None,
    timeout: float = 30,
    max_size: int | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Download a catalog image (checked against its project's checksum file) and import it.

    The image is named after the entry ("ubuntu-24.04") unless ``name`` says otherwise.
    The verified download stays in ``cache_dir``, so a second pull of an unchanged image
    downloads nothing; an interrupted pull resumes when run again. A ``cancel`` during
    the download deletes its partial file (see ``download``); the import itself, once
    begun, is not cancelled.
    """
    if name is None:
        name = entry.name
    image_name(name)
    _refuse_existing(images_root, name)  # before, not after, a long download
    if status:
        status(f"fetching checksums from {entry.checksum_url}")
    check(cancel)
    text = fetch_text(entry.checksum_url, timeout=timeout)
    digest = parse_checksum_file(text, entry.checksum_filename, entry.checksum_algorithm)
    if status:
        status(f"downloading {entry.url}")
    dest = download(
        entry.url,
        cache_dir / entry.filename,
        expected=(entry.checksum_algorithm, digest),
        progress=progress,
        timeout=timeout,
        cancel=cancel,
    )
    check(cancel)
    return _import(
        dest,
        name,
        entry.format,
        images_root,
        progress=status,
        meta={
            "os": entry.os,
            "os_family": entry.os_family,
            "licence": entry.licence,
            "licence_name": entry.licence_name,
            "default_user": entry.default_user,
            "cloud_init": entry.cloud_init,
            "guest_agent": entry.guest_agent,
        },
        arch=entry.arch,
        source_url=entry.url,
        max_size=max_size,
    )
