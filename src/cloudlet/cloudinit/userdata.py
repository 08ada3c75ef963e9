"""cloud-config user data: validate what a user hands us, and build the VM's own.

The user's file is merged into the generated one instead of being sent as a second
MIME part, so one YAML document on the seed says everything the guest will do.
"""

from __future__ import annotations

from typing import Any

import yaml

from cloudlet.errors import InvalidInput

HEADER = "#cloud-config"

# Keys cloudlet decides: the guest's name must match what cloudlet shows for the VM.
_OWNED = ("hostname", "fqdn", "prefer_fqdn_over_hostname")

# Host key types generated on first boot. RSA is left out: generating it costs seconds
# under TCG, and every current OpenSSH client speaks ed25519 and ECDSA.
HOST_KEY_TYPES = ("ed25519", "ecdsa")

_HINT = "start the file with a '#cloud-config' line followed by a YAML mapping"


def validate_user_data(text: str) -> str:
    """Check user data is a #cloud-config YAML mapping and return it unchanged.

    Anything else (shell scripts, #include, MIME multipart) is refused: cloudlet merges
    the user's config with its own, which only works for cloud-config.
    """
    parse_user_data(text)
    return text if text.endswith("\n") else text + "\n"


def parse_user_data(text: str) -> dict[str, Any]:
    """The mapping a #cloud-config document holds, or InvalidInput saying what is wrong."""
    body = text.removeprefix("\ufeff")
    first = body.lstrip().split("\n", 1)[0].strip()
    if first != HEADER:
        if first.startswith("#!"):
            raise InvalidInput(
                "user data is a script, not #cloud-config",
                hint="put the commands in a #cloud-config 'runcmd:' list instead",
            )
        raise InvalidInput(
            f"user data does not start with {HEADER!r} (first line: {first[:40]!r})",
            hint=_HINT,
        )
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(
            f"user data is not valid YAML{where}: {problem}", hint="fix the YAML syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(f"user data is a YAML {type(data).__name__}, not a mapping", hint=_HINT)
    return data


def build_user_data(
    hostname: str,
    user: str,
    ssh_public_keys: list[str],
    extra_user_data: str | None = None,
) -> str:
    """The VM's #cloud-config: its name, one sudo user with the keys, no passwords.

    Merge rule for ``extra_user_data`` (a #cloud-config document from the user):
    lists are concatenated, ours first (so the user's ``users`` come after the
    cloudlet user, and both ``runcmd`` lists run, ours first); mappings merge key by
    key with the same rule; for any other value the user's wins (they may turn
    password login back on). ``hostname``/``fqdn`` are cloudlet's: a different value
    is refused, since the VM name is what cloudlet shows and resolves.
    """
    ours: dict[str, Any] = {
        "hostname": hostname,
        "prefer_fqdn_over_hostname": False,
        "manage_etc_hosts": True,
        "users": [
            {
                "name": user,
                "gecos": "cloudlet user",
                "groups": ["sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "ssh_authorized_keys": list(ssh_public_keys),
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
        "ssh_genkeytypes": list(HOST_KEY_TYPES),
        # Print the new host keys on the serial console between
        # -----BEGIN/END SSH HOST KEY KEYS----- so the host can pin them.
        "ssh": {"emit_keys_to_console": True},
        "ssh_key_console_blacklist": [],
    }
    if extra_user_data is None:
        merged = ours
    else:
        theirs = parse_user_data(extra_user_data)
        for key in _OWNED:
            if key in theirs and theirs[key] != ours.get(key, theirs[key]):
                raise InvalidInput(
                    f"user data sets {key}: {theirs[key]!r}, but the VM is named {hostname!r}",
                    hint=f"remove {key} from the user data; the VM name sets it",
                )
        if "users" in theirs and not isinstance(theirs["users"], list):
            raise InvalidInput("user data 'users' must be a list", hint="write users: [...]")
        if "users" in theirs:
            # "default" means the image's default user, which cloudlet's user replaces.
            theirs["users"] = [u for u in theirs["users"] if u != "default"]
        merged = merge_config(ours, theirs)
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, width=1 << 16)
    return f"{HEADER}\n{body}"


# podman with its docker-compatible API socket (/run/podman/podman.sock).
CONTAINER_RUNTIME: dict[str, Any] = {
    "packages": ["podman"],
    "runcmd": [["systemctl", "enable", "--now", "podman.socket"]],
}


def with_container_runtime(user_data: str | None) -> str:
    """The user's #cloud-config (or none) with podman installed and its socket enabled."""
    theirs = parse_user_data(user_data) if user_data is not None else {}
    merged = merge_config(CONTAINER_RUNTIME, theirs)
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, width=1 << 16)
    return f"{HEADER}\n{body}"


def merge_config(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Lists append (ours first), mappings merge recursively, other values: theirs win."""
    out = dict(ours)
    for key, value in theirs.items():
        mine = out.get(key)
        if isinstance(mine, list) and isinstance(value, list):
            out[key] = mine + value
        elif isinstance(mine, dict) and isinstance(value, dict):
            out[key] = merge_config(mine, value)
        else:
            out[key] = value
    return out
