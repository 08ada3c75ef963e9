"""What the benchmarks share: the real CLI, run in a throw-away state directory that
reuses the test suite's image cache (so no benchmark builds or downloads an image)."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set by ``keep_bytecode``: the commands' environment for compiled bytecode.
_BYTECODE: dict[str, str] = {}


def keep_bytecode(home: Path) -> None:
    """Let the benchmarked commands keep compiled bytecode, as an installed cloudlet has.

    A machine that sets PYTHONDONTWRITEBYTECODE (this build machine does) and a venv
    installed without bytecode would make every timed command compile cloudlet,
    SQLAlchemy, pydantic and Typer again: seconds no installed cloudlet pays. The
    bytecode goes to a directory of the benchmark's own (PYTHONPYCACHEPREFIX), so
    neither the shared venv nor the sources are written to; cloudlet's modules are
    compiled here, the dependencies by the first (untimed) commands that import them.
    """
    prefix = home / "pycache"
    prefix.mkdir(exist_ok=True)
    _BYTECODE["PYTHONPYCACHEPREFIX"] = str(prefix)
    saved = sys.pycache_prefix
    sys.pycache_prefix = str(prefix)
    try:
        import cloudlet as package

        compileall.compile_dir(Path(package.__file__).parent, quiet=1)
    finally:
        sys.pycache_prefix = saved


def cloudlet_env(home: Path) -> dict[str, str]:
    """The environment of a benchmarked `cloudlet` command against ``home``."""
    env = {**os.environ, "CLOUDLET_HOME": str(home), "CLOUDLET_FORCE_RESTRICT_NETWORK": "1"}
    if _BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(_BYTECODE)
    return env


def cloudlet(
    home: Path, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`cloudlet ARGS` against ``home``, guests restricted to this machine; raises on failure."""
    env = cloudlet_env(home)
    env.pop("CLOUDLET_BACKUP_DIR", None)  # the store is the state directory's own
    return subprocess.run(
        [sys.executable, "-m", "cloudlet", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextmanager
def bench_home(*vms: str) -> Iterator[Path]:
    """A fresh state directory; afterwards ``vms`` are stopped and deleted, and it goes."""
    home = Path(tempfile.mkdtemp(prefix="cl-bench-", dir="/tmp"))
    shared = Path(os.environ.get("CLOUDLET_TEST_CACHE", "/var/cache/cloudlet-test"), "state")
    try:
        if (shared / "images").exists():
            (home / "images").symlink_to(shared / "images")
            (home / "cache").symlink_to(shared / "cache")
        yield home
    finally:
        for vm in vms:
            for args in (("stop", vm, "--force"), ("delete", vm)):
                with contextlib.suppress(subprocess.CalledProcessError):  # not running, or gone
                    cloudlet(home, *args)
        shutil.rmtree(home, ignore_errors=True)


def boot_image(home: Path) -> tuple[dict[str, str], str]:
    """The `bench` VM's image files and the accelerator, as the boot benches use them."""
    vm = json.loads(cloudlet(home, "show", "bench", "-o", "json").stdout)
    meta_dir = Path(vm["paths"]["image"])
    meta = json.loads((meta_dir / "image.json").read_text())
    image = {
        "disk": str(meta_dir / meta["disk"]),
        "kernel": str(meta_dir / meta["kernel"]),
        "initrd": str(meta_dir / meta["initrd"]),
        "cmdline": meta["cmdline"] + " cloudlet.hostname=bench",
    }
    return image, json.loads(cloudlet(home, "host", "-o", "json").stdout)["accel"]
