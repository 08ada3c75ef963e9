"""ELF reading and kernel module selection for the tiny image, on synthetic files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cloudlet.errors import NotFound
from cloudlet.images.tiny.elf import ElfFile, NotElf
from cloudlet.images.tiny.kmod import ModuleTree, module_name


def make_elf(
    *,
    modinfo: dict[str, str] | None = None,
    needed: tuple[str, ...] = (),
    interp: str | None = None,
) -> bytes:
    """A minimal little-endian ELF64 with just the parts the reader looks at."""
    shstr = b"\0"
    sections: list[tuple[int, int, bytes, int, int]] = []  # name, type, data, link, entsize

    def name(n: str) -> int:
        nonlocal shstr
        off = len(shstr)
        shstr += n.encode() + b"\0"
        return off

    if modinfo is not None:
        blob = b"".join(f"{k}={v}".encode() + b"\0" for k, v in modinfo.items())
        sections.append((name(".modinfo"), 1, blob, 0, 0))
    if needed:
        dynstr = b"\0"
        entries = b""
        for lib in needed:
            entries += struct.pack("<qQ", 1, len(dynstr))
            dynstr += lib.encode() + b"\0"
        entries += struct.pack("<qQ", 0, 0)
        strndx = len(sections) + 1  # index after the null section
        sections.append((name(".dynstr"), 3, dynstr, 0, 0))
        sections.append((name(".dynamic"), 6, entries, strndx, 16))
    shstrndx = len(sections) + 1
    sections.append((name(".shstrtab"), 3, shstr, 0, 0))

    phnum = 1 if interp else 0
    body = b""
    offset = 64 + 56 * phnum
    placed: list[tuple[int, int, int, int, int, int]] = []
    interp_off = 0
    if interp:
        interp_off = offset
        data = interp.encode() + b"\0"
        body += data
        offset += len(data)
    for n, t, data, link, entsize in sections:
        placed.append((n, t, offset, len(data), link, entsize))
        body += data
        offset += len(data)
    shoff = offset
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9,
        3,
        62,
        1,
        0,
        64 if phnum else 0,
        shoff,
        0,
        64,
        56,
        phnum,
        64,
        len(sections) + 1,
        shstrndx,
    )
    phdrs = b""
    if interp:
        size = len(interp) + 1
        phdrs = struct.pack("<IIQQQQQQ", 3, 4, interp_off, 0, 0, size, size, 1)
    shdrs = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    for n, t, off, size, link, entsize in placed:
        shdrs += struct.pack("<IIQQQQIIQQ", n, t, 0, 0, off, size, link, 0, 1, entsize)
    return header + phdrs + body + shdrs


def test_reads_needed_and_interpreter() -> None:
    elf = ElfFile(make_elf(needed=("libglib-2.0.so.0", "libc.so.6"), interp="/lib64/ld.so.2"))
    assert elf.needed() == ["libglib-2.0.so.0", "libc.so.6"]
    assert elf.interpreter() == "/lib64/ld.so.2"


def test_static_binary_has_no_interpreter_or_needed() -> None:
    elf = ElfFile(make_elf())
    assert elf.interpreter() is None
    assert elf.needed() == []


def test_reads_modinfo() -> None:
    elf = ElfFile(make_elf(modinfo={"license": "GPL", "depends": "virtio,virtio_ring"}))
    assert elf.modinfo()["depends"] == ["virtio,virtio_ring"]
    assert elf.modinfo()["license"] == ["GPL"]


def test_rejects_non_elf() -> None:
    with pytest.raises(NotElf):
        ElfFile(b"#!/bin/sh\n")


def test_module_name_normalises() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("x/ext4.ko.xz") == "ext4"


@pytest.fixture
def tree(tmp_path: Path) -> ModuleTree:
    """A fake lib/modules/<kver> with a small dependency graph and built-ins."""
    moddir = tmp_path / "6.1.0-test"
    mods = {
        "kernel/drivers/virtio/virtio_ring.ko": "",
        "kernel/drivers/virtio/virtio.ko": "virtio_ring",
        "kernel/drivers/virtio/virtio_pci.ko": "virtio_ring,virtio",
        "kernel/drivers/block/virtio_blk.ko": "virtio,virtio_ring",
        "kernel/net/core/failover.ko": "",
        "kernel/drivers/net/net_failover.ko": "failover",
        "kernel/drivers/net/virtio_net.ko": "virtio_ring,virtio,net_failover",
        "kernel/drivers/char/hw_random/virtio-rng.ko": "virtio,virtio_ring",
    }
    for rel, deps in mods.items():
        path = moddir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_elf(modinfo={"depends": deps, "license": "GPL"}))
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n")
    return ModuleTree(moddir)


def test_resolve_orders_dependencies_first_and_drops_builtins(tree: ModuleTree) -> None:
    order = tree.resolve(["virtio_pci", "virtio_blk", "ext4"])
    assert order == ["virtio_ring", "virtio", "virtio_pci", "virtio_blk"]


def test_resolve_skips_modules_loaded_earlier(tree: ModuleTree) -> None:
    early = tree.resolve(["virtio_pci"])
    later = tree.resolve(["virtio_net", "virtio-rng"], skip=early)
    assert later == ["failover", "net_failover", "virtio_net", "virtio_rng"]


def test_resolve_unknown_module_is_not_found(tree: ModuleTree) -> None:
    with pytest.raises(NotFound, match="no_such_driver"):
        tree.resolve(["no_such_driver"])


def test_modules_dep_lists_deps_for_modprobe(tree: ModuleTree) -> None:
    text = tree.modules_dep(["virtio_ring", "virtio", "failover", "net_failover", "virtio_net"])
    lines = dict(line.split(":", 1) for line in text.splitlines())
    deps = lines["kernel/drivers/net/virtio_net.ko"].split()
    # modprobe loads from the last entry to the first: each dep must come after
    # (i.e. be loaded before) the modules that need it.
    loaded = list(reversed(deps))
    assert loaded.index("kernel/drivers/virtio/virtio_ring.ko") < loaded.index(
        "kernel/drivers/virtio/virtio.ko"
    )
    assert loaded.index("kernel/net/core/failover.ko") < loaded.index(
        "kernel/drivers/net/net_failover.ko"
    )
    assert lines["kernel/drivers/virtio/virtio_ring.ko"] == ""
    flat = tree.modules_dep(["virtio"], flat=True)
    assert flat == "virtio.ko: virtio_ring.ko\n"
