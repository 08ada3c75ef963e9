"""Crafted exports (an export is a file from anywhere): hostile tar members and hostile
spec and row fields are refused in one line before anything is made; host paths in the
file are never used. Table-driven: a new member kind or field adds a row."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError
from cloudlet.spec.document import AccessDoc, VMBody
from tests.fakes import FakeDisks, create_local, make_fake_engine
from tests.unit.test_hostile_manifests import snapshot as vms_and_volumes


def snapshot(e: Engine) -> dict[str, str]:
    """vms_and_volumes, and every file of the state directory (name and content, the
    database's too) but the log and lock files, which any command touches."""
    found = vms_and_volumes(e)
    for path in sorted(e.paths.home.rglob("*")):
        if path.is_file() and path.suffix not in (".log", ".lock"):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


MIB = 1 << 20
Member = tarfile.TarInfo
Entry = tuple[Member, bytes | None]
Files = dict[str, bytes]


@pytest.fixture
def exported(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, Files]:
    """VM web1 (a cloud-init image, a user's own key, volume data1) exported; the
    export's files by name."""
    monkeypatch.setenv("HOME", str(short_tmp))
    ssh = short_tmp / ".ssh"
    ssh.mkdir()
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    (ssh / "id_me.pub").write_text(f"ssh-ed25519 {base64.b64encode(blob).decode()} me\n")
    (ssh / "id_me").write_text("private\n")
    e = make_fake_engine(short_tmp / "home")
    create_local(
        e, "web1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=[str(ssh / "id_me.pub")]))
    )
    e.storage.volume_create("data1", 64 * MIB)
    e.storage.volume_attach("data1", "web1")
    FakeDisks.write(Path(e.storage.volume("data1").path), "0", "data")
    e.stop("web1")
    e.backups.export("web1", short_tmp / "web1.cloudlet")
    with tarfile.open(short_tmp / "web1.cloudlet") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    return e, files


def info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.size, member.linkname = kind, size, link
    return member


def resum(files: Files) -> Files:
    """What an attacker does after editing: recompute every SHA-256 and size."""
    manifest = json.loads(files["manifest.json"])
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256(files[name]).hexdigest()
        manifest["bytes"][name] = len(files[name])
    return {**files, "manifest.json": json.dumps(manifest).encode()}


def entries(files: Files) -> list[Entry]:
    return [(info(n, size=len(b)), b) for n, b in files.items()]


def pack(path: Path, members: list[Entry]) -> Path:
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


# ---------------------------------------------------------------- tar members
def add(*extra: Entry) -> Callable[[Files], list[Entry]]:
    return lambda files: [*entries(files), *extra]


def swap(name: str, member: tarfile.TarInfo) -> Callable[[Files], list[Entry]]:
    """The file ``name`` replaced by ``member`` (a link, a device ...)."""
    return lambda files: [(member, None), *[e for e in entries(files) if e[0].name != name]]


def longer(files: Files) -> list[Entry]:
    found = entries(files)
    disk = next(e for e in found if e[0].name == "disk.qcow2")
    disk[0].size += 512
    return [*(e for e in found if e is not disk), (disk[0], (disk[1] or b"") + b"\0" * 512)]


def same_size_other_bytes(files: Files) -> list[Entry]:
    disk = files["disk.qcow2"]
    return entries({**files, "disk.qcow2": disk[:-1] + bytes([disk[-1] ^ 1])})


TAR_CASES: list[tuple[str, Callable[[Files], list[Entry]], str]] = [
    ("member ..", add((info("../evil", size=1), b"x")), "'../evil'"),
    ("member deep ..", add((info("volumes/../../evil", size=1), b"x")), "unexpected"),
    ("absolute member", add((info("/tmp/evil", size=1), b"x")), "unexpected"),
    ("unexpected member", add((info("notes.txt", size=1), b"x")), "unexpected"),
    ("symlink disk", swap("disk.qcow2", info("disk.qcow2", tarfile.SYMTYPE, link="/etc/shadow")),
     "not a plain file"),
    ("hardlink spec", swap("spec.json", info("spec.json", tarfile.LNKTYPE, link="/etc/passwd")),
     "not a plain file"),
    ("char device", swap("spec.json", info("spec.json", tarfile.CHRTYPE)), "not a plain file"),
    ("block device", swap("disk.qcow2", info("disk.qcow2", tarfile.BLKTYPE)), "not a plain file"),
    ("fifo", swap("disk.qcow2", info("disk.qcow2", tarfile.FIFOTYPE)), "not a plain file"),
    ("directory as disk", swap("disk.qcow2", info("disk.qcow2", tarfile.DIRTYPE)),
     "not a plain file"),
    ("duplicate spec", add((info("spec.json", size=2), b"{}")), "twice"),
    ("disk longer than said", longer, "not the size its manifest says"),
    ("disk bytes flipped", same_size_other_bytes, "does not match its SHA-256"),
    ("many members", add(*[(info(f"f{i}", size=0), b"") for i in range(20)]), "more than"),
    ("huge manifest", lambda f: [e for e in entries(f) if e[0].name != "manifest.json"]
     + [(info("manifest.json", size=2 * MIB), b" " * 2 * MIB)], "larger than"),
]  # fmt: skip


def test_every_hostile_tar_member_is_refused_before_anything_is_made(
    exported: tuple[Engine, Files], short_tmp: Path
) -> None:
    engine, files = exported
    ops = engine.backups
    before = snapshot(engine)
    for case, craft, says in TAR_CASES:
        path = pack(short_tmp / f"{len(says)}-{case}.cloudlet", craft(files))
        with pytest.raises(CloudletError) as raised:
            ops.import_(path, "evil")
        assert says in raised.value.message, case
        assert raised.value.exit_code == 2 and "\n" not in raised.value.one_line(), case
        assert snapshot(engine) == before, case
    assert not (short_tmp / "evil").exists() and not Path("/tmp/evil").exists()


def test_truncated_or_garbage_archives_are_refused_in_one_line(
    exported: tuple[Engine, Files], short_tmp: Path
) -> None:
    engine, _ = exported
    ops = engine.backups
    genuine = (short_tmp / "web1.cloudlet").read_bytes()
    before = snapshot(engine)
    for i, data in enumerate((genuine[:700], genuine[: len(genuine) // 2], b"", b"\0" * 10,
                              b"x" * 5000, genuine[:512] + b"\xff" * 512)):  # fmt: skip
        path = short_tmp / f"cut{i}.cloudlet"
        path.write_bytes(data)
        with pytest.raises(CloudletError) as raised:
            ops.import_(path, "evil")
        assert raised.value.exit_code == 2 and str(path) in raised.value.message
        assert snapshot(engine) == before


# ---------------------------------------------------------------- spec and row fields
def spec(**changes: Any) -> Callable[[Files], Files]:
    def edit(files: Files) -> Files:
        data = json.loads(files["spec.json"])
        for key, value in changes.items():
            target = data
            *path, last = key.split("__")
            for part in path:
                target = target[part]
            target[last] = value
        return resum({**files, "spec.json": json.dumps(data).encode()})

    return edit


def manifest(**changes: Any) -> Callable[[Files], Files]:
    def edit(files: Files) -> Files:
        data = json.loads(files["manifest.json"])
        for key, value in changes.items():
            if key.startswith("row__"):
                data["vm_row"][key[5:]] = value
            elif key.startswith("vol__"):
                data["volumes"][0][key[5:]] = value
            else:
                data[key] = value
        return resum({**files, "manifest.json": json.dumps(data).encode()})

    return edit


def both(**changes: Any) -> Callable[[Files], Files]:
    """The same field edited in the spec and the row (as a careful attacker would)."""
    return lambda files: manifest(**{f"row__{k}": v for k, v in changes.items()})(
        spec(**changes)(files)
    )


volume_renamed = manifest(vol__name="../../tmp/x", vol__file="volumes/../../tmp/x.qcow2")


def unsized(files: Files) -> Files:
    data = json.loads(files["manifest.json"])
    del data["bytes"]
    return {**files, "manifest.json": json.dumps(data).encode()}


FIELD_CASES: list[tuple[str, Callable[[Files], Files], str]] = [
    ("cpus -5", both(cpus=-5), "cpus"),
    ("cpus 100000", both(cpus=100000), "cpus"),
    ("cpus -5 in the row only", manifest(row__cpus=-5), "not its spec's"),
    ("cpus a string", manifest(row__cpus="4"), "cpus"),
    ("cpus a bool", manifest(row__cpus=True), "cpus"),
    ("memory 1", both(memory=1), "memory"),
    ("memory not whole MiB", both(memory=MIB * 512 + 1), "invalid memory size"),
    ("memory 1 TiB + 1", both(memory=(1 << 40) + 1), "memory"),
    (
        "type shell",
        lambda f: spec(type="x;rm -rf /")(manifest(row__type_name="x;rm -rf /")(f)),
        "unknown machine type",
    ),
    ("type_name shell", manifest(row__type_name="x;rm -rf /"), "not its spec's"),
    ("location ../../etc", both(location="../../etc"), "location"),
    ("arch sparc", both(arch="sparc"), "arch"),
    ("arch differs from row", manifest(row__arch="aarch64"), "arch"),
    ("profile", spec(profile="x;reboot"), "profile"),
    ("image unknown here", both(image="ghost-image"), "'ghost-image'"),
    ("image a path", both(image="../../etc"), "image name"),
    ("image differs from row", manifest(row__image="acme"), "image"),
    ("row kernel field", manifest(row__kernel="/etc/shadow"), "unknown fields"),
    ("row initrd field", manifest(row__initrd="/etc/shadow"), "unknown fields"),
    ("row append field", manifest(row__append="init=/bin/sh"), "unknown fields"),
    ("spec kernel field", spec(kernel="/etc/shadow"), "kernel"),
    ("user ssh option", spec(access__user="-oProxyCommand=touch /tmp/pwn"), "login user"),
    ("user with space", spec(access__user="root x"), "login user"),
    ("user newline", spec(access__user="debian\n"), "login user"),
    ("ssh key garbage", spec(access__ssh_public_keys=["ssh-ed25519 !!notbase64"]), "key"),
    ("user-data a script", spec(user_data="#!/bin/sh\nrm -rf /\n"), "cloud-config"),
    ("disk size negative", spec(disk_size=-1), "out of range"),
    ("volume size 2 PiB", spec(volumes=[1 << 51]), "out of range"),
    ("firewall group a path", spec(firewall__groups=["../g"]), "firewall group"),
    ("port 0", spec(network__ports=[{"host_port": 0, "guest_port": 22}]), "host_port"),
    ("port 70000", spec(network__ports=[{"host_port": 70000, "guest_port": 22}]), "host_port"),
    ("port field unknown", spec(network__ports=[{"host": 1, "guest": 22}]), "ports"),
    ("nic network a path", spec(network__nics=[{"network": "../../x"}]), "network name"),
    (
        "port network a path",
        spec(network__ports=[{"host_port": 8080, "guest_port": 80, "network": "a/b"}]),
        "network name",
    ),
    ("spec a list", lambda f: resum({**f, "spec.json": b"[1, 2]"}), "not an object"),
    ("spec not JSON", lambda f: resum({**f, "spec.json": b"{"}), "not valid"),
    ("row a list", manifest(vm_row=[1]), "not an object"),
    ("volume leaves the pool", volume_renamed, "volume name"),
    ("volume file elsewhere", manifest(vol__file="volumes/other.qcow2"), "stored as"),
    ("volume name newline", manifest(vol__name="data1\n"), "volume name"),
    ("source vm a path", manifest(vm="../../x"), "name"),
    ("sha not hex", manifest(files={"spec.json": "zz"}), "SHA-256"),
    ("format 99", manifest(format=99), "format"),
    ("no sizes in format 3", unsized, "size of each file"),
]


@pytest.mark.parametrize(("case", "edit", "says"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_every_hostile_field_is_refused_before_anything_is_made(
    exported: tuple[Engine, Files],
    short_tmp: Path,
    case: str,
    edit: Callable[[Files], Files],
    says: str,
) -> None:
    engine, files = exported
    ops = engine.backups
    before = snapshot(engine)
    path = pack(short_tmp / "crafted.cloudlet", entries(edit(dict(files))))
    with pytest.raises(CloudletError) as raised:
        ops.import_(path, "evil")
    assert says in raised.value.message, raised.value.message
    assert "\n" not in raised.value.one_line()
    assert raised.value.exit_code in (2, 3), case  # bad input, or an image not found here
    assert snapshot(engine) == before
    assert not (short_tmp / "pwn").exists()


def test_host_paths_in_the_file_are_never_used(
    exported: tuple[Engine, Files], short_tmp: Path
) -> None:
    """A crafted image directory (its image.json pointing QEMU's -kernel at a host file)
    named by the row, and a private key path in the spec: the import uses this host's
    image and keys instead."""
    engine, files = exported
    ops = engine.backups
    crafted = short_tmp / "crafted-image"
    crafted.mkdir()
    (crafted / "image.json").write_text(
        json.dumps({"name": "cloudy", "disk": "disk.qcow2", "kernel": "/etc/shadow",
                    "initrd": "/etc/passwd", "cmdline": "init=/bin/sh", "cloud_init": True})
    )  # fmt: skip
    edited = manifest(row__image_path=str(crafted), row__disk_size=-7, row__seed=False)(files)
    edited = spec(access__ssh_private_key="/etc/shadow")(edited)
    view = ops.import_(pack(short_tmp / "paths.cloudlet", entries(edited)), "copy")
    host_image = engine.deps.images.get("cloudy")
    assert view.to_dict()["paths"]["image"] == str(host_image.path) != str(crafted)
    assert view.disk_size > 0
    copied = engine.spec("copy")
    assert copied.access.ssh_private_key == str(short_tmp / ".ssh" / "id_me")
    assert (engine.paths.instance_dir(view.id) / "seed.iso").exists()  # the image has cloud-init
    assert engine.spec("web1").access == copied.access
