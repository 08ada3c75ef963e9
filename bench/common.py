"""What the benchmarks share: the real CLI, run in a throw-away state directory that
reuses the test suite's image cache (so no benchmark builds or downloads an image)."""

from __future__ import annotations

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


def cloudlet(
    home: Path, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`cloudlet ARGS` against ``home``, guests restricted to this machine; raises on failure."""
    env = {**os.environ, "CLOUDLET_HOME": str(home), "CLOUDLET_FORCE_RESTRICT_NETWORK": "1"}
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
