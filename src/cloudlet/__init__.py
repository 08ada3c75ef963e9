"""cloudlet: a self-hosted cloud engine for virtual machines on QEMU."""

__version__ = "0.1.0"
