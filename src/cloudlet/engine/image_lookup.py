"""An image by name, or an error that says which known image was meant.

A name that is not local may be in the catalog (then it only needs downloading) or a
slip ("debain-12", "ubuntu"): the error names the closest local and catalog images and
carries the catalog ones, so a frontend can say how to download them in its own words.
"""

from __future__ import annotations

from collections.abc import Iterable

from cloudlet.engine.deps import ImageProvider
from cloudlet.errors import ImageNotFound
from cloudlet.images import catalog
from cloudlet.images.store import Image, Progress
from cloudlet.next_steps import Step, step
from cloudlet.spec.suggest import closest


def unknown_image(name: str, local: Iterable[str]) -> ImageNotFound:
    """The error for ``name``, which is not among the ``local`` images."""
    here = list(local)
    pullable = [n for n in catalog.names() if n not in here]
    if name in pullable:
        return ImageNotFound(
            f"image {name!r} is in the catalog but not downloaded yet",
            hint="download it first",
            image=name,
            pullable=(name,),
            next_steps=[step(Step.IMAGE_PULL, image=name)],
        )
    found = closest(name, [*here, *pullable])
    if not found:
        return ImageNotFound(
            f"unknown image {name!r}",
            hint=f"local images: {', '.join(here) or 'none'}; the catalog has more",
            image=name,
            next_steps=[step(Step.IMAGE_CATALOG)],
        )
    return ImageNotFound(
        f"unknown image {name!r}",
        hint=f"did you mean {' or '.join(repr(n) for n in found)}?",
        image=name,
        pullable=[n for n in found if n in pullable],
        next_steps=[step(Step.IMAGE_PULL, image=n) for n in found if n in pullable],
    )


def get_image(
    images: ImageProvider, name: str, *, progress: Progress | None = None, arch: str | None = None
) -> Image:
    """``images.get(name)``, refusing an unknown name with a "did you mean" first."""
    known = images.names()
    if name not in known:
        raise unknown_image(name, known)
    return images.get(name, progress=progress, arch=arch)
