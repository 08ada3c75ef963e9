"""Build the "tiny" guest image from Debian packages, without installing anything.

The Debian cloud kernel, busybox-static and qemu-guest-agent (plus the shared
libraries it links against) are fetched with ``apt-get download``, unpacked with
``dpkg-deb -x`` into scratch directories, and assembled into an initramfs (written in
Python) and an ext4 root file system (``mke2fs -d``, no mount, no root needed for
the file system itself) that ``qemu-img`` turns into qcow2.

A foreign architecture (arm64 on an amd64 host) uses apt with private package lists
(see ``Apt``); nothing of the guest's architecture is ever run on the host.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.host.run import run, which, which_sbin
from cloudlet.images.publish import publish
from cloudlet.images.tiny import recipe as r
from cloudlet.images.tiny import scripts
from cloudlet.images.tiny.cpio import CpioWriter
from cloudlet.images.tiny.debs import Apt, Deb, DependsGraph, depends_closure
from cloudlet.images.tiny.elf import ElfFile
from cloudlet.images.tiny.kmod import ModuleTree

Progress = Callable[[str], None]

_BUSYBOX = "/usr/bin/busybox"


def build_tiny(
    dest: Path,
    *,
    arch: str = "x86_64",
    progress: Progress | None = None,
    deb_cache: Path | None = None,
) -> Path:
    """Build the image into ``dest`` (a directory), replacing it atomically at the end.

    The work happens in a temporary directory next to ``dest`` so the final rename
    stays on one file system; a failed build leaves ``dest`` untouched.
    """
    say: Progress = progress or (lambda _msg: None)
    info = r.arch_info(arch)
    mke2fs = which_sbin("mke2fs", hint="install e2fsprogs (apt-get install e2fsprogs)")
    qemu_img = which("qemu-img", hint="install qemu-utils (apt-get install qemu-utils)")
    host_arch = run([which("dpkg", hint="install dpkg"), "--print-architecture"])
    host_deb_arch = host_arch.stdout.decode().strip()
    foreign = host_deb_arch != info.deb_arch
    digest = r.recipe_digest(arch)

    dest = Path(os.path.abspath(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        out = work / "image"
        out.mkdir()
        cache = deb_cache if deb_cache is not None else work / "debs"
        apt = Apt(info.deb_arch)
        if foreign:
            # Private lists next to the .deb cache, so later builds only refresh them.
            apt = Apt(info.deb_arch, state_dir=cache / f"apt-{info.deb_arch}")
            say(f"updating private {info.deb_arch} package lists")
            apt.update()

        say("resolving packages")
        graph = apt.depends_graph([info.kernel_meta, r.AGENT_PACKAGE, r.BUSYBOX_PACKAGE])
        kernel_pkg = concrete_kernel(graph, info.kernel_meta)
        agent_pkgs = depends_closure(graph, [r.AGENT_PACKAGE])
        names = list(dict.fromkeys([kernel_pkg, r.BUSYBOX_PACKAGE, *agent_pkgs, r.TOOLS_PACKAGE]))
        debs = apt.resolve(names)
        say(f"fetching {len(debs)} packages into {cache}")
        files = apt.fetch(debs, cache)

        say("unpacking packages")
        unpacked: dict[str, Path] = {}
        for deb in debs:
            unpacked[deb.package] = work / "pkgs" / deb.package
            apt.unpack(files[deb.package], unpacked[deb.package])

        kdir = unpacked[kernel_pkg]
        vmlinuz, kver = _find_kernel(kdir)
        (out / "vmlinuz").write_bytes(bootable_kernel(vmlinuz.read_bytes()))
        tree = ModuleTree(_find_moddir(kdir, kver))
        initrd_mods = tree.resolve(r.INITRD_MODULES)
        ata_mods = tree.resolve(info.ata_modules, skip=initrd_mods)
        rootfs_mods = tree.resolve(
            (*r.ROOTFS_MODULES, *r.ROOTFS_ON_DEMAND_MODULES), skip=initrd_mods + ata_mods
        )
        busybox = _find_file(unpacked[r.BUSYBOX_PACKAGE], ("bin/busybox", "usr/bin/busybox"))
        bb_deb = next(d for d in debs if d.package == r.BUSYBOX_PACKAGE)
        if foreign:
            say(f"listing busybox applets with the {host_deb_arch} build of {bb_deb.version}")
            busybox_lister = _host_busybox(host_deb_arch, bb_deb, cache, work / "host-busybox")
        else:
            busybox_lister = busybox
        applets = run([busybox_lister, "--list-full"]).stdout.decode().split()

        versions = {d.package: d.version for d in debs}
        values = {
            "BUILDER_VERSION": r.BUILDER_VERSION,
            "BUSYBOX_VERSION": _upstream(versions[r.BUSYBOX_PACKAGE]),
            "DEBIAN_VERSION": _debian_release(),
            "KERNEL_RELEASE": kver,
        }

        say(f"writing initramfs (modules: {' '.join(initrd_mods + ata_mods) or 'none'})")
        (out / "initrd.img").write_bytes(
            make_initramfs(busybox.read_bytes(), applets, tree, initrd_mods, ata_mods)
        )

        say("assembling root file system")
        staging = work / "root"
        _make_rootfs(
            staging,
            busybox=busybox,
            applets=applets,
            agent_roots=[unpacked[p] for p in agent_pkgs],
            tools_root=unpacked[r.TOOLS_PACKAGE],
            multiarch=info.multiarch,
            tree=tree,
            modules=initrd_mods + ata_mods + rootfs_mods,
            autoload=[m for m in r.ROOTFS_MODULES if m in tree.paths],
            values=values,
        )

        say("making ext4 file system")
        # Inode tables and journal are zeroed here (zeros cost nothing in qcow2), or
        # every guest would zero them itself after boot: CPU under TCG, and writes
        # that grow each VM's overlay.
        raw = work / "disk.raw"
        with raw.open("wb") as f:
            f.truncate(r.DISK_SIZE)
        run(
            [
                mke2fs,
                "-q",
                "-F",
                "-t",
                "ext4",
                "-T",
                "default",
                "-L",
                r.FS_LABEL,
                "-m",
                "0",
                "-E",
                "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
                "-d",
                staging,
                raw,
            ],
            hint="mke2fs -d needs e2fsprogs 1.43 or newer",
        )
        say("converting to qcow2")
        run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", raw, out / "disk.qcow2"])
        raw.unlink()

        manifest = image_manifest(
            arch=arch,
            digest=digest,
            debs=debs,
            kver=kver,
            busybox_version=values["BUSYBOX_VERSION"],
            debian_version=values["DEBIAN_VERSION"],
        )
        publish(out, dest, work, manifest)
        say(f"image ready at {dest}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def image_manifest(
    *,
    arch: str,
    digest: str,
    debs: Sequence[Deb],
    kver: str,
    busybox_version: str,
    debian_version: str,
) -> dict[str, object]:
    """The image.json contents: what the engine needs to boot and describe the image."""
    return {
        "name": r.IMAGE_NAME,
        "arch": arch,
        "format": "qcow2",
        "disk": "disk.qcow2",
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": r.cmdline(arch),
        "recipe": digest,
        "guest_agent": True,
        "os": f"busybox {busybox_version} on Debian {debian_version} kernel {kver}",
        "packages": {d.package: d.version for d in sorted(debs, key=lambda d: d.package)},
        "min_disk_bytes": r.DISK_SIZE,
    }


def make_initramfs(
    busybox: bytes,
    applets: Sequence[str],
    tree: ModuleTree,
    modules: Sequence[str],
    ata_modules: Sequence[str] = (),
) -> bytes:
    """A gzip'd newc archive: busybox, the disk driver modules and /init.

    ``modules`` are always loaded; ``ata_modules`` only when there is an IDE controller.
    """
    buf = io.BytesIO()
    w = CpioWriter(buf)
    moddir = f"lib/modules/{tree.kver}"
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "lib",
        "lib/modules",
        moddir,
    ):
        w.add_dir(d)
    w.add_char_device("dev/console", 5, 1)
    w.add_file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet != "bin/busybox" and "/" in applet:
            w.add_symlink(applet, "/bin/busybox")
    every = [*modules, *ata_modules]
    for name in every:
        w.add_file(f"{moddir}/{name}.ko", (tree.moddir / tree.paths[name]).read_bytes())
    w.add_file(f"{moddir}/modules.dep", tree.modules_dep(every, flat=True).encode())
    init = scripts.fill(
        scripts.INITRAMFS_INIT,
        {
            "MODULES": " ".join(modules),
            "ATA_MODULES": " ".join(ata_modules),
            "FS_LABEL": r.FS_LABEL,
        },
    )
    w.add_file("init", init.encode(), 0o755)
    w.close()
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def _make_rootfs(
    staging: Path,
    *,
    busybox: Path,
    applets: Sequence[str],
    agent_roots: Sequence[Path],
    tools_root: Path,
    multiarch: str,
    tree: ModuleTree,
    modules: Sequence[str],
    autoload: Sequence[str],
    values: dict[str, str],
) -> None:
    """Lay out the root file system: merged /usr, busybox, qemu-ga, the extra tools and
    their libraries."""
    staging.mkdir()
    for d in scripts.ROOTFS_DIRS:
        (staging / d).mkdir(parents=True, exist_ok=True)
    os.chmod(staging / "tmp", 0o1777)
    os.chmod(staging / "var/tmp", 0o1777)
    os.chmod(staging / "root", 0o700)
    for link, target in scripts.ROOTFS_SYMLINKS.items():
        (staging / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, staging / link)

    _install(busybox, staging / _BUSYBOX[1:], 0o755)
    for applet in applets:
        path = staging / merged_usr(applet)
        if applet in ("linuxrc", "bin/busybox") or path.exists() or path.is_symlink():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_BUSYBOX, path)

    qga = next(
        (
            root / rel
            for root in agent_roots
            for rel in ("usr/sbin/qemu-ga", "usr/bin/qemu-ga")
            if (root / rel).is_file()
        ),
        None,
    )
    if qga is None:
        raise NotFound("the qemu-guest-agent package has no qemu-ga binary")
    _install(qga, staging / "usr/sbin/qemu-ga", 0o755)
    libdir = staging / "usr/lib" / multiarch
    libdir.mkdir(parents=True, exist_ok=True)
    binaries = [qga]
    for rel in r.TOOLS:
        tool = _find_file(tools_root, (rel,))
        path = staging / merged_usr(rel)
        path.unlink(missing_ok=True)  # a busybox applet of the same name gives way
        _install(tool, path, 0o755)
        binaries.append(tool)
    for binary in binaries:
        for soname, path in library_closure([*agent_roots, tools_root], binary, multiarch).items():
            _install(path, libdir / soname, 0o755)
    interp = ElfFile.from_path(qga).interpreter()
    if interp:
        found = _find_file_in(agent_roots, interp.lstrip("/"))
        _install(found, libdir / Path(interp).name, 0o755)
        loader = staging / merged_usr(interp.lstrip("/"))
        if not loader.exists():
            loader.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f"/usr/lib/{multiarch}/{Path(interp).name}", loader)

    moddir = staging / "usr/lib/modules" / tree.kver
    for name in modules:
        _install(tree.moddir / tree.paths[name], moddir / tree.paths[name], 0o644)
    (moddir / "modules.dep").write_text(tree.modules_dep(modules))
    for extra in ("modules.builtin", "modules.order"):
        if (tree.moddir / extra).exists():
            shutil.copyfile(tree.moddir / extra, moddir / extra)

    fills = {**values, "MODULES": " ".join(autoload)}
    for rel, (mode, text) in scripts.ROOTFS_FILES.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # never write through an applet symlink into busybox
        path.write_text(scripts.fill(text, fills))
        os.chmod(path, mode)
    (staging / "etc/hostname").write_text(f"{r.IMAGE_NAME}\n")


def bootable_kernel(image: bytes) -> bytes:
    """The kernel as QEMU's -kernel loads it: a gzip'd image is decompressed.

    x86 bzImage and Debian's arm64 ``Image`` (uncompressed) pass through unchanged;
    QEMU 7.2 cannot boot an arm64 EFI zboot image directly, so that is refused.
    """
    if image[:2] == b"\x1f\x8b":
        return gzip.decompress(image)
    if image[:2] == b"MZ" and image[4:8] == b"zimg":
        raise InvalidInput(
            "the kernel is an EFI zboot image, which QEMU's -kernel cannot boot",
            hint="use a kernel package that ships an uncompressed or gzip'd Image",
        )
    return image


def _host_busybox(host_deb_arch: str, target: Deb, cache: Path, dest: Path) -> Path:
    """The host's build of the same busybox version, to list the applets it has.

    A foreign busybox cannot run here; Debian builds busybox-static with one
    configuration on every architecture, so the same source version has the same
    applets (a binNMU suffix such as +b1 does not change the source).
    """
    host_apt = Apt(host_deb_arch)
    host = host_apt.resolve([r.BUSYBOX_PACKAGE])[0]

    def source(version: str) -> str:
        return re.sub(r"\+b\d+$", "", version)

    if source(host.version) != source(target.version):
        raise NotFound(
            f"busybox-static is {host.version} for {host_deb_arch} but {target.version}"
            f" for {target.arch}: cannot list the {target.arch} applets",
            hint="run apt-get update so both architectures see the same Debian release",
        )
    files = host_apt.fetch([host], cache)
    host_apt.unpack(files[host.package], dest)
    return _find_file(dest, ("bin/busybox", "usr/bin/busybox"))


def concrete_kernel(graph: DependsGraph, meta: str) -> str:
    """The versioned linux-image package a meta package (linux-image-cloud-amd64) names."""
    for group in graph.get(meta, []):
        for name in group:
            if name.startswith("linux-image-"):
                return name
    raise NotFound(f"{meta} depends on no linux-image package", hint="check the apt sources")


def merged_usr(path: str) -> str:
    """Where a path lands on a merged-/usr root (bin/sh -> usr/bin/sh)."""
    path = path.lstrip("/")
    for top in ("bin", "sbin", "lib", "lib64"):
        if path == top or path.startswith(top + "/"):
            return "usr/" + path
    return path


def library_closure(roots: Sequence[Path], binary: Path, multiarch: str) -> dict[str, Path]:
    """soname -> file for every shared library ``binary`` needs, recursively.

    The search follows Debian's multiarch layout inside the unpacked packages; a
    soname no package provides is an error rather than a guest that cannot start.
    """
    dirs = (f"lib/{multiarch}", f"usr/lib/{multiarch}", "lib", "usr/lib")
    found: dict[str, Path] = {}
    todo = list(ElfFile.from_path(binary).needed())
    while todo:
        soname = todo.pop(0)
        if soname in found:
            continue
        path = None
        for d in dirs:
            try:
                path = _find_file_in(roots, f"{d}/{soname}")
                break
            except NotFound:
                continue
        if path is None:
            raise NotFound(
                f"{binary.name} needs {soname}, which no unpacked package provides",
                hint="the package dependencies changed; check apt-cache depends",
            )
        found[soname] = path
        todo.extend(ElfFile.from_path(path).needed())
    return found


def _find_file_in(roots: Sequence[Path], rel: str) -> Path:
    """A file by its path inside any of the unpacked roots, following symlinks in-root."""
    for root in roots:
        got = _resolve_in(root, rel)
        if got is not None:
            return got
    raise NotFound(f"no unpacked package has /{rel}")


def _resolve_in(root: Path, rel: str) -> Path | None:
    for _ in range(40):
        path = root / rel
        if path.is_symlink():
            target = os.readlink(path)
            if target.startswith("/"):
                rel = target.lstrip("/")
            else:
                rel = os.path.normpath(os.path.join(os.path.dirname(rel), target))
                if rel.startswith(".."):
                    return None
            continue
        return path if path.is_file() else None
    return None


def _find_file(root: Path, candidates: Sequence[str]) -> Path:
    for rel in candidates:
        got = _resolve_in(root, rel)
        if got is not None:
            return got
    raise NotFound(f"no unpacked package has /{candidates[0]}")


def _find_kernel(kdir: Path) -> tuple[Path, str]:
    images = sorted((kdir / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise NotFound("the kernel package has no single boot/vmlinuz-*")
    return images[0], images[0].name.removeprefix("vmlinuz-")


def _find_moddir(kdir: Path, kver: str) -> Path:
    for base in ("lib/modules", "usr/lib/modules"):
        if (kdir / base / kver).is_dir():
            return kdir / base / kver
    raise NotFound(f"the kernel package has no modules for {kver}")


def _install(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def _upstream(version: str) -> str:
    """The upstream part of a Debian version: 1:1.35.0-4+deb12u1 -> 1.35.0."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def _debian_release() -> str:
    """The host's Debian major release: apt fetches from the host's sources."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_ID="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass
    return "unknown"
