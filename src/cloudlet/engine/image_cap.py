"""The cap on virtual sizes: a 1 PiB image or disk is refused before anything is made.

A qcow2 header may claim any size; a VM made from it would be promised storage the host
can never hold (and qemu-img's tables grow with it). Unless ``images.max_virtual_size``
says otherwise, the cap is what the largest pool could ever hold: its size times its
overcommit.
"""

from __future__ import annotations

from cloudlet.engine.context import EngineContext
from cloudlet.engine.pools import Pools


def image_size_cap(ctx: EngineContext) -> int:
    """The largest virtual size this host accepts for an image or a VM's disk."""
    if ctx.settings.max_image_size is not None:
        return ctx.settings.max_image_size
    return max(pool.limit for pool in Pools(ctx).pools())
