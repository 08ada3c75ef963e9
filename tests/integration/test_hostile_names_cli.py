"""The issue's hostile names through the installed CLI (a subprocess, the real engine):
exit 2, one line on stderr, nothing changed in the state directory or beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration import cli
from tests.tree_hash import tree_hash

pytestmark = pytest.mark.integration

# What the issue found, and the rest of the table's values (NUL cannot be in an argv).
HOSTILE = ["..", ".", "a/b", "/etc", "x\n", "a" * 300, "é", "-oProxyCommand=x"]
COMMANDS = {
    "image delete": ["image", "delete", "--"],
    "create": ["create", "--no-start", "--"],
    "create --image": ["create", "--no-start", "--image"],  # value, then "--", "ok1"
    "firewall group create": ["firewall", "group", "create", "--"],
    "volume delete": ["volume", "delete", "--"],
    "snapshot create": ["snapshot", "create", "--", "web1"],
    "ssh": ["ssh", "--"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_names_through_the_real_cli(short_tmp: Path, command: str) -> None:
    home, canary = short_tmp / "home", short_tmp / "canary"
    canary.mkdir()
    (canary / "file").write_text("canary\n")
    cli.run(home, "list")  # the state directory and database exist from here on
    version = home / "images" / "seed" / "v1"  # an imported image that 'delete ..' would take
    version.mkdir(parents=True)
    (version / "image.json").write_text(json.dumps({"name": "seed", "disk": "disk.qcow2"}))
    (home / "images" / "seed" / "current").symlink_to("v1")
    before = (tree_hash(home), tree_hash(canary))
    for value in HOSTILE:
        args = [*COMMANDS[command], value]
        if command == "create --image":
            args += ["--", "ok1"]
        proc = cli.run(home, *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == "" and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: invalid "), (args, proc.stderr)
        assert (tree_hash(home), tree_hash(canary)) == before, args
