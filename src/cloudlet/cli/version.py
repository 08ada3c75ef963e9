"""cloudlet's version, from the installed package's metadata."""

from __future__ import annotations

from importlib import metadata

import cloudlet


def version() -> str:
    """The installed distribution's version; the source tree's when not installed."""
    try:
        return metadata.version("cloudlet")
    except metadata.PackageNotFoundError:
        return cloudlet.__version__
