"""Guest access for cloud-init images: seed contents, cloud-init wait, SSH keys and argv.

Everything a user's input can get wrong (keys, user-data) is checked by
``plan_access`` before the engine creates anything.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.driver.base import Driver
from cloudlet.errors import GuestError, InvalidInput, Timeout
from cloudlet.images.store import Image
from cloudlet.next_steps import Step, step
from cloudlet.progress import CancelToken, check, pause
from cloudlet.spec import names
from cloudlet.spec.instance import AccessSpec, InstanceSpec

DEFAULT_USER = "cloudlet"
CLOUD_INIT_TIMEOUT = 900.0
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
# The VM's serial log shows its boot; these helpers know its id, not its name.
SERIAL_LOG_HINT = "read the VM's serial log"
LOG_STEPS = (step(Step.VM_LOGS),)


@dataclass(frozen=True)
class AccessPlan:
    access: AccessSpec
    user_data: str | None


def plan_access(
    image: Image,
    *,
    user: str | None,
    keys_dir: Path,
    ssh_key_lines: tuple[str, ...] = (),
    user_data_text: str | None = None,
    key_files: tuple[Path, ...] = (),
) -> AccessPlan:
    """Validate keys and user-data and decide the login user; no side effects but a key pair.

    Keys come as key lines and user-data as text; ``key_files`` are the host files the
    keys were read from (a local frontend's), where the private key is looked for first.
    """
    from cloudlet import cloudinit

    if user is not None:
        names.login_user(user)  # before keys are touched
    if not image.cloud_init:
        if ssh_key_lines or user_data_text or user:
            raise InvalidInput(
                f"image {image.name} has no cloud-init, so SSH keys, a login user or user-data "
                "cannot apply",
                hint="use an image with cloud-init, such as debian-12",
            )
        return AccessPlan(AccessSpec(), None)
    user_data = None
    if user_data_text is not None:
        user_data = cloudinit.validate_user_data(user_data_text)
    if ssh_key_lines:
        public = tuple(cloudinit.parse_public_key(line, source="ssh key") for line in ssh_key_lines)
        private_path = None
        if key_files:
            first = key_files[0]
            private = first.with_suffix("") if first.suffix == ".pub" else None
            private_path = str(private) if private is not None and private.exists() else None
        else:
            own = keys_dir / f"{cloudinit.OWN_KEY_NAME}.pub"
            users = sorted((Path.home() / ".ssh").glob("*.pub"))
            found = cloudinit.find_private_key(public, [own, *users])
            private_path = str(found) if found is not None else None
    else:
        private_key, public_key = cloudinit.ensure_keypair(keys_dir)
        public = (cloudinit.load_public_key(public_key),)
        private_path = str(private_key)
    login = names.login_user(user or image.default_user or DEFAULT_USER)
    return AccessPlan(
        AccessSpec(user=login, ssh_public_keys=public, ssh_private_key=private_path), user_data
    )


def has_ssh(access: AccessSpec, ssh_port: int | None) -> bool:
    """A login over SSH is possible: a login user (cloud-init made it) and a forward."""
    return access.user is not None and ssh_port is not None


def write_seed(
    dest: Path, *, instance_id: str, hostname: str, access: AccessSpec, user_data: str | None
) -> None:
    """The NoCloud seed ISO the guest's cloud-init reads at first boot."""
    from cloudlet import cloudinit

    text = cloudinit.build_user_data(
        hostname, access.user or DEFAULT_USER, list(access.ssh_public_keys), user_data
    )
    cloudinit.make_seed_iso(
        dest,
        user_data=text,
        meta_data={"instance-id": instance_id, "local-hostname": hostname},
    )


def seed_user_data(spec: InstanceSpec) -> str | None:
    """The user's #cloud-config, with the container runtime merged in when asked for."""
    from cloudlet import cloudinit

    if not spec.containers:
        return spec.user_data
    return cloudinit.with_container_runtime(spec.user_data)


def wait_cloud_init(
    driver: Driver,
    instance_id: str,
    timeout: float = CLOUD_INIT_TIMEOUT,
    *,
    cancel: CancelToken | None = None,
) -> None:
    """Block until cloud-init finished in the guest; its log tail explains a failure.

    ``cancel`` stops the wait with Cancelled; cloud-init itself runs on in the guest."""
    result = driver.exec(
        instance_id,
        ["cloud-init", "status", "--wait", "--long"],
        timeout=timeout,
        cancel=cancel,
    )
    if result.exit_code == 0:
        return
    tail = driver.exec(
        instance_id,
        ["tail", "-n", "15", CLOUD_INIT_LOG],
        timeout=60,
        cancel=cancel,
    )
    lines = (tail.stdout or result.stdout).decode(errors="replace").strip().splitlines()
    detail = " | ".join(line.strip() for line in lines[-5:] if line.strip())
    raise GuestError(
        f"cloud-init failed in the guest (exit {result.exit_code}): {detail}",
        hint=f"read {CLOUD_INIT_LOG} in the guest",
        next_steps=[step(Step.VM_EXEC, command=f"cat {CLOUD_INIT_LOG}")],
    )


def pin_host_keys(
    driver: Driver, instance_id: str, port: int, known_hosts: Path, *,
    cancel: CancelToken | None = None,
) -> None:  # fmt: skip
    """Learn the guest's SSH host keys over the agent (a trusted channel) and pin them."""
    result = driver.exec(
        instance_id, ["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"], timeout=60, cancel=cancel
    )
    keys = [
        " ".join(line.split()[:2])
        for line in result.stdout.decode(errors="replace").splitlines()
        if line.strip()
    ]
    if result.exit_code != 0 or not keys:
        raise GuestError(
            "the guest has no SSH host keys yet", hint="wait for its first boot to finish"
        )
    known_hosts.write_text("".join(f"[127.0.0.1]:{port} {key}\n" for key in keys))


def ssh_options(access: AccessSpec, port: int, known_hosts: Path) -> list[str]:
    """Options only: the caller ends them with ``--``, so nothing after is an option."""
    options = [
        "-l", names.login_user(access.user or DEFAULT_USER),
        "-p", str(port),
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if access.ssh_private_key:
        options += ["-i", access.ssh_private_key, "-o", "IdentitiesOnly=yes"]
    return options


def ssh_config(name: str, access: AccessSpec, port: int, known_hosts: Path) -> str:
    lines = [
        f"Host {name}",
        "  HostName 127.0.0.1",
        f"  Port {port}",
        f"  User {names.login_user(access.user or DEFAULT_USER)}",
        f"  UserKnownHostsFile {json.dumps(str(known_hosts))}",
        "  StrictHostKeyChecking yes",
    ]
    if access.ssh_private_key:
        lines += [f"  IdentityFile {json.dumps(access.ssh_private_key)}", "  IdentitiesOnly yes"]
    return "\n".join(lines) + "\n"


def wait_ssh_banner(
    port: int, timeout: float, alive: Callable[[], bool], *, cancel: CancelToken | None = None
) -> None:
    """For guests without an agent: wait until sshd answers on the forwarded port.

    ``cancel`` stops the wait with Cancelled (within a try's 2 s connection timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check(cancel)
        if not alive():
            raise GuestError(
                "the VM stopped while it booted", hint=SERIAL_LOG_HINT, next_steps=LOG_STEPS
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        pause(cancel, 1)
    raise Timeout(
        f"the guest's SSH server did not answer within {timeout:.0f} s",
        hint=SERIAL_LOG_HINT,
        next_steps=LOG_STEPS,
    )


def read_serial_log(serial_log: Path) -> bytes | None:
    """The serial log as kept: its rotated older part (serial.log.1) first; None if none."""
    parts = []
    for path in (serial_log.with_name(serial_log.name + ".1"), serial_log):
        try:
            parts.append(path.read_bytes())
        except FileNotFoundError:
            continue
    return b"".join(parts) if parts else None


def pin_host_keys_from_serial(serial_log: Path, port: int, known_hosts: Path) -> None:
    """cloud-init prints the host keys on the console at first boot; pin those."""
    from cloudlet import cloudinit

    try:
        text = (read_serial_log(serial_log) or b"").decode(errors="replace")
    except OSError:
        text = ""
    keys = cloudinit.parse_host_keys(text)
    if not keys:
        raise GuestError(
            "the guest printed no SSH host keys on its console",
            hint=f"its image's cloud-init may not print them; {SERIAL_LOG_HINT}",
            next_steps=LOG_STEPS,
        )
    known_hosts.write_text("".join(f"[127.0.0.1]:{port} {key}\n" for key in keys))
