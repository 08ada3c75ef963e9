"""Cleans up after a `cloudlet run` that was killed before it could do so itself.

Started by the run in its own session (so the terminal's Ctrl-C does not reach
it), it waits for the run's process to end, then opens the engine, whose recovery
removes every process VM whose command is gone. When the run ended normally (its
VM's directory is gone) there is nothing left to do and it exits at once, without
opening the engine: that would recreate a state directory removed in the meantime.

An entry point of the engine's own (process/ only knows how to wait for a process),
so no lower layer imports the engine back.

Usage: python -m cloudlet.engine.run_watcher HOME OWNER_PID OWNER_START INSTANCE_ID
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloudlet.process.watcher import wait_for_exit


def main(argv: list[str]) -> int:
    home, pid, start, instance_id = Path(argv[0]), int(argv[1]), int(argv[2]) or None, argv[3]
    wait_for_exit(pid, start)
    from cloudlet.config import Settings

    settings = Settings.load(home)
    if not settings.paths.instance_dir(instance_id).exists():
        return 0  # the run removed its VM itself (or the state directory went away)
    from cloudlet.engine.factory import open_engine

    open_engine(settings, recover=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
