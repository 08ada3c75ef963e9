"""Working with a running guest through its agent: file copy in and out (no network)."""

from cloudlet.guest.files import copy_in, copy_out

__all__ = ["copy_in", "copy_out"]
