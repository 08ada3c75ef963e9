"""The error tree: one module, a unique stable code per class, and exit codes that tell
unrelated errors apart (a subclass may keep its parent's)."""

from __future__ import annotations

import ast
import re
from itertools import combinations
from pathlib import Path

from cloudlet import errors
from cloudlet.errors import Cancelled, CloudletError

SRC = Path(errors.__file__).parent
README = SRC.parents[1] / "README.md"


def _tree() -> list[type[CloudletError]]:
    found: list[type[CloudletError]] = [CloudletError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == "cloudlet.errors"]


def test_every_class_has_its_own_code_and_a_status_and_exit_code() -> None:
    tree = _tree()
    assert len(tree) >= 20
    for cls in tree:
        assert "code" in vars(cls), f"{cls.__name__} inherits its parent's code"
        assert re.fullmatch(r"[a-z][a-z_]+", cls.code), cls
        assert isinstance(cls.http_status, int) and 400 <= cls.http_status <= 599, cls
        # Below 64: 124, 125 and 128+N belong to `cloudlet run` and `exec`; only a
        # cancel exits as an interrupt would (128 + SIGINT).
        assert isinstance(cls.exit_code, int), cls
        assert 1 <= cls.exit_code < 64 or (cls is Cancelled and cls.exit_code == 130), cls
    codes = [cls.code for cls in tree]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def _owner(cls: type[CloudletError]) -> type[CloudletError]:
    """The class that sets ``cls``'s exit code: itself, or the ancestor it inherits it from."""
    return next(c for c in cls.__mro__ if "exit_code" in vars(c))


def test_no_two_unrelated_classes_share_an_exit_code() -> None:
    """Two classes may share an exit code only by inheriting it from one class."""
    for a, b in combinations(_tree(), 2):
        if a.exit_code == b.exit_code:
            assert _owner(a) is _owner(b), f"{a.__name__} and {b.__name__} share {a.exit_code}"


def test_only_the_root_exits_with_1() -> None:
    """A kind of error a user meets says which kind it is; 1 is for the unexpected."""
    for cls in CloudletError.__subclasses__():
        assert "exit_code" in vars(cls) and cls.exit_code != 1, cls.__name__


def test_no_error_class_is_defined_outside_errors_py() -> None:
    names = {cls.__name__ for cls in _tree()}
    stray = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if bases & names:
                    stray.append(f"{path.relative_to(SRC)}: {node.name}")
    assert not stray, stray


def test_readme_lists_every_exit_code() -> None:
    table = dict(re.findall(r"^\| (\d+) \| (\w+) \|", README.read_text(), re.MULTILINE))
    roots = {cls.exit_code: cls.code for cls in _tree() if "exit_code" in vars(cls)}
    assert table == {str(k): v for k, v in roots.items()}


def test_known_codes_are_stable() -> None:
    """Scripts branch on these: changing one is a breaking change, so on purpose only."""
    assert {cls.__name__: (cls.code, cls.exit_code) for cls in _tree()} == {
        "CloudletError": ("internal", 1),
        "InvalidInput": ("invalid_input", 2),
        "LimitExceeded": ("limit_exceeded", 2),
        "ManifestRefused": ("backup_manifest_refused", 2),
        "EntryRefused": ("guest_entry_refused", 2),
        "IdempotencyKeyReused": ("idempotency_key_reused", 2),
        "NotFound": ("not_found", 3),
        "ImageNotFound": ("image_not_found", 3),
        "Conflict": ("conflict", 4),
        "StillRunning": ("still_running", 4),
        "RuntimeRecordUnknown": ("runtime_record_unknown", 4),
        "PreconditionFailed": ("precondition_failed", 4),
        "CapacityExceeded": ("capacity_exceeded", 5),
        "OutOfSpace": ("out_of_space", 5),
        "Busy": ("busy", 6),
        "GuestError": ("guest_error", 7),
        "Timeout": ("timeout", 8),
        "DownloadInterrupted": ("download_interrupted", 8),
        "HostCommandError": ("host_command_failed", 9),
        "MissingDependency": ("missing_dependency", 10),
        "MonitorError": ("monitor_error", 11),
        "NeedsRoot": ("needs_root", 12),
        "StoreCorrupt": ("backup_corrupt", 13),
        "BackupsCorrupt": ("backup_verify_failed", 13),
        "DownloadFailed": ("download_failed", 14),
        "Unauthorized": ("unauthorized", 15),
        "Cancelled": ("cancelled", 130),
    }
