"""processes.wait_gone: woken when the process ends (a pidfd), reaping our own child;
False when the process outlives the timeout."""

from __future__ import annotations

import os
import threading

from cloudlet.host import processes


def test_wait_gone_returns_once_the_process_ends_and_reaps_it() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: blocks until the parent closes the pipe, then ends
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    start = processes.start_time(pid)
    assert start is not None
    threading.Timer(0.2, os.close, (write_end,)).start()
    assert processes.wait_gone(pid, 60.0, start)
    assert not processes.is_alive(pid, start)
    try:
        os.waitpid(pid, os.WNOHANG)
        reaped = False
    except ChildProcessError:
        reaped = True
    assert reaped


def test_wait_gone_gives_up_on_a_process_that_runs_on() -> None:
    me = os.getpid()
    assert not processes.wait_gone(me, 0.1, processes.start_time(me))


def test_wait_gone_on_a_pid_that_is_another_process_now() -> None:
    me = os.getpid()
    start = processes.start_time(me)
    assert start is not None
    assert processes.wait_gone(me, 5.0, start + 1)  # same pid, not the same process
