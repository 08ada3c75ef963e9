"""The images a new VM can be made from, as the create wizard (and the API) offers them.

Local images first, then the official catalog (pulled when chosen), then the built-in
images that are built from Debian packages on first use. Each choice carries its licence
and what it can run: an image without cloud-init takes no login user, SSH key or
container runtime. A VM that will run containers is offered only the images that can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloudlet.engine.image_views import CatalogEntryView, ImageView
from cloudlet.errors import InvalidInput
from cloudlet.images.debian import recipe as debian_recipe
from cloudlet.images.tiny import recipe as tiny_recipe

# built from Debian packages on first use, with the disk size they are built with
BUILT_IN = {"tiny": tiny_recipe.DISK_SIZE, "debian-12": debian_recipe.DISK_SIZE}
FREE = "free"


@dataclass(frozen=True)
class ImageChoice:
    """One image on offer; ``here`` False: in the catalog, pulled when chosen."""

    name: str
    os: str
    licence: str
    cloud_init: bool
    here: bool
    arch: str | None = None
    default_user: str | None = None
    disk_size: int | None = None  # bytes; None until a catalog image is pulled

    @property
    def runs_containers(self) -> bool:
        """A container runtime is installed by cloud-init at first boot."""
        return self.cloud_init

    @property
    def has_ssh(self) -> bool:
        """A login user and SSH key are set up by cloud-init; without it there is no SSH."""
        return self.cloud_init


def menu(local: Sequence[ImageView], catalog: Sequence[CatalogEntryView]) -> list[ImageChoice]:
    """The choices from the local images and the catalog, one per name."""
    choices: dict[str, ImageChoice] = {}
    for image in local:
        choices[image.name] = ImageChoice(
            name=image.name,
            os=image.os,
            licence=image.licence or FREE,
            cloud_init=image.cloud_init,
            here=True,
            arch=image.arch or None,
            default_user=image.default_user or None,
            disk_size=image.min_disk_bytes if image.min_disk_bytes > 0 else None,
        )
    for entry in catalog:
        choices.setdefault(
            entry.name,
            ImageChoice(
                name=entry.name,
                os=entry.title,
                licence=entry.licence or FREE,
                cloud_init=True,  # every official cloud image runs cloud-init
                here=False,
                arch=entry.arch or None,
                default_user=entry.default_user or None,
            ),
        )
    for name, size in BUILT_IN.items():
        choices.setdefault(
            name,
            ImageChoice(
                name, "built on first use", FREE, name != "tiny", here=True, disk_size=size
            ),
        )
    return list(choices.values())


def offered(choices: Sequence[ImageChoice], *, containers: bool) -> list[ImageChoice]:
    """The choices a VM can be made from: with containers, only images that can run them."""
    return [c for c in choices if c.runs_containers or not containers]


def default_choice(
    choices: Sequence[ImageChoice], *, containers: bool, preferred: str = "tiny"
) -> ImageChoice | None:
    """What Enter picks: ``preferred`` when it can serve the VM, else the first image that
    is here (no download) and can, else the first that can; None when nothing can."""
    usable = offered(choices, containers=containers)
    for pick in (
        [c for c in usable if c.name == preferred],
        [c for c in usable if c.here],
        usable,
    ):
        if pick:
            return pick[0]
    return None


def choose(choices: Sequence[ImageChoice], name: str, *, containers: bool) -> ImageChoice:
    """The choice named ``name``, refused when it is not on offer or cannot run what the
    VM is for (containers need cloud-init)."""
    for choice in choices:
        if choice.name == name:
            break
    else:
        raise InvalidInput(f"unknown image {name!r}", hint="pick one above")
    if containers and not choice.runs_containers:
        raise InvalidInput(
            f"image {name} has no cloud-init, so a container runtime cannot be installed",
            hint="pick an image with cloud-init",
        )
    return choice
