"""The default guest image "tiny": busybox, qemu-ga and the Debian cloud kernel.

Built locally from Debian packages in seconds; boots to a working guest agent in a
few seconds even under TCG.
"""

from cloudlet.images.tiny.builder import build_tiny
from cloudlet.images.tiny.recipe import BUILDER_VERSION, recipe_digest

__all__ = ["BUILDER_VERSION", "build_tiny", "recipe_digest"]
