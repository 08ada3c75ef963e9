"""Per-call options: how long one call waits for a lock, and the token that cancels it.

One engine serves many threads; a frontend sets these around one call and no other
call (another thread, or a later call in the same thread) sees them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cloudlet.engine import call_options, locks
from cloudlet.engine.engine import Engine
from cloudlet.errors import Busy, InvalidInput
from cloudlet.progress import CancelToken
from cloudlet.spec.document import VMBody
from tests.cancelling import cancelled_soon
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


def held_elsewhere(engine: Engine, name: str) -> threading.Event:
    """Hold VM ``name``'s lock in another thread until the returned event is set."""
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold(engine.paths.locks, name, wait=0):
            taken.set()
            release.wait(30)

    threading.Thread(target=holder, daemon=True).start()
    assert taken.wait(10)
    return release


def test_a_call_that_may_not_wait_fails_at_once_with_busy(engine: Engine) -> None:
    engine.create("vm", VMBody(state="stopped"))
    release = held_elsewhere(engine, "vm")
    try:
        with call_options.per_call(lock_wait=0), pytest.raises(Busy, match="VM vm is busy"):
            engine.start("vm")
    finally:
        release.set()
    assert engine.show("vm").state == "stopped"  # the refused call changed nothing
    assert engine.start("vm").instance.state == "running"  # the option is gone after it


def test_the_calls_token_cancels_its_lock_wait(engine: Engine) -> None:
    engine.create("vm", VMBody(state="stopped"))
    release = held_elsewhere(engine, "vm")
    try:
        with cancelled_soon() as token, call_options.per_call(cancel=token):
            engine.start("vm")
    finally:
        release.set()
    assert engine.show("vm").state == "stopped"


def test_options_belong_to_the_thread_that_set_them() -> None:
    seen: list[call_options.CallOptions] = []
    with call_options.per_call(lock_wait=0):
        thread = threading.Thread(target=lambda: seen.append(call_options.current()))
        thread.start()
        thread.join()
        assert call_options.current().lock_wait == 0
    assert seen == [call_options.CallOptions()]
    assert call_options.current() == call_options.CallOptions()


def test_nested_blocks_replace_only_what_they_name() -> None:
    token, own = CancelToken(), CancelToken()
    with call_options.per_call(lock_wait=5, cancel=token):
        with call_options.per_call(lock_wait=1) as inner:
            assert (inner.lock_wait, inner.cancel) == (1, token)
            assert call_options.cancel_token() is token
            assert call_options.cancel_token(own) is own  # a wait's own token wins
        assert call_options.current().lock_wait == 5
    assert call_options.cancel_token() is None


@pytest.mark.parametrize("seconds", [-1, 86401, float("nan")])
def test_a_lock_wait_out_of_range_is_refused(seconds: float) -> None:
    with (
        pytest.raises(InvalidInput, match="out of range"),
        call_options.per_call(lock_wait=seconds),
    ):
        pass
