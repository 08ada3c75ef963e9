"""Build the debian-12 image: a real Debian system with cloud-init, from Debian packages.

``mmdebstrap --variant=minbase`` installs the system into a directory (about 40 s),
cloudlet adds its config files, ``mke2fs -d`` turns the directory into an ext4 image
(no mount, no loop device) and ``qemu-img`` makes it qcow2. The guest boots by direct
kernel boot with the tiny builder's busybox initramfs: a few hundred KiB that loads
the virtio disk driver and switches to /dev/vda, where Debian's generated initramfs
(initramfs-tools, ~30 MB with MODULES=most) would cost seconds to build and to
unpack under TCG, and probe hardware a VM does not have.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.host.run import run, which, which_sbin
from cloudlet.images.debian import recipe as r
from cloudlet.images.publish import publish
from cloudlet.images.tiny.builder import make_initramfs
from cloudlet.images.tiny.debs import Apt
from cloudlet.images.tiny.kmod import ModuleTree

Progress = Callable[[str], None]


def build_debian(
    dest: Path,
    *,
    release: str = "bookworm",
    progress: Progress | None = None,
    cache: Path | None = None,
) -> Path:
    """Build the image into ``dest`` (a directory), replacing it atomically at the end.

    ``cache`` keeps downloaded .deb files between builds (apt's archive directory is
    synced in before and out after mmdebstrap), so a rebuild downloads only what
    changed. The work happens next to ``dest`` so the final rename stays on one file
    system; a failed build leaves ``dest`` untouched.
    """
    say: Progress = progress or (lambda _msg: None)
    info = r.release_info(release)
    if os.geteuid() != 0:
        raise InvalidInput(
            "building the Debian image needs root",
            hint="run as root (mmdebstrap installs packages that own files as root)",
        )
    mmdebstrap = which("mmdebstrap", hint="install mmdebstrap (apt-get install mmdebstrap)")
    mke2fs = which_sbin("mke2fs", hint="install e2fsprogs (apt-get install e2fsprogs)")
    chroot = which_sbin("chroot", hint="install coreutils")
    qemu_img = which("qemu-img", hint="install qemu-utils (apt-get install qemu-utils)")
    digest = r.recipe_digest(release)

    dest = Path(os.path.abspath(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        out = work / "image"
        out.mkdir()
        root = work / "root"
        archives = (cache / f"apt-{info.codename}") if cache is not None else None

        say(f"installing Debian {info.version} with mmdebstrap")
        started = time.monotonic()
        run(
            mmdebstrap_argv(mmdebstrap, info, root, archives),
            timeout=3600,
            hint="mmdebstrap needs the Debian mirror; see its output above",
        )
        say(f"installed in {time.monotonic() - started:.0f} s")

        say("configuring the guest")
        _configure(root, chroot)

        kver, kernel_pkg = _find_kernel(root)
        shutil.copyfile(root / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
        say("writing initramfs")
        busybox_version = _write_initramfs(root, kver, out / "initrd.img", cache or work)

        say("making ext4 file system")
        raw = work / "disk.raw"
        with raw.open("wb") as f:
            f.truncate(r.DISK_SIZE)
        # Zeroed inode tables and journal (free in qcow2) spare each guest the work.
        run(
            [
                mke2fs, "-q", "-F", "-t", "ext4", "-T", "default", "-L", r.FS_LABEL,
                "-m", "0", "-E", "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
                "-d", root, raw,
            ],
            hint="mke2fs -d needs e2fsprogs 1.43 or newer",
        )  # fmt: skip
        say("converting to qcow2")
        run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", raw, out / "disk.qcow2"])
        raw.unlink()

        versions = installed_versions(root)
        packages = {
            name: versions[name]
            for name in (kernel_pkg, r.KERNEL_META, *r.RECORDED)
            if name in versions
        }
        packages[f"{r.BUSYBOX_PACKAGE} (initramfs)"] = busybox_version
        manifest = image_manifest(info, digest=digest, packages=packages)
        publish(out, dest, work, manifest)
        say(f"image ready at {dest}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def mmdebstrap_argv(
    mmdebstrap: str, info: r.Release, root: Path, archives: Path | None
) -> list[str]:
    """The mmdebstrap command line (pure, so tests can check it)."""
    argv = [
        mmdebstrap,
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(r.PACKAGES),
        "--aptopt=Acquire::Retries 3",
    ]
    if archives is not None:
        archives.mkdir(parents=True, exist_ok=True)
        # Keep the .debs after installing so sync-out can copy them to the cache.
        argv += [
            "--skip=download/empty",
            '--setup-hook=mkdir -p "$1/var/cache/apt/archives/"',
            f"--setup-hook=sync-in {archives} /var/cache/apt/archives/",
        ]
    argv += [f"--essential-hook={hook}" for hook in r.ESSENTIAL_HOOKS]
    if archives is not None:
        argv += [
            f"--customize-hook=sync-out /var/cache/apt/archives {archives}",
            '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        ]
    argv += [f"--customize-hook={hook}" for hook in r.CUSTOMIZE_HOOKS]
    argv += [info.codename, str(root)]
    argv += [m.format(codename=info.codename) for m in r.MIRRORS]
    return argv


def image_manifest(info: r.Release, *, digest: str, packages: dict[str, str]) -> dict[str, object]:
    """The image.json contents: what the engine needs to boot and describe the image."""
    return {
        "name": info.name,
        "arch": r.ARCH,
        "format": "qcow2",
        "disk": "disk.qcow2",
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": r.CMDLINE,
        "recipe": digest,
        "guest_agent": True,
        "os": info.os,
        "packages": dict(sorted(packages.items())),
        "min_disk_bytes": r.DISK_SIZE,
        "licence": "free",
        "default_user": r.DEFAULT_USER,
        "cloud_init": True,
    }


def installed_versions(root: Path) -> dict[str, str]:
    """package -> version of everything dpkg installed in ``root``."""
    status = (root / "var/lib/dpkg/status").read_text()
    versions: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


def _configure(root: Path, chroot: str) -> None:
    """Write cloudlet's files, enable and mask units, drop per-machine identity."""
    for rel, (mode, text) in r.FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    # systemctl works offline inside the chroot (it only manages symlinks).
    run([chroot, root, "systemctl", "enable", "--quiet", *r.ENABLED_UNITS])
    run([chroot, root, "systemctl", "mask", "--quiet", *r.MASKED_UNITS])
    for pattern in r.REMOVE_GLOBS:
        for path in root.glob(pattern):
            path.unlink()
    (root / "etc/machine-id").write_text("")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / leftover).glob("*.deb"):
            path.unlink()


def _find_kernel(root: Path) -> tuple[str, str]:
    """(kernel release, its linux-image package) of the one kernel in ``root``."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise NotFound(
            f"expected one kernel in the image, found {len(images)}",
            hint="check the package list",
        )
    kver = images[0].name.removeprefix("vmlinuz-")
    return kver, f"linux-image-{kver}"


def _write_initramfs(root: Path, kver: str, dest: Path, deb_cache: Path) -> str:
    """The tiny builder's busybox initramfs, with the modules of the guest's kernel.

    busybox-static comes from the host's apt (shared with the tiny image's cache):
    the guest itself does not carry busybox. Returns the busybox version.
    """
    apt = Apt("amd64")
    (deb,) = apt.resolve([r.BUSYBOX_PACKAGE])
    files = apt.fetch([deb], deb_cache)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        unpacked = Path(tmp)
        apt.unpack(files[deb.package], unpacked)
        busybox = next(
            (unpacked / p for p in ("bin/busybox", "usr/bin/busybox") if (unpacked / p).is_file()),
            None,
        )
        if busybox is None:
            raise NotFound(f"{r.BUSYBOX_PACKAGE} has no busybox binary")
        applets = run([busybox, "--list-full"]).stdout.decode().split()
        moddir = next(
            (
                root / b / kver
                for b in ("usr/lib/modules", "lib/modules")
                if (root / b / kver).is_dir()
            ),
            None,
        )
        if moddir is None:
            raise NotFound(f"the image has no modules for kernel {kver}")
        tree = ModuleTree(moddir)
        mods = tree.resolve(r.INITRD_MODULES)
        dest.write_bytes(make_initramfs(busybox.read_bytes(), applets, tree, mods))
    return deb.version
