"""Local images: each version in its own directory, never changed once built.

VMs reference an image version's directory (their overlay's backing file and
kernel live there), so rebuilding `tiny` after a recipe change makes a new
version and leaves the old one for the VMs that still use it.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import NotFound

BUILTIN = ("tiny",)
Progress = Callable[[str], None]


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

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "arch": self.arch,
            "format": self.disk_format,
            "os": self.os,
            "os_family": self.os_family,
            "licence": self.licence,
            "min_disk_bytes": self.min_disk_bytes,
            "default_user": self.default_user,
            "cloud_init": self.cloud_init,
            "guest_agent": self.guest_agent,
            "boot": "kernel" if self.kernel else ("installer" if self.install_iso else "firmware"),
            "path": str(self.path),
        }

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
            guest_agent=bool(meta.get("guest_agent", True)),
            install_iso=path / meta["disk"] if meta.get("format") == "iso" else None,
        )


class ImageStore:
    """Finds images by name and builds the built-in ones on first use."""

    def __init__(self, root: Path, deb_cache: Path) -> None:
        self.root = root
        self.deb_cache = deb_cache

    def _current(self, name: str) -> Path:
        return self.root / name / "current"

    def names(self) -> list[str]:
        found = {p.parent.name for p in self.root.glob("*/current")}
        return sorted(found | set(BUILTIN))

    def get(self, name: str, *, progress: Progress | None = None, build: bool = True) -> Image:
        """The current version of ``name``; builds a built-in image when missing or stale."""
        if name in BUILTIN:
            return self._builtin(name, progress, build)
        current = self._current(name)
        if not current.exists():
            raise NotFound(
                f"unknown image {name!r}",
                hint=f"available: {', '.join(self.names())} (run 'cloudlet image list')",
            )
        return Image.load(current.resolve())

    def _builtin(self, name: str, progress: Progress | None, build: bool) -> Image:
        from cloudlet.images.tiny import build_tiny, recipe_digest

        digest = recipe_digest()
        version_dir = self.root / name / digest[:16]
        if (version_dir / "image.json").exists():
            self._point_current(name, version_dir)
            return Image.load(version_dir)
        if not build:
            raise NotFound(
                f"image {name!r} is not built yet", hint="run 'cloudlet image build tiny'"
            )
        (self.root / name).mkdir(parents=True, exist_ok=True)
        # One builder at a time; a second process waits and then finds it built.
        with open(self.root / name / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (version_dir / "image.json").exists():
                if progress:
                    progress(f"building image {name} from Debian packages (once)")
                if version_dir.exists():
                    shutil.rmtree(version_dir)
                build_tiny(version_dir, progress=progress, deb_cache=self.deb_cache)
        self._point_current(name, version_dir)
        return Image.load(version_dir)

    def _point_current(self, name: str, version_dir: Path) -> None:
        link = self._current(name)
        if link.is_symlink() and link.resolve() == version_dir.resolve():
            return
        tmp = link.with_name(".current.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version_dir.name)
        tmp.replace(link)
