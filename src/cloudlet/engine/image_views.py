"""What the image and licence services hand to frontends: typed, ready to render or serialise.

``to_dict`` keeps the keys ``-o json`` has always printed, so scripts reading them
keep working whichever frontend serves them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudlet.images.catalog import CatalogEntry
    from cloudlet.images.store import Image


@dataclass(frozen=True)
class ImageView:
    """A local image and the VMs whose disks are made from it."""

    name: str
    arch: str
    format: str
    os: str
    os_family: str
    licence: str
    min_disk_bytes: int
    default_user: str | None
    cloud_init: bool
    guest_agent: bool
    boot: str  # "kernel" (booted directly), "installer" (an ISO) or "firmware"
    path: str
    used_by: tuple[str, ...] = ()

    @classmethod
    def of(cls, image: Image, used_by: Iterable[str] = ()) -> ImageView:
        return cls(
            name=image.name,
            arch=image.arch,
            format=image.disk_format,
            os=image.os,
            os_family=image.os_family,
            licence=image.licence,
            min_disk_bytes=image.min_disk_bytes,
            default_user=image.default_user,
            cloud_init=image.cloud_init,
            guest_agent=image.guest_agent,
            boot="kernel" if image.kernel else ("installer" if image.install_iso else "firmware"),
            path=str(image.path),
            used_by=tuple(sorted(used_by)),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["used_by"] = list(self.used_by)
        return data


@dataclass(frozen=True)
class CatalogEntryView:
    """An official cloud image that can be downloaded (pulled) by name."""

    name: str
    title: str
    arch: str
    licence: str
    default_user: str
    url: str

    @classmethod
    def of(cls, entry: CatalogEntry) -> CatalogEntryView:
        return cls(
            name=entry.name,
            title=entry.title,
            arch=entry.arch,
            licence=entry.licence_name or entry.licence,
            default_user=entry.default_user,
            url=entry.url,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LicenceView:
    """A proprietary licence: the seats registered and how many running VMs use."""

    name: str
    seats: int
    in_use: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
