"""Create, start and restart report their phases, and a cancel leaves nothing half-made
(fake driver: a hung guest blocks the waits until the token is cancelled)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

from cloudlet.cli import progress as cli_progress
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.errors import Cancelled
from cloudlet.progress import CancelToken, ProgressEvent
from cloudlet.spec.document import AccessDoc, VMBody
from tests.cancelling import REASON, cancelled_soon
from tests.fakes import make_fake_engine

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",)


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


def _driver(engine: Engine) -> FakeDriver:
    driver = engine.driver
    assert isinstance(driver, FakeDriver)
    return driver


class Recorder:
    """A sink that keeps the stages and can act when one begins (hang the guest, say)."""

    def __init__(self, on: dict[str, Callable[[], None]] | None = None) -> None:
        self.stages: list[str] = []
        self.on = on or {}

    def __call__(self, event: ProgressEvent) -> None:
        self.stages.append(event.stage)
        if event.stage in self.on:
            self.on[event.stage]()


def _hang_the_only_vm(engine: Engine) -> Callable[[], None]:
    def hang() -> None:
        driver = _driver(engine)
        (instance_id,) = [i for i, vm in driver.vms.items() if vm.alive]
        driver.hang(instance_id)

    return hang


@contextmanager
def cancelled_once_hung(engine: Engine, stage: str) -> Iterator[tuple[CancelToken, Recorder]]:
    """A token cancelled just after ``stage`` begins and the guest hangs there (not at a
    fixed time from the start, which a slow machine may not have reached); the block
    must raise Cancelled."""
    token = CancelToken()

    def hang_then_cancel() -> None:
        _hang_the_only_vm(engine)()
        threading.Timer(0.1, token.cancel, args=(REASON,)).start()

    with pytest.raises(Cancelled, match=REASON):
        yield token, Recorder({stage: hang_then_cancel})


def test_create_start_and_restart_report_their_phases_in_order(engine: Engine) -> None:
    sink = Recorder()
    engine.create("web1", VMBody(), progress=sink)
    assert sink.stages == ["disk", "boot", "agent"]
    sink = Recorder()
    engine.create("web2", VMBody(wait="none"), progress=sink)
    assert sink.stages == ["disk", "boot"]
    engine.stop("web1", force=True)
    sink = Recorder()
    engine.start("web1", progress=sink)
    assert sink.stages == ["boot", "agent"]
    sink = Recorder()
    engine.restart("web1", force=True, progress=sink)
    assert sink.stages == ["stop", "boot", "agent"]


def _nothing_left(engine: Engine, name: str) -> None:
    assert engine.instances(include_process=True) == []
    assert list(engine.paths.instances.iterdir()) == []
    assert not any(vm.alive for vm in _driver(engine).vms.values())
    engine.create(name, VMBody())  # the name and its lock are free again
    assert engine.show(name).state == "running"


def test_a_create_cancelled_while_the_agent_hangs_leaves_no_vm(engine: Engine) -> None:
    with cancelled_once_hung(engine, "agent") as (token, sink):
        engine.create("web1", VMBody(), progress=sink, cancel=token)
    assert sink.stages == ["disk", "boot", "agent"]
    _nothing_left(engine, "web1")


def test_a_create_cancelled_while_cloud_init_runs_leaves_no_vm(engine: Engine) -> None:
    body = VMBody(image="cloudy", access=AccessDoc(ssh_keys=list(KEY)), wait="cloud-init")
    with cancelled_once_hung(engine, "cloud-init") as (token, sink):
        engine.create("db1", body, progress=sink, cancel=token)
    assert sink.stages == ["disk", "boot", "agent", "cloud-init"]
    _nothing_left(engine, "db1")


def test_a_create_cancelled_before_it_began_makes_nothing(engine: Engine) -> None:
    token = CancelToken()
    token.cancel("the client went away")
    with pytest.raises(Exception, match="the client went away"):
        engine.create("web1", VMBody(), cancel=token)
    _nothing_left(engine, "web1")


def test_a_cancelled_start_leaves_the_vm_stopped_and_startable(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    with cancelled_once_hung(engine, "agent") as (token, sink):
        engine.start("web1", progress=sink, cancel=token)
    vm = engine.show("web1")
    assert (vm.state, vm.last_error, vm.pid) == ("stopped", None, None)
    assert not any(v.alive for v in _driver(engine).vms.values())
    assert engine.start("web1").instance.state == "running"


def test_a_start_waiting_for_the_vm_lock_is_cancelled_without_taking_it(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with engine.ctx.lock("web1"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        holding.wait(10)
        with cancelled_soon(0.3) as token:
            engine.start("web1", cancel=token)
    finally:
        release.set()
        thread.join()
    assert engine.show("web1").state == "stopped"


def test_the_status_line_shows_the_phase_and_the_seconds() -> None:
    now = [100.0]
    line = cli_progress.PhaseLine("creating web1", clock=lambda: now[0])
    assert line.text() == "creating web1 (0 s)"
    line.event = ProgressEvent("boot")
    now[0] = 112.2
    assert line.text() == "creating web1: boot (12 s)"
    line.event = ProgressEvent("downloading", 30, 200)
    assert line.text() == "creating web1: downloading 15% (12 s)"


def test_the_status_line_is_drawn_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for terminal in (True, False):
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=terminal, width=80)
        monkeypatch.setattr(cli_progress, "err", console)
        with cli_progress.phases("creating web1") as sink:
            sink(ProgressEvent("boot"))
            sink(ProgressEvent("agent"))
        text = buffer.getvalue()
        if terminal:
            assert "creating web1: boot (0 s)" in text and "creating web1: agent (" in text
        else:
            assert text == ""


def test_the_calls_own_token_cancels_a_create_too(engine: Engine) -> None:
    from cloudlet.engine import call_options

    with (
        cancelled_once_hung(engine, "agent") as (token, sink),
        call_options.per_call(cancel=token),
    ):
        engine.create("web1", VMBody(), progress=sink)
    assert sink.stages == ["disk", "boot", "agent"]
    _nothing_left(engine, "web1")
