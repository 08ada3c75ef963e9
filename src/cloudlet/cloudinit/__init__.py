"""cloud-init NoCloud support: user data, the seed ISO, and SSH keys."""

from cloudlet.cloudinit.keys import (
    OWN_KEY_NAME,
    ensure_keypair,
    find_private_key,
    load_public_key,
    parse_host_keys,
    parse_public_key,
)
from cloudlet.cloudinit.seed import make_seed_iso
from cloudlet.cloudinit.userdata import (
    build_user_data,
    parse_user_data,
    validate_user_data,
    with_container_runtime,
)

__all__ = [
    "OWN_KEY_NAME",
    "build_user_data",
    "ensure_keypair",
    "find_private_key",
    "load_public_key",
    "make_seed_iso",
    "parse_host_keys",
    "parse_public_key",
    "parse_user_data",
    "validate_user_data",
    "with_container_runtime",
]
