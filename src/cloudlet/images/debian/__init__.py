"""The "debian-12" image: Debian with cloud-init, built locally with mmdebstrap."""

from cloudlet.images.debian.builder import build_debian
from cloudlet.images.debian.recipe import BUILDER_VERSION, recipe_digest

__all__ = ["BUILDER_VERSION", "build_debian", "recipe_digest"]
