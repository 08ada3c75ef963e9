"""Run benchmark: `cloudlet run tiny -- true`, beside a bare QEMU floor and virtme-ng.

Each round times, one after the other (so drift and load hit all alike):

- the floor: a hand-written `qemu-system-x86_64` direct kernel boot of the `tiny`
  image's own kernel and initramfs with ``rdinit=/bin/busybox -- poweroff -f``;
- the same floor with Debian's generic kernel (the one virtme-ng boots);
- `cloudlet run tiny -- true` through the CLI, and the same run through the engine
  in a resident, already imported Python worker (no interpreter start-up);
- virtme-ng: ``vng -r <generic kernel> --disable-kvm -- true``.

virtme-ng, Debian's generic kernel (9p built as modules it can load) and kmod (vng
needs depmod/modprobe on the host) are set up once under the cache directory
(``--cache``, default /var/cache/cloudlet-bench): a private venv and packages
fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (nothing is
installed on the host). No guest gets a network: the floors and vng use none,
cloudlet run uses its default ``--net none``.

    .venv/bin/python bench/run.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import cloudlet_env

TIMEOUT = 300.0
POWEROFF_APPEND = "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- poweroff -f"
UDEVD_PATHS = ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")


class Unavailable(Exception):
    """A row that cannot be measured here; the message is printed in its place."""


# --------------------------------------------------------------------- set-up
def tiny_boot_files(home: Path) -> tuple[Path, Path]:
    """The tiny image's kernel and initramfs, as cloudlet run resolves them."""
    from cloudlet.config import Settings
    from cloudlet.engine.factory import open_engine

    image = open_engine(Settings.load(home)).deps.images.get("tiny", arch=None)
    if image.kernel is None or image.initrd is None:
        raise SystemExit("the tiny image has no kernel/initrd to boot directly")
    return Path(image.kernel), Path(image.initrd)


def _quiet(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise Unavailable(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {tail[0]}")
    return proc


def _unpack_deb(cache: Path, package: str, dest: Path) -> None:
    """``apt-get download`` PACKAGE into CACHE and unpack it into DEST, once."""
    if dest.exists():
        return
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        _quiet(["apt-get", "download", package], cwd=cache)
        debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        raise Unavailable(f"apt-get download {package} left no .deb in {cache}")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _quiet(["dpkg-deb", "-x", str(debs[-1]), str(partial)])
    partial.rename(dest)


def generic_kernel(cache: Path) -> Path:
    """Debian's generic kernel image, unpacked with its modules next to it."""
    depends = _quiet(["apt-cache", "depends", "linux-image-amd64"]).stdout
    concrete = [
        line.split(":", 1)[1].strip()
        for line in depends.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if not concrete:
        raise Unavailable("apt-cache depends linux-image-amd64 names no concrete kernel package")
    package = concrete[0]  # e.g. linux-image-6.1.0-56-amd64
    root = cache / package
    _unpack_deb(cache, package, root)
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if not kernels:
        raise Unavailable(f"{package} holds no boot/vmlinuz-*")
    return kernels[-1]


def vng_setup(cache: Path) -> tuple[list[str], dict[str, str]]:
    """The vng command prefix and its environment; installs what is missing."""
    venv = cache / "vng-venv"
    vng = venv / "bin" / "vng"
    if not vng.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _quiet(["python3", "-m", "venv", str(venv)])
        _quiet([str(venv / "bin" / "pip"), "install", "--quiet", "virtme-ng"])
    # vng runs depmod and `modprobe --show-depends` on the host: kmod, unpacked here.
    _unpack_deb(cache, "kmod", cache / "kmod")
    tools = cache / "tools"
    tools.mkdir(exist_ok=True)
    for name in ("depmod", "modprobe"):
        link = tools / name
        if not link.exists():
            link.symlink_to(cache / "kmod" / "bin" / "kmod")
    # vng calls virtme-run by name: the venv's bin must be on PATH.
    path = f"{venv / 'bin'}:{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    version = _quiet([str(vng), "--version"], env={**os.environ, "PATH": path}).stdout.strip()
    print(f"virtme-ng: {version} ({vng})", flush=True)
    return [str(vng)], {**os.environ, "PATH": path}


# ----------------------------------------------------------------- the rows
def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall time, exit code and stderr of one command (stdin empty, stdout dropped)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{Path(argv[0]).name} did not finish within {TIMEOUT:.0f} s") from None
    elapsed = time.monotonic() - started
    return elapsed, proc.returncode, proc.stderr.decode(errors="replace").strip()


def floor(kernel: Path, initrd: Path) -> Callable[[], float]:
    argv = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "512M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "null",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", POWEROFF_APPEND,
    ]  # fmt: skip

    def measure() -> float:
        elapsed, code, stderr = timed(argv)
        if code != 0:
            raise Unavailable(f"bare QEMU exited {code}: {stderr.splitlines()[-1:]}")
        return elapsed

    return measure


def cloudlet_cli(home: Path) -> Callable[[], float]:
    env = cloudlet_env(home)
    argv = [sys.executable, "-m", "cloudlet", "run", "tiny", "--", "true"]

    def measure() -> float:
        elapsed, code, stderr = timed(argv, env)
        if code != 0:
            raise Unavailable(f"cloudlet run exited {code}: {stderr.splitlines()[-1:]}")
        return elapsed

    return measure


def engine_worker(home: Path) -> None:
    """``--engine-worker HOME``: one engine.run() of ``true`` per line read on stdin,
    each answered with its wall time (or ``ERR why``) on stdout.

    A separate, long-lived process: each run's watcher (a cloudlet process that
    cleans up once the run's owner process has ended) then fires when this worker
    ends, before the state dir is removed, not after the benchmark itself is gone.
    """
    from cloudlet.config import Settings
    from cloudlet.engine.factory import open_engine
    from cloudlet.process.relay import Outcome, Relay
    from cloudlet.spec.process import ProcessSpec

    os.environ["CLOUDLET_FORCE_RESTRICT_NETWORK"] = "1"
    devnull = os.open(os.devnull, os.O_WRONLY)
    spec = ProcessSpec(image="tiny", argv=("true",), workdir="/")

    def attach(vm: Any) -> Outcome:
        relay = Relay(vm.conns, stdin_fd=None, stdout_fd=devnull, stderr_fd=devnull, tty=False)
        return relay.run(None)

    for _ in sys.stdin:
        try:
            engine = open_engine(Settings.load(home))
            started = time.monotonic()
            outcome = engine.run(spec, attach)
            elapsed = time.monotonic() - started
            if outcome.exit_code == 0:
                print(f"{elapsed:.6f}", flush=True)
            else:
                print(f"ERR engine.run() gave {outcome.exit_code}: {outcome.failure}", flush=True)
        except Exception as why:  # reported in the row; the worker goes on
            print(f"ERR {type(why).__name__}: {why}".replace("\n", " "), flush=True)


def cloudlet_engine(home: Path, workers: list[subprocess.Popen[str]]) -> Callable[[], float]:
    """The same run through the engine API in an already started, already imported
    Python process: what a resident server would pay, without interpreter start-up."""
    worker = subprocess.Popen(
        [sys.executable, __file__, "--engine-worker", str(home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    workers.append(worker)

    def measure() -> float:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
        answer = worker.stdout.readline().strip()
        if not answer:
            raise Unavailable(f"the engine worker ended (exit {worker.poll()})")
        if answer.startswith("ERR "):
            raise Unavailable(answer[4:])
        return float(answer)

    return measure


def virtme_ng(cache: Path, kernel: Path, notes: list[str]) -> Callable[[], float]:
    prefix, env = vng_setup(cache)
    argv = [*prefix, "-r", str(kernel), "--disable-kvm", "--", "true"]
    no_udevd = not any(Path(p).exists() for p in UDEVD_PATHS) and not shutil.which("udevd")

    def measure() -> float:
        elapsed, code, stderr = timed(argv, env)
        if code == 255 and no_udevd and not stderr:
            # Known here: without udevd in the guest (the guest's root is this host's,
            # which has none) /dev/virtio-ports/* never appear, so virtme-ng-init runs
            # the command on the console and cannot report its exit code: vng exits 255
            # after a complete boot, run and power-off.
            note = (
                "vng exited 255 in these rounds: this host has no systemd-udevd, so "
                "virtme-ng-init finds no virtio-ports, runs `true` over the console and "
                "cannot hand back its exit code (the boot, run and power-off are complete)"
            )
            if note not in notes:
                notes.append(note)
            return elapsed
        if code != 0:
            raise Unavailable(f"vng exited {code}: {stderr.splitlines()[-1:]}")
        return elapsed

    return measure


def watchers_of(home: Path) -> list[int]:
    """Pids of the cloudlet watchers our runs started for this state dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cloudlet.engine.run_watcher" in argv and str(home).encode() in argv:
            found.append(int(proc.name))
    return found


def cleanup(home: Path, workers: list[subprocess.Popen[str]]) -> None:
    """End the engine worker, let the runs' watchers finish, delete any VM a failed or
    timed-out round left, then remove the private state dir."""
    for worker in workers:
        if worker.stdin is not None:
            worker.stdin.close()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    env = {**os.environ, "CLOUDLET_HOME": str(home)}
    base = [sys.executable, "-m", "cloudlet"]
    deadline = time.monotonic() + 60
    while watchers_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    listed = subprocess.run([*base, "list", "-o", "json"], env=env, capture_output=True, text=True)
    try:
        names = [vm["name"] for vm in json.loads(listed.stdout or "[]")]
    except (ValueError, TypeError, KeyError):
        names = []
    if names:
        print(f"deleting left-over VMs: {' '.join(names)}", flush=True)
        subprocess.run([*base, "delete", "--force", *names], env=env, capture_output=True)
    if watchers_of(home):
        print(f"warning: cloudlet watchers still running for {home}; left it in place")
        return
    shutil.rmtree(home, ignore_errors=True)


# ----------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("CLOUDLET_BENCH_CACHE", "/var/cache/cloudlet-bench")),
        help="where virtme-ng's venv and the generic kernel are kept",
    )
    parser.add_argument("--no-vng", action="store_true", help="skip virtme-ng and its floor")
    parser.add_argument("--engine-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_worker is not None:
        engine_worker(args.engine_worker)
        return
    begun = time.monotonic()
    args.cache.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="cl-bench-run-", dir="/tmp"))
    workers: list[subprocess.Popen[str]] = []
    shared = Path(os.environ.get("CLOUDLET_TEST_CACHE", "/var/cache/cloudlet-test"), "state")
    try:
        if (shared / "images").exists():
            (home / "images").symlink_to(shared / "images")
            (home / "cache").symlink_to(shared / "cache")
        # Reuse the KVM verdict: it is keyed by boot id, kernel and QEMU version, so a
        # stale copy is simply probed again (below, before any timing).
        if (shared / "host" / "accel.json").exists():
            (home / "host").mkdir()
            shutil.copy2(shared / "host" / "accel.json", home / "host" / "accel.json")
        env = {**os.environ, "CLOUDLET_HOME": str(home)}
        host = subprocess.run(
            [sys.executable, "-m", "cloudlet", "host", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if host.returncode != 0:
            raise SystemExit(f"cloudlet host failed ({host.returncode}): {host.stderr.strip()}")
        accel = json.loads(host.stdout)["accel"]
        kernel, initrd = tiny_boot_files(home)

        notes: list[str] = []
        rows: list[tuple[str, Callable[[], float] | None, str]] = []

        def add(label: str, make: Callable[[], Callable[[], float]]) -> None:
            try:
                rows.append((label, make(), ""))
            except Unavailable as why:
                rows.append((label, None, str(why)))
            except Exception as why:  # a broken row must not hide the others
                rows.append((label, None, f"{type(why).__name__}: {why}"))

        add("bare QEMU boot+poweroff (floor)", lambda: floor(kernel, initrd))
        add("cloudlet run tiny -- true", lambda: cloudlet_cli(home))
        add("engine.run() in-process", lambda: cloudlet_engine(home, workers))
        if args.no_vng:
            rows.append(("virtme-ng (generic kernel) true", None, "skipped (--no-vng)"))
        else:
            generic: list[Path] = []

            def generic_floor() -> Callable[[], float]:
                generic.append(generic_kernel(args.cache))
                return floor(generic[0], initrd)

            def vng_row() -> Callable[[], float]:
                if not generic:
                    raise Unavailable("no generic kernel (see the row above)")
                return virtme_ng(args.cache, generic[0], notes)

            add("bare QEMU, generic kernel (floor)", generic_floor)
            add("virtme-ng (generic kernel) true", vng_row)

        times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        failed: dict[str, str] = {label: why for label, _, why in rows if why}
        print(f"tiny kernel: {kernel}\naccelerator: {accel}", flush=True)
        for n in range(args.rounds):
            parts = []
            for label, measure, _ in rows:
                if measure is None or label in failed:
                    continue
                try:
                    times[label].append(measure())
                    parts.append(f"{label.split(' (')[0]} {times[label][-1]:.2f} s")
                except Unavailable as why:
                    failed[label] = str(why)
                    parts.append(f"{label}: FAILED")
            print(f"round {n + 1}: " + "   ".join(parts), flush=True)

        base_label = rows[0][0]
        base = statistics.median(times[base_label]) if times[base_label] else None
        print(f"\ncloudlet run tiny -- true   ({accel.upper()}, {args.rounds} rounds)")
        print(f"{'':36}{'median':>9}{'min':>9}{'max':>9}{'vs floor':>10}")
        for label, _, _ in rows:
            got = times[label]
            if label in failed or not got:
                print(f"{label:36}  n/a: {failed.get(label, 'no rounds')}")
                continue
            med = statistics.median(got)
            ratio = f"{med / base:>10.2f}" if base else f"{'n/a':>10}"
            print(f"{label:36}{med:>7.2f} s{min(got):>7.2f} s{max(got):>7.2f} s{ratio}")
        generic_label = "bare QEMU, generic kernel (floor)"
        vng_label = "virtme-ng (generic kernel) true"
        if times.get(generic_label) and times.get(vng_label) and vng_label not in failed:
            speedup = statistics.median(times[vng_label]) / statistics.median(times[generic_label])
            print(f"virtme-ng vs bare QEMU with the same generic kernel: {speedup:.2f}")
        for note in notes:
            print(f"note: {note}")
        print(f"(whole benchmark: {time.monotonic() - begun:.0f} s)")
    finally:
        cleanup(home, workers)


if __name__ == "__main__":
    main()
