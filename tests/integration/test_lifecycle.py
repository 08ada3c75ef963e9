"""The VM lifecycle on real QEMU (TCG here), driven through the real CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from cloudlet.driver.qemu.runtime import read_record
from cloudlet.host import processes
from tests.integration import cli

pytestmark = pytest.mark.integration


def runtime(home: Path, vm: dict[str, object]):  # type: ignore[no-untyped-def]
    return read_record(home / "run" / str(vm["id"]))


def test_create_exec_sees_shape_and_vm_outlives_cli(cloudlet_home: Path) -> None:
    home = cloudlet_home
    created = cli.run_json(home, "create", "web1", "--cpus", "2", "--memory", "768M")
    assert created["state"] == "running"
    # The CLI that started it has exited; QEMU still runs, and a new process re-adopts it.
    info = runtime(home, created)
    assert info is not None and processes.is_alive(info.pid, info.pid_start)
    listed = cli.run_json(home, "list")
    assert [(v["name"], v["state"], v["cpus"]) for v in listed] == [("web1", "running", 2)]
    assert cli.run(home, "exec", "web1", "--", "nproc").stdout.strip() == "2"
    meminfo = cli.run(home, "exec", "web1", "--", "cat", "/proc/meminfo").stdout
    mem_kib = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1))  # type: ignore[union-attr]
    assert 600 * 1024 < mem_kib <= 768 * 1024
    # output and exit code of the program come back as they are
    proc = cli.run(
        home, "exec", "web1", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
    assert "cloudlet tiny: ready" in cli.run(home, "logs", "web1").stdout
    shown = cli.run_json(home, "show", "web1")
    assert shown["accel"] in ("kvm", "tcg") and shown["network"]["restrict"] is True
    assert info.argv.count("-netdev") == 1
    assert "restrict=on" in info.argv[info.argv.index("-netdev") + 1]  # forced in tests


def test_pause_freezes_the_guest_clock(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "clock", "--type", "gp.micro")
    host_before = time.time()
    before = int(cli.run(home, "exec", "clock", "--", "date", "+%s").stdout)
    cli.run(home, "pause", "clock")
    assert cli.run_json(home, "show", "clock")["state"] == "paused"
    paused = cli.run(home, "exec", "clock", "--", "true", check=False)
    assert paused.returncode == 4 and "it is paused" in paused.stderr
    time.sleep(6)
    cli.run(home, "resume", "clock")
    after = int(cli.run(home, "exec", "clock", "--", "date", "+%s").stdout)
    host_elapsed = time.time() - host_before
    # The guest's clock stood still for (at least) the 6 s pause; the CLI calls around
    # it take longer on a loaded host, so compare with the host's own elapsed time.
    assert after - before <= host_elapsed - 5, (before, after, host_elapsed)


def test_graceful_stop_then_start_and_restart(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "g1", "--type", "gp.micro")
    pid = runtime(home, vm).pid
    stop = cli.run(home, "stop", "g1")
    assert "stopped" in stop.stderr and "forced" not in stop.stderr
    assert not processes.is_alive(pid)
    assert "Power down" in cli.run(home, "logs", "g1").stdout
    again = cli.run(home, "stop", "g1")
    assert "already stopped" in again.stderr
    cli.run(home, "start", "g1")
    assert cli.run(home, "exec", "g1", "--", "true").returncode == 0
    old = runtime(home, vm).pid
    cli.run(home, "restart", "g1")
    assert runtime(home, vm).pid != old
    assert cli.run(home, "exec", "g1", "--", "hostname").stdout.strip() == "g1"


def test_forced_stop_of_a_guest_that_ignores_acpi(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "deaf", "--type", "gp.micro")
    cli.run(home, "exec", "deaf", "--", "rm", "/etc/acpi/PWRF/00000080")
    pid = runtime(home, vm).pid
    started = time.monotonic()
    stop = cli.run(home, "stop", "deaf", "--timeout", "5")
    assert "forced" in stop.stderr
    assert time.monotonic() - started < 30
    assert not processes.is_alive(pid)
    assert cli.run_json(home, "show", "deaf")["state"] == "stopped"


def test_force_flag_stops_at_once(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "quick", "--type", "gp.micro")
    pid = runtime(home, vm).pid
    cli.run(home, "stop", "quick", "--force")
    assert not processes.is_alive(pid)


def test_delete_leaves_nothing(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "gone", "--type", "gp.micro")
    info = runtime(home, vm)
    instance_dir = home / "instances" / vm["id"]
    assert (instance_dir / "disk.qcow2").exists() and info.qmp_socket.exists()
    # running: refused in one line without --force (stdin is no terminal), nothing touched
    refused = cli.run(home, "delete", "gone", check=False)
    assert refused.returncode == 4 and refused.stdout == ""
    assert refused.stderr == (
        "error: gone is running: 'cloudlet stop gone' first, or 'cloudlet delete --force gone'\n"
    )
    assert processes.is_alive(info.pid) and runtime(home, vm).pid == info.pid
    (listed,) = cli.run_json(home, "list")
    assert listed["state"] == "running" and listed["addresses"] == {"nat": "10.0.2.15"}
    assert "10.0.2.15 (nat)" in cli.run(home, "list").stdout
    assert (instance_dir / "disk.qcow2").exists() and info.qmp_socket.exists()
    cli.run(home, "delete", "--force", "gone")
    assert not processes.is_alive(info.pid)
    assert not instance_dir.exists()
    assert not (home / "run" / vm["id"]).exists()
    assert cli.run_json(home, "list") == []
    with sqlite3.connect(home / "cloudlet.db") as db:
        assert db.execute("select count(*) from instances").fetchone() == (0,)
    missing = cli.run(home, "show", "gone", check=False)
    assert missing.returncode == 3 and "no VM named 'gone'" in missing.stderr


def test_qemu_killed_behind_our_back_is_crashed(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "victim", "--type", "gp.micro")
    info = runtime(home, vm)
    os.kill(info.pid, signal.SIGKILL)  # a QEMU this test's CLI started, by its pid
    processes.wait_gone(info.pid, 10)
    shown = cli.run_json(home, "show", "victim")
    assert shown["state"] == "crashed" and "died" in shown["last_error"]
    cli.run(home, "start", "victim")
    assert cli.run_json(home, "show", "victim")["state"] == "running"


def test_cli_killed_mid_create_is_rolled_back(cloudlet_home: Path) -> None:
    home = cloudlet_home
    proc = cli.spawn(home, "create", "half", "--type", "gp.micro")
    record = None
    deadline = time.monotonic() + 120
    while record is None and time.monotonic() < deadline:
        # kill it while the guest boots: QEMU runs, the create is not finished
        for run_dir in (home / "run").glob("*"):
            record = read_record(run_dir)
        time.sleep(0.05)
    assert record is not None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = cli.run_json(home, "list")  # the next command rolls the create back
    assert listed == []
    assert not processes.is_alive(record.pid, record.pid_start)
    assert not any((home / "instances").iterdir())
    with sqlite3.connect(home / "cloudlet.db") as db:
        assert db.execute("select status from operations where kind='create'").fetchall() == [
            ("rolled_back",)
        ]
    cli.run(home, "create", "half", "--type", "gp.micro")  # the name is free again


def test_two_concurrent_starts_give_one_qemu(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(home, "create", "race", "--type", "gp.micro", "--no-start")
    assert vm["state"] == "stopped"
    first, second = cli.spawn(home, "start", "race"), cli.spawn(home, "start", "race")
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    messages = sorted(err.strip().splitlines()[-1] for _, err in outputs)
    assert messages == ["race is already running", "race is running"]
    assert len(cli.our_processes(vm["id"])) == 1


def test_console_attaches_and_detaches(cloudlet_home: Path) -> None:
    import pexpect

    home = cloudlet_home
    cli.run(home, "create", "con", "--type", "gp.micro")
    child = pexpect.spawn(
        cli.argv("console", "con")[0],
        cli.argv("console", "con")[1:],
        env=cli.env_for(home),
        timeout=60,
    )
    child.expect("detach with Ctrl-]")
    child.sendline("echo hello-$((6*7))")
    child.expect("hello-42")
    child.sendcontrol("]")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert cli.run_json(home, "show", "con")["state"] == "running"


def test_bad_input_gives_one_line_and_changes_nothing(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "taken", "--type", "gp.micro", "--no-start")
    cases = [
        (["create", "Bad_Name"], 2, "invalid VM name"),
        (["create", "taken"], 4, "already exists"),
        (["create", "ok", "--type", "gp.huge"], 3, "unknown machine type"),
        (["create", "ok", "--image", "nosuch"], 3, "unknown image"),
        (["create", "ok", "--cpus", "0"], 2, "invalid vCPU count"),
        (["create", "ok", "--memory", "lots"], 2, "invalid memory"),
        (["create", "ok", "--cpus", "250"], 5, "not enough vCPUs"),
        (["create", "ok", "--memory", "900G"], 5, "not enough memory"),
        (["create", "ok", "--disk-size", "10M"], 2, "smaller than image"),
        (["start", "nosuch"], 3, "no VM named 'nosuch'"),
        (["pause", "taken"], 4, "it is stopped"),
    ]
    for args, code, text in cases:
        proc = cli.run(home, *args, check=False)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and lines[0].startswith("error:"), (args, lines)
    listed = cli.run_json(home, "list")
    assert [(v["name"], v["state"]) for v in listed] == [("taken", "stopped")]
    assert len(list((home / "instances").iterdir())) == 1
    assert not any((home / "run").iterdir())


def test_disk_size_grows_the_overlay(cloudlet_home: Path) -> None:
    home = cloudlet_home
    vm = cli.run_json(
        home, "create", "big", "--type", "gp.micro", "--disk-size", "2G", "--no-start"
    )
    disk = Path(vm["paths"]["disk"])
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(disk)],
            capture_output=True, check=True, text=True,
        ).stdout
    )  # fmt: skip
    assert info["virtual-size"] == 2 * 1024**3 == vm["disk_size"]
    assert info["backing-filename-format"] == "qcow2"
    assert disk.stat().st_size < 1024**2  # thin: an overlay costs almost nothing


def test_host_reports_accelerator_and_capacity(cloudlet_home: Path) -> None:
    home = cloudlet_home
    created = cli.run(home, "create", "cap", "--type", "gp.small")
    host = cli.run_json(home, "host")
    if host["accel"] == "tcg":  # the fallback is said, with its reason, when it happens
        assert "runs under TCG software emulation" in created.stderr
        assert host["accel_reason"] in created.stderr
    assert host["accel"] in ("kvm", "tcg") and host["accel_reason"]
    assert (host["cpus_used"], host["memory_used"]) == (1, 1024**3)
    assert host["cpu_limit"] == 4 * host["host_cpus"]
    assert host["qemu_version"][0].isdigit()
    text = cli.run(home, "host").stdout
    assert host["accel"] in text and "free" in text
