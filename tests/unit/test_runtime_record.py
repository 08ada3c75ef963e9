"""The runtime record's reader: the previous format (no version) is adopted, the current
one round-trips, a newer one is refused and never guessed at (nothing is stopped,
killed or cleared), a damaged one reads as no record."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudlet.driver.base import RuntimeInfo
from cloudlet.driver.qemu import driver as qemu_driver
from cloudlet.driver.qemu.driver import QemuDriver
from cloudlet.driver.qemu.runtime import RECORD_NAME, RECORD_VERSION, read_record, write_record
from cloudlet.errors import RuntimeRecordUnknown
from cloudlet.host import processes


def info(run_dir: Path, **changes: Any) -> RuntimeInfo:
    fields: dict[str, Any] = {
        "instance_id": run_dir.name,
        "pid": os.getpid(),
        "pid_start": processes.start_time(os.getpid()) or 0,
        "argv": ["qemu-system-x86_64", "-name", "web1"],
        "qemu_version": "7.2.0",
        "qmp_socket": run_dir / "qmp.sock",
        "agent_socket": run_dir / "qga.sock",
        "console_socket": run_dir / "console.sock",
        "serial_log": run_dir.parent / "serial.log",
        "started_at": 1764576000.5,
        "accel": "tcg",
        "net_helper_pid": None,
        "net_helper_start": None,
    }
    fields.update(changes)
    return RuntimeInfo(**fields)


def write_previous_format(run_dir: Path, record: RuntimeInfo) -> None:
    """Exactly what write_record wrote before records had a version (format 1)."""
    data = asdict(record)
    for key, value in data.items():
        if isinstance(value, Path):
            data[key] = str(value)
    (run_dir / RECORD_NAME).write_text(json.dumps(data, indent=2))


def raw(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / RECORD_NAME).read_text())
    return data


@pytest.fixture
def run_dir(short_tmp: Path) -> Path:
    path = short_tmp / "run" / "0f3e2a51-vm"
    path.mkdir(parents=True)
    return path


def test_the_current_format_carries_its_version_and_round_trips(run_dir: Path) -> None:
    record = info(run_dir, net_helper_pid=12, net_helper_start=34)
    write_record(run_dir, record)
    assert raw(run_dir)["version"] == RECORD_VERSION == 2
    assert read_record(run_dir) == record


def test_the_previous_format_without_a_version_is_adopted(run_dir: Path) -> None:
    record = info(run_dir)
    write_previous_format(run_dir, record)
    assert "version" not in raw(run_dir)
    assert read_record(run_dir) == record
    # a format-1 record of a VM without a network helper (older still: no helper fields)
    data = raw(run_dir)
    del data["net_helper_pid"], data["net_helper_start"]
    (run_dir / RECORD_NAME).write_text(json.dumps(data))
    assert read_record(run_dir) == record
    # and version 1 said out loud is the same format
    (run_dir / RECORD_NAME).write_text(json.dumps({**data, "version": 1}))
    assert read_record(run_dir) == record


def test_a_newer_format_is_refused_in_one_line_that_says_what_to_do(run_dir: Path) -> None:
    write_record(run_dir, info(run_dir))
    data = raw(run_dir)
    (run_dir / RECORD_NAME).write_text(json.dumps({**data, "version": 3, "pid": "renamed"}))
    with pytest.raises(RuntimeRecordUnknown) as caught:
        read_record(run_dir)
    line = caught.value.one_line()
    assert "\n" not in line
    assert run_dir.name in line and "format 3" in line and "left as it is" in line
    assert "newer cloudlet" in line and "upgrade" in line
    assert caught.value.exit_code == 4 and caught.value.http_status == 409


def test_a_newer_record_is_never_stopped_killed_or_cleared(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver refuses every step that could end or forget the VM: the record names a
    live process (this test's own), which must survive."""
    write_record(run_dir, info(run_dir))
    (run_dir / RECORD_NAME).write_text(json.dumps({**raw(run_dir), "version": 99}))
    (run_dir / "qmp.sock").write_text("")
    touched: list[str] = []
    monkeypatch.setattr(qemu_driver.processes, "kill_and_wait", lambda *a: touched.append("kill"))
    monkeypatch.setattr(qemu_driver.qmp, "execute", lambda *a, **k: touched.append("qmp"))
    driver = QemuDriver(run_dir.parent)
    vm = run_dir.name
    for step in (
        lambda: driver.power_state(vm),
        lambda: driver.runtime(vm),
        lambda: driver.force_stop(vm),
        lambda: driver.cleanup(vm),
        lambda: driver.request_shutdown(vm),
        lambda: driver.pause(vm),
    ):
        with pytest.raises(RuntimeRecordUnknown):
            step()
    assert touched == []
    assert sorted(p.name for p in run_dir.iterdir()) == ["qmp.sock", RECORD_NAME]
    assert raw(run_dir)["version"] == 99


@pytest.mark.parametrize(
    "change",
    [
        {"version": 0},
        {"version": -1},
        {"version": "2"},
        {"version": True},
        {"version": 2.0},
        {"pid": "12"},
        {"pid": True},
        {"pid": 0},
        {"argv": "qemu -name x"},
        {"argv": ["qemu", 3]},
        {"qmp_socket": "relative/qmp.sock"},
        {"qmp_socket": 5},
        {"serial_log": "/a\u0000b"},
        {"started_at": "yesterday"},
        {"net_helper_pid": "1"},
        {"unexpected": 1},
    ],
)
def test_a_damaged_record_reads_as_none(run_dir: Path, change: dict[str, Any]) -> None:
    write_record(run_dir, info(run_dir))
    (run_dir / RECORD_NAME).write_text(json.dumps({**raw(run_dir), **change}))
    assert read_record(run_dir) is None


@pytest.mark.parametrize("text", ["", "{", "[]", "null", "3", '"record"', "\x00\xff"])
def test_a_record_that_is_not_a_json_object_reads_as_none(run_dir: Path, text: str) -> None:
    (run_dir / RECORD_NAME).write_text(text, errors="surrogateescape")
    assert read_record(run_dir) is None


def test_a_missing_field_reads_as_none(run_dir: Path) -> None:
    write_record(run_dir, info(run_dir))
    data = raw(run_dir)
    del data["qmp_socket"]
    (run_dir / RECORD_NAME).write_text(json.dumps(data))
    assert read_record(run_dir) is None


def test_no_record_is_none(run_dir: Path) -> None:
    assert read_record(run_dir) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.dictionaries(st.sampled_from([*asdict(info(Path("/r/x"))), "version", "x"]), _json)
)
def test_any_record_reads_as_a_record_none_or_a_one_line_refusal(
    run_dir: Path, changes: dict[str, Any]
) -> None:
    write_record(run_dir, info(run_dir))
    (run_dir / RECORD_NAME).write_text(json.dumps({**raw(run_dir), **changes}))
    try:
        got = read_record(run_dir)
    except RuntimeRecordUnknown as error:  # anything else (a traceback) fails the test
        assert "\n" not in error.one_line()
    else:
        assert got is None or isinstance(got, RuntimeInfo)
