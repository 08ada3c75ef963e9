"""The tiny image's recipe digest, script templates and pure helpers."""

from __future__ import annotations

import gzip
import re

import pytest

from cloudlet.errors import InvalidInput
from cloudlet.images.tiny import recipe as r
from cloudlet.images.tiny import recipe_digest, scripts
from cloudlet.images.tiny.builder import bootable_kernel, image_manifest, merged_usr
from cloudlet.images.tiny.debs import Deb


def test_digest_is_stable_sha256() -> None:
    first = recipe_digest()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert recipe_digest("x86_64") == first


# Cached x86_64 images are keyed by this digest: change it only when the x86_64 image
# content really changes, and then update this value on purpose.
X86_64_DIGEST = "dd2bb8515143a14f1aa7cff384236b6df094834b43ba8eb94821ba9a730feb9a"


def test_x86_64_digest_is_pinned() -> None:
    assert recipe_digest("x86_64") == X86_64_DIGEST


def test_each_arch_has_its_own_digest_and_console() -> None:
    assert recipe_digest("aarch64") != recipe_digest("x86_64")
    assert re.fullmatch(r"[0-9a-f]{64}", recipe_digest("aarch64"))
    assert r.cmdline("aarch64").startswith("console=ttyAMA0 ")
    assert r.cmdline("x86_64").startswith("console=ttyS0 ")
    for arch in ("x86_64", "aarch64"):
        assert f"root=LABEL={r.FS_LABEL} " in r.cmdline(arch)
    assert r.recipe("aarch64")["packages"] == [
        "linux-image-cloud-arm64",
        "busybox-static",
        "qemu-guest-agent",
        "bsdutils",
    ]
    assert r.recipe("x86_64")["initrd_ata_modules"] == ["ata_piix", "ata_generic", "sd_mod"]
    assert r.recipe("aarch64")["initrd_ata_modules"] == []


def test_aarch64_digest_changes_with_shared_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    before = recipe_digest("aarch64")
    monkeypatch.setattr(scripts, "INITRAMFS_INIT", scripts.INITRAMFS_INIT + "# edited\n")
    assert recipe_digest("aarch64") != before


def test_kernel_for_direct_boot() -> None:
    image = b"ARMd" + bytes(60)
    assert bootable_kernel(image) == image
    assert bootable_kernel(gzip.compress(image)) == image
    with pytest.raises(InvalidInput, match="zboot"):
        bootable_kernel(b"MZ\0\0zimg" + bytes(56))


def test_digest_changes_when_initramfs_init_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = recipe_digest()
    monkeypatch.setattr(scripts, "INITRAMFS_INIT", scripts.INITRAMFS_INIT + "# edited\n")
    assert recipe_digest() != before


def test_digest_changes_when_a_rootfs_script_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = recipe_digest()
    mode, text = scripts.ROOTFS_FILES["etc/init.d/rcS"]
    monkeypatch.setitem(scripts.ROOTFS_FILES, "etc/init.d/rcS", (mode, text + "true\n"))
    assert recipe_digest() != before


@pytest.mark.parametrize(
    ("attr", "value"),
    [
        ("CMDLINE", "root=/dev/vda"),
        ("INITRD_MODULES", ("virtio_pci",)),
        ("BUILDER_VERSION", "999"),
        ("ROOTFS_MODULES", ("virtio_console",)),
        ("AGENT_PACKAGE", "something-else"),
        ("TOOLS", ("usr/bin/script", "usr/bin/logger")),
    ],
)
def test_digest_changes_with_recipe_data(
    monkeypatch: pytest.MonkeyPatch, attr: str, value: object
) -> None:
    before = recipe_digest()
    monkeypatch.setattr(r, attr, value)
    assert recipe_digest() != before


def test_unknown_arch_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="riscv64"):
        recipe_digest("riscv64")


def test_templates_fill_completely() -> None:
    values = {
        "MODULES": "virtio_console virtio_net",
        "ATA_MODULES": "ata_piix sd_mod",
        "FS_LABEL": "cloudlet-root",
        "BUILDER_VERSION": "1",
        "BUSYBOX_VERSION": "1.35.0",
        "DEBIAN_VERSION": "12",
        "KERNEL_RELEASE": "6.1.0-1-cloud-amd64",
    }
    for _mode, text in scripts.ROOTFS_FILES.values():
        assert not re.search(r"@[A-Z_]+@", scripts.fill(text, values))
    init = scripts.fill(scripts.INITRAMFS_INIT, values)
    assert "modprobe -a virtio_console virtio_net" in init
    assert 'ata="ata_piix sd_mod"' in init
    assert "root=LABEL=cloudlet-root" in init
    assert 'findfs "$spec"' in init


def test_fill_refuses_leftover_placeholders() -> None:
    with pytest.raises(KeyError, match="@NOPE@"):
        scripts.fill("a @NOPE@ b", {})


def test_executables_are_shell_scripts() -> None:
    for path, (mode, text) in scripts.ROOTFS_FILES.items():
        if mode & 0o111:
            assert text.startswith("#!/bin/sh\n"), path
    assert scripts.INITRAMFS_INIT.startswith("#!/bin/sh\n")


def test_boot_contract_in_scripts() -> None:
    """The pieces the host relies on: agent port name, ready line, hostname, poweroff."""
    qga = scripts.ROOTFS_FILES["usr/libexec/cloudlet/qemu-ga-run"][1]
    assert "org.qemu.guest_agent.0" in qga
    assert "cloudlet tiny: ready" in qga
    assert "-m virtio-serial" in qga
    assert "cloudlet.hostname=" in scripts.RCS
    assert "etc/acpi/PWRF/00000080" in scripts.ROOTFS_FILES
    assert "remount,ro /" in scripts.RCK
    assert "::shutdown:/etc/init.d/rcK" in scripts.INITTAB


def test_merged_usr() -> None:
    assert merged_usr("bin/sh") == "usr/bin/sh"
    assert merged_usr("/sbin/init") == "usr/sbin/init"
    assert merged_usr("lib64/ld-linux-x86-64.so.2") == "usr/lib64/ld-linux-x86-64.so.2"
    assert merged_usr("usr/bin/env") == "usr/bin/env"
    assert merged_usr("libexec/x") == "libexec/x"


def test_manifest_has_the_engine_fields() -> None:
    debs = [
        Deb("busybox-static", "1:1.35.0-4", "amd64", ""),
        Deb("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1", "amd64", ""),
    ]
    m = image_manifest(
        arch="x86_64",
        digest="d" * 64,
        debs=debs,
        kver="6.1.0-1-cloud-amd64",
        busybox_version="1.35.0",
        debian_version="12",
    )
    assert m["name"] == "tiny"
    assert (m["disk"], m["kernel"], m["initrd"], m["format"]) == (
        "disk.qcow2",
        "vmlinuz",
        "initrd.img",
        "qcow2",
    )
    assert m["recipe"] == "d" * 64
    assert m["guest_agent"] is True
    assert m["min_disk_bytes"] == r.DISK_SIZE
    assert m["os"] == "busybox 1.35.0 on Debian 12 kernel 6.1.0-1-cloud-amd64"
    assert m["packages"] == {
        "busybox-static": "1:1.35.0-4",
        "linux-image-6.1.0-1-cloud-amd64": "6.1.1-1",
    }
    assert str(m["cmdline"]).startswith("console=ttyS0")
