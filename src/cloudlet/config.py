"""Where state lives and the few host-wide settings, read from the environment and config.toml."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import InvalidInput
from cloudlet.spec.names import name_path
from cloudlet.spec.units import GIB, parse_size

MAX_SOCKET_PATH = 107


def default_home() -> Path:
    """$CLOUDLET_HOME, else /var/lib/cloudlet for root, else the user's XDG data dir."""
    env = os.environ.get("CLOUDLET_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/cloudlet")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "cloudlet"


@dataclass(frozen=True)
class Paths:
    """The layout of the state directory, in one place."""

    home: Path

    @property
    def database(self) -> Path:
        return self.home / "cloudlet.db"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def instances(self) -> Path:
        return self.home / "instances"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def pools(self) -> Path:
        """Directory pools cloudlet makes itself ("default") live here."""
        return self.home / "pools"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    def instance_dir(self, instance_id: str) -> Path:
        return name_path(self.instances, instance_id)

    def runtime_dir(self, instance_id: str) -> Path:
        return name_path(self.run, instance_id)

    def check_socket_room(self) -> None:
        """Unix socket paths are limited to 107 bytes; say so before QEMU fails obscurely."""
        longest = self.runtime_dir("0" * 36) / "console.sock"
        if len(str(longest).encode()) > MAX_SOCKET_PATH:
            raise InvalidInput(
                f"the state directory {self.home} is too long a path for unix sockets",
                hint="set CLOUDLET_HOME to a path under 50 characters",
            )

    def ensure(self) -> None:
        """Create the directories; sockets live under a 0700 run directory."""
        self.check_socket_room()
        for path in (self.home, self.images, self.instances, self.locks, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run.chmod(self.run.stat().st_mode & 0o750)  # the QEMU group may keep g+rx


@dataclass(frozen=True)
class Settings:
    """Host-wide policy: capacity overcommit, timeouts, network safety."""

    paths: Paths
    cpu_overcommit: float = 4.0
    memory_reserve: int = 1 * GIB
    stop_timeout: float = 60.0
    force_restrict_network: bool = False
    # Thin provisioning: the virtual sizes of a pool's volumes may add up to this many
    # times the size of its file system.
    storage_overcommit: float = 2.0
    # Backups: where the chunk store lives (None: $CLOUDLET_HOME/backups) and a limit on
    # how fast a live backup reads the disk (bytes/s, 0: none).
    backup_dir: Path | None = None
    backup_speed: int = 0
    # Copies out of a guest ([guest] in config.toml): the guest decides what it sends,
    # so a copy stops past this many bytes or entries.
    copy_max_bytes: int = 10 * GIB
    copy_max_entries: int = 100_000
    # A VM's serial log is rotated to serial.log.1 when it reaches this size.
    serial_log_max: int = 1024 * 1024
    # The largest virtual size an image or imported disk may have (None: what the
    # largest pool could ever hold, see engine/image_cap.py).
    max_image_size: int | None = None

    @property
    def backup_store(self) -> Path:
        return self.backup_dir or self.paths.home / "backups"

    @classmethod
    def load(cls, home: Path | None = None) -> Settings:
        paths = Paths(home or default_home())
        data: dict[str, object] = {}
        if paths.config_file.exists():
            try:
                data = tomllib.loads(paths.config_file.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise InvalidInput(
                    f"{paths.config_file} is not valid TOML ({exc})", hint="fix or remove the file"
                ) from None
        capacity = data.get("capacity", {})
        assert isinstance(capacity, dict)
        cpu_overcommit = float(
            os.environ.get("CLOUDLET_CPU_OVERCOMMIT") or str(capacity.get("cpu_overcommit", 4.0))
        )
        reserve_text = os.environ.get(
            "CLOUDLET_MEMORY_RESERVE", str(capacity.get("memory_reserve", "1G"))
        )
        memory_reserve = parse_size(reserve_text, what="memory reserve", default_unit="M")
        stop_timeout = float(
            os.environ.get("CLOUDLET_STOP_TIMEOUT") or str(data.get("stop_timeout", 60))
        )
        restrict = os.environ.get("CLOUDLET_FORCE_RESTRICT_NETWORK", "") not in ("", "0")
        storage = data.get("storage", {})
        assert isinstance(storage, dict)
        storage_overcommit = float(
            os.environ.get("CLOUDLET_STORAGE_OVERCOMMIT") or str(storage.get("overcommit", 2.0))
        )
        backup = data.get("backup", {})
        assert isinstance(backup, dict)
        backup_dir = os.environ.get("CLOUDLET_BACKUP_DIR") or backup.get("path")
        speed_text = os.environ.get("CLOUDLET_BACKUP_SPEED") or str(backup.get("speed", "0"))
        images = data.get("images", {})
        assert isinstance(images, dict)
        cap_text = os.environ.get("CLOUDLET_MAX_IMAGE_SIZE") or images.get("max_virtual_size")
        max_image_size = (
            parse_size(str(cap_text), what="images.max_virtual_size", default_unit="G")
            if cap_text
            else None
        )
        guest = data.get("guest", {})
        assert isinstance(guest, dict)
        copy_bytes = os.environ.get("CLOUDLET_COPY_MAX_BYTES") or str(
            guest.get("copy_max_bytes", "10G")
        )
        copy_entries = os.environ.get("CLOUDLET_COPY_MAX_ENTRIES") or str(
            guest.get("copy_max_entries", 100_000)
        )
        serial_text = os.environ.get("CLOUDLET_SERIAL_LOG_MAX") or str(
            guest.get("serial_log_max", "1M")
        )
        return cls(
            max_image_size=max_image_size,
            serial_log_max=parse_size(serial_text, what="serial_log_max", default_unit="M"),
            copy_max_bytes=parse_size(copy_bytes, what="copy_max_bytes", default_unit="M"),
            copy_max_entries=_positive_int(copy_entries, "copy_max_entries"),
            backup_dir=Path(str(backup_dir)).expanduser() if backup_dir else None,
            backup_speed=parse_size(speed_text, what="backup speed", default_unit="M")
            if speed_text != "0"
            else 0,
            paths=paths,
            cpu_overcommit=cpu_overcommit,
            memory_reserve=memory_reserve,
            stop_timeout=stop_timeout,
            force_restrict_network=restrict,
            storage_overcommit=storage_overcommit,
        )


def _positive_int(text: str, what: str) -> int:
    """A count from config.toml or the environment, refused in one line when it is not one."""
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"{what} must be a positive whole number, not {text!r}")
    return int(text)
