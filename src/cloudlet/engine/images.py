"""Images: the local store, the catalog of official images, imports and pulls.

The size cap comes from the storage pools (``image_cap``); the service takes it as
a callable so it needs neither the facade nor the storage service itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from cloudlet.engine import image_menu as image_menu_mod
from cloudlet.engine import locks
from cloudlet.engine.context import EngineContext
from cloudlet.engine.image_lookup import unknown_image
from cloudlet.engine.image_menu import ImageChoice
from cloudlet.errors import Conflict, NotFound
from cloudlet.images.store import Image, Progress
from cloudlet.spec import names
from cloudlet.store.models import InstanceRow

SizeCap = Callable[[], int]


class Images:
    """List, show, build, delete, import and pull images."""

    def __init__(self, ctx: EngineContext, size_cap: SizeCap) -> None:
        self.ctx = ctx
        self.size_cap = size_cap

    def images(self) -> list[dict[str, object]]:
        """Local images with the VMs that use each."""
        with self.ctx.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        result = []
        for image in self.ctx.deps.images.images():
            info = image.describe()
            info["used_by"] = sorted(r.name for r in rows if r.image == image.name)
            result.append(info)
        return result

    def image_show(self, name: str) -> dict[str, object]:
        names.image_name(name)
        for info in self.images():
            if info["name"] == name:
                return info
        raise unknown_image(name, self.ctx.deps.images.names())

    def image_build(self, name: str, *, arch: str | None, progress: Progress | None) -> Image:
        names.image_name(name)
        return self.ctx.deps.images.get(name, progress=progress, arch=arch)

    def image_delete(self, name: str) -> str:
        """Refused while any VM still uses the image (its disk is their backing file)."""
        names.image_name(name)
        ctx = self.ctx
        with locks.hold(ctx.paths.locks, f".image-{name}", what=f"image {name}"):
            with ctx.db.session() as s:
                users = s.scalars(select(InstanceRow.name).where(InstanceRow.image == name)).all()
            if users:
                raise Conflict(
                    f"image {name} is used by {', '.join(sorted(users))}",
                    hint="delete those VMs first",
                )
            ctx.deps.images.delete(name)
        return f"image {name} deleted"

    def image_import(
        self,
        path: Path,
        name: str,
        fmt: str,
        *,
        licence: str = "free",
        os_family: str = "linux",
        default_user: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, object]:
        from cloudlet.images import importer

        names.image_name(name)
        names.licence_name(licence)
        if default_user is not None:
            names.login_user(default_user)
        if not path.is_file():
            raise NotFound(f"no file {path}", hint="check the path")
        importer.import_image(
            path, name, fmt, self.ctx.paths.images, licence=licence, default_user=default_user,
            os_family=os_family, max_size=self.size_cap(),
        )  # fmt: skip
        return self.image_show(name)

    def installer_image(self, iso: Path, progress: Progress | None) -> Image:
        """An installer ISO becomes an image once (after its safety checks), then is reused."""
        from cloudlet.images import importer

        name = "iso-" + "".join(
            c if c.isascii() and c.isalnum() else "-" for c in iso.stem.lower()
        ).strip("-")
        name = name[:63].rstrip("-")
        try:
            return self.ctx.deps.images.get(name, progress=progress)
        except NotFound:
            pass
        importer.import_image(
            iso, name, "iso", self.ctx.paths.images, progress=None, max_size=self.size_cap()
        )
        return self.ctx.deps.images.get(name)

    def catalog(self) -> list[dict[str, object]]:
        """Official cloud images 'cloudlet image pull' can fetch."""
        from cloudlet.images import catalog

        return [
            {
                "name": e.name,
                "title": e.title,
                "arch": e.arch,
                "licence": e.licence_name or e.licence,
                "default_user": e.default_user,
                "url": e.url,
            }
            for e in (catalog.get_entry(n) for n in catalog.names())
        ]

    def image_pull(
        self, name: str, *, progress: Callable[[int, int | None], None] | None
    ) -> dict[str, object]:
        from cloudlet.images import catalog, importer

        names.image_name(name)
        entry = catalog.get_entry(name)
        importer.pull(
            entry, self.ctx.paths.images, self.ctx.paths.cache / "downloads", progress,
            max_size=self.size_cap(),
        )  # fmt: skip
        return self.image_show(name)

    def image_menu(self) -> list[ImageChoice]:
        """The images a new VM can be made from: local, catalog, built on first use."""
        return image_menu_mod.menu(self.images(), self.catalog())
