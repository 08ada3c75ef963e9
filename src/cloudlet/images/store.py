"""Local images: each version in its own directory, never changed once built.

VMs reference an image version's directory (their overlay's backing file and
kernel live there), so rebuilding `tiny` after a recipe change makes a new
version and leaves the old one for the VMs that still use it.
"""

from __future__ import annotations

import fcntl
import json
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.progress import StageCallback
from cloudlet.spec.names import image_name, name_path

BUILTIN = ("tiny", "debian-12")
HOST_ARCH = platform.machine()
# Stage messages only: the stage-only shape of ProgressEvent (progress.stage_callback
# turns a ProgressSink into one). To be replaced by ProgressSink once callers move.
Progress = StageCallback
Builder = Callable[[Path, Callable[[str], None] | None], None]


@dataclass(frozen=True)
class Image:
    """One built image version, as recorded in its image.json."""

    name: str
    path: Path
    arch: str
    disk_format: str
    disk: Path
    kernel: Path | None
    initrd: Path | None
    cmdline: str
    os: str
    min_disk_bytes: int
    recipe: str
    licence: str = "free"
    os_family: str = "linux"
    default_user: str | None = None
    cloud_init: bool = False
    guest_agent: bool = True
    install_iso: Path | None = None

    @property
    def needs_seats(self) -> bool:
        """Proprietary images count running VMs against registered seats."""
        return not self.licence.lower().startswith("free")

    @classmethod
    def load(cls, path: Path) -> Image:
        meta = json.loads((path / "image.json").read_text())
        return cls(
            name=meta["name"],
            path=path,
            arch=meta.get("arch", "x86_64"),
            disk_format=meta.get("format", "qcow2"),
            disk=path / meta["disk"],
            kernel=path / meta["kernel"] if meta.get("kernel") else None,
            initrd=path / meta["initrd"] if meta.get("initrd") else None,
            cmdline=meta.get("cmdline", ""),
            os=meta.get("os", ""),
            min_disk_bytes=int(meta.get("min_disk_bytes", 0)),
            recipe=meta.get("recipe", ""),
            licence=str(meta.get("licence") or "free"),
            os_family=str(meta.get("os_family") or "linux"),
            default_user=meta.get("default_user"),
            cloud_init=bool(meta.get("cloud_init", False)),
            guest_agent=bool(meta.get("guest_agent", False)),
            install_iso=path / meta["disk"] if meta.get("format") == "iso" else None,
        )


class ImageStore:
    """Finds images by name and builds the built-in ones on first use."""

    def __init__(self, root: Path, deb_cache: Path) -> None:
        self.root = root
        self.deb_cache = deb_cache

    def _current(self, name: str) -> Path:
        return name_path(self.root, name, links=True) / "current"

    def names(self) -> list[str]:
        found = {p.parent.name for p in self.root.glob("*/current")}
        return sorted(found | set(BUILTIN))

    def get(
        self,
        name: str,
        *,
        progress: Progress | None = None,
        build: bool = True,
        arch: str | None = None,
    ) -> Image:
        """The current version of ``name``; builds a built-in image when missing or stale."""
        if name in BUILTIN:
            return self._builtin(name, arch or HOST_ARCH, progress, build)
        current = self._current(name)
        if not current.exists():
            raise NotFound(
                f"unknown image {name!r}",
                hint=f"available: {', '.join(self.names())}",
                next_steps=[step(Step.IMAGE_LIST)],
            )
        image = Image.load(current.resolve())
        if arch is not None and arch != image.arch:
            raise InvalidInput(
                f"image {name} is {image.arch}, not {arch}",
                hint="leave the architecture out, or use an image built for it",
            )
        return image

    def _recipe(self, name: str, arch: str) -> tuple[str, Builder]:
        if name == "tiny":
            from cloudlet.images.tiny import build_tiny
            from cloudlet.images.tiny import recipe_digest as tiny_digest

            def build_tiny_image(dest: Path, progress: Progress | None) -> None:
                build_tiny(dest, arch=arch, progress=progress, deb_cache=self.deb_cache)

            return tiny_digest(arch), build_tiny_image
        if arch != HOST_ARCH:
            raise InvalidInput(
                f"image {name} is built for {HOST_ARCH} only",
                hint="use the tiny image for other architectures",
            )
        from cloudlet.images.debian import build_debian
        from cloudlet.images.debian import recipe_digest as debian_digest

        def build_debian_image(dest: Path, progress: Progress | None) -> None:
            build_debian(dest, progress=progress, cache=self.deb_cache.parent / "debian")

        return debian_digest(), build_debian_image

    def _builtin(self, name: str, arch: str, progress: Progress | None, build: bool) -> Image:
        digest, builder = self._recipe(name, arch)
        prefix = "" if arch == HOST_ARCH else f"{arch}-"
        version_dir = self.root / name / f"{prefix}{digest[:16]}"
        if (version_dir / "image.json").exists():
            if arch == HOST_ARCH:
                self._point_current(name, version_dir)
            return Image.load(version_dir)
        if not build:
            raise NotFound(
                f"image {name!r} is not built yet",
                hint="build it first",
                next_steps=[step(Step.IMAGE_BUILD, image=name)],
            )
        (self.root / name).mkdir(parents=True, exist_ok=True)
        # One builder at a time; a second process waits and then finds it built.
        with open(self.root / name / f".build-{arch}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (version_dir / "image.json").exists():
                if progress:
                    progress(f"building image {name} ({arch}) from Debian packages (once)")
                if version_dir.exists():
                    shutil.rmtree(version_dir)
                builder(version_dir, progress)
        if arch == HOST_ARCH:
            self._point_current(name, version_dir)
        return Image.load(version_dir)

    def images(self) -> list[Image]:
        """Every image with a current version (built-ins only once built)."""
        found = []
        for link in sorted(self.root.glob("*/current")):
            try:
                found.append(Image.load(link.resolve()))
            except (OSError, ValueError, KeyError):
                continue
        return found

    def delete(self, name: str) -> list[Path]:
        """Remove every version of ``name``; the caller checks no VM uses it."""
        target = name_path(self.root, image_name(name), links=True)
        if not target.exists():
            raise NotFound(
                f"unknown image {name!r}",
                hint="list the images there are",
                next_steps=[step(Step.IMAGE_LIST)],
            )
        versions = [p for p in target.iterdir() if p.is_dir() and not p.is_symlink()]
        shutil.rmtree(target)
        return versions

    def _point_current(self, name: str, version_dir: Path) -> None:
        link = self._current(name)
        if link.is_symlink() and link.resolve() == version_dir.resolve():
            return
        tmp = link.with_name(".current.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version_dir.name)
        tmp.replace(link)
