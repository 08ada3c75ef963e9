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
from cloudlet.engine.image_views import CatalogEntryView, ImageView
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, NotFound
from cloudlet.images.store import Image, Progress
from cloudlet.next_steps import Step, step
from cloudlet.spec import names
from cloudlet.store.models import InstanceRow

SizeCap = Callable[[], int]


class Images:
    """List, show, build, delete, import and pull images."""

    def __init__(self, ctx: EngineContext, size_cap: SizeCap) -> None:
        self.ctx = ctx
        self.size_cap = size_cap

    def images(self) -> list[ImageView]:
        """Local images with the VMs that use each."""
        with self.ctx.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        return [
            ImageView.of(image, (r.name for r in rows if r.image == image.name))
            for image in self.ctx.deps.images.images()
        ]

    def image_show(self, name: str) -> ImageView:
        names.image_name(name)
        for view in self.images():
            if view.name == name:
                return view
        raise unknown_image(name, self.ctx.deps.images.names())

    def image_build(self, name: str, *, arch: str | None, progress: Progress | None) -> ImageView:
        """A built-in image, built from Debian packages unless it is built already."""
        names.image_name(name)
        image = self.ctx.deps.images.get(name, progress=progress, arch=arch)
        with self.ctx.db.session() as s:
            users = s.scalars(select(InstanceRow.name).where(InstanceRow.image == name)).all()
        return ImageView.of(image, users)

    def image_delete(self, name: str) -> Done:
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
                    next_steps=[step(Step.VM_DELETE, vm=u) for u in sorted(users)],
                )
            ctx.deps.images.delete(name)
        return Done("image", name, "deleted", f"image {name} deleted")

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
    ) -> ImageView:
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

    def catalog(self) -> list[CatalogEntryView]:
        """Official cloud images that can be downloaded (pulled) by name."""
        from cloudlet.images import catalog

        return [CatalogEntryView.of(catalog.get_entry(n)) for n in catalog.names()]

    def image_pull(
        self, name: str, *, progress: Callable[[int, int | None], None] | None
    ) -> ImageView:
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
