"""`cloudlet cp -r`, `VM:~` paths and `--owner` against a real tiny guest (busybox tar).

One VM is booted for the module in a state directory with lowered copy limits. Trees go
both ways with their checksums; what a hostile guest hands back lands nothing outside
the destination and nothing at all when it is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import cli
from tests.tree_hash import tree_hash

pytestmark = pytest.mark.integration

COPY_MAX_BYTES = 4 * 1024 * 1024
CONFIG = f"""
[guest]
copy_max_bytes = "{COPY_MAX_BYTES // 1024}K"
copy_max_entries = 300
"""
VM = "cpvm"
# The guest's tar, compromised: asked to pack anything, it writes the planted archive.
FAKE_TAR = """#!/bin/sh
[ -e /root/evil.tar ] || exec /usr/bin/busybox tar "$@"
while [ $# -gt 0 ]; do [ "$1" = -f ] && out=$2; shift; done
cat /root/evil.tar > "$out"
"""


@dataclass
class Vm:
    home: Path
    work: Path


@pytest.fixture(scope="module")
def vm(shared_state: Path) -> Iterator[Vm]:
    """The tiny image as VM "cpvm", in a state directory with lowered copy limits."""
    home = Path(tempfile.mkdtemp(prefix="cl-cp-", dir="/tmp"))  # short: unix socket paths
    home.chmod(0o711)
    (home / "images").mkdir()
    (home / "images" / "tiny").symlink_to(shared_state / "images" / "tiny")
    (home / "cache").symlink_to(shared_state / "cache")
    (home / "host").mkdir()
    shutil.copy(shared_state / "host" / "accel.json", home / "host" / "accel.json")
    (home / "config.toml").write_text(CONFIG)
    work = home / "work"
    work.mkdir()
    try:
        cli.run(home, "create", VM, "--memory", "512M")
        yield Vm(home, work)
    finally:
        cli.run(home, "delete", "--force", VM, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _guest(vm: Vm, script: str) -> str:
    return cli.run(vm.home, "exec", VM, "--", "sh", "-c", script).stdout


def _sums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _make_tree(root: Path) -> None:
    (root / "nested dir" / "b" / "c").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "file with spaces.bin").write_bytes(os.urandom(300_000))
    (root / "nested dir" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (root / "nested dir" / "run.sh").write_bytes(b"#!/bin/sh\necho ran\n")
    (root / "nested dir" / "run.sh").chmod(0o750)


def test_a_tree_round_trips_through_the_guest_with_equal_checksums(vm: Vm) -> None:
    src = vm.work / "proj"
    _make_tree(src)
    copied = cli.run(vm.home, "cp", "-r", str(src), f"{VM}:/root/")
    assert "3 files, 5 directories" in copied.stderr, copied.stderr
    want = _sums(src)
    for rel in ("file with spaces.bin", "nested dir/b/c/deep.txt"):
        inside = _guest(vm, f"sha256sum '/root/proj/{rel}'")
        assert inside.split()[0] == want[rel]
    assert _guest(vm, "'/root/proj/nested dir/run.sh'") == "ran\n"
    assert ".cloudlet-part" not in _guest(vm, "ls -a /root /tmp")
    # a second copy to the same place is refused, never merged
    again = cli.run(vm.home, "cp", "-r", str(src), f"{VM}:/root/", check=False)
    assert again.returncode == 2 and "already exists in the guest" in again.stderr
    # without -r a directory gets a hint
    plain = cli.run(vm.home, "cp", str(src), f"{VM}:/root/x", check=False)
    assert plain.returncode == 2 and "-r" in plain.stderr

    back = vm.work / "back"
    back.mkdir()
    out = cli.run(vm.home, "cp", "-r", f"{VM}:/root/proj", str(back))
    assert "3 files, 5 directories" in out.stderr, out.stderr
    assert _sums(back / "proj") == want
    assert (back / "proj" / "empty dir").is_dir()
    assert all(p.stat().st_uid == os.getuid() for p in (back / "proj").rglob("*"))
    assert [p.name for p in back.iterdir()] == ["proj"]  # no temporary directory left


def test_tilde_and_relative_guest_paths_are_the_login_users_home(vm: Vm) -> None:
    note = vm.work / "note.txt"
    note.write_text("hello home\n")
    cli.run(vm.home, "cp", str(note), f"{VM}:~/note.txt")
    cli.run(vm.home, "cp", str(note), f"{VM}:relative.txt")
    assert _guest(vm, "cat /root/note.txt /root/relative.txt") == "hello home\n" * 2
    cli.run(vm.home, "cp", f"{VM}:~root/note.txt", str(vm.work / "from-tilde.txt"))
    assert (vm.work / "from-tilde.txt").read_text() == "hello home\n"
    tree = vm.work / "home-tree"
    _make_tree(tree)
    cli.run(vm.home, "cp", "-r", str(tree), f"{VM}:~")
    cli.run(vm.home, "cp", "-r", f"{VM}:~/home-tree", str(vm.work / "home-tree-back"))
    assert _sums(vm.work / "home-tree-back") == _sums(tree)
    missing = cli.run(vm.home, "cp", str(note), f"{VM}:~nobody/x", check=False)
    assert missing.returncode == 3 and "no user 'nobody'" in missing.stderr


def test_files_copied_in_belong_to_the_owner_asked_for(vm: Vm) -> None:
    _guest(
        vm,
        "grep -q ^alice: /etc/passwd || { echo 'alice:x:1500:1600::/home/alice:/bin/sh' "
        ">> /etc/passwd; echo 'devs:x:1600:' >> /etc/group; echo 'ops:x:1700:' >> /etc/group; "
        "mkdir -p /home/alice; }",
    )
    tree = vm.work / "owned"
    _make_tree(tree)
    cli.run(vm.home, "cp", "-r", "--owner", "alice", str(tree), f"{VM}:/tmp/")
    listing = _guest(vm, "ls -lnR /tmp/owned")
    rows = [line.split() for line in listing.splitlines() if line[:1] in ("-", "d")]
    assert len(rows) == 7 and {(r[2], r[3]) for r in rows} == {("1500", "1600")}, listing
    assert _guest(vm, "ls -lnd /tmp/owned").split()[2:4] == ["1500", "1600"]
    note = vm.work / "owned.txt"
    note.write_text("mine\n")
    cli.run(vm.home, "cp", "--owner", "alice:ops", str(note), f"{VM}:~alice/")
    assert _guest(vm, "ls -ln /home/alice/owned.txt").split()[2:4] == ["1500", "1700"]
    # the login user of tiny is root
    cli.run(vm.home, "cp", str(note), f"{VM}:/tmp/root-owned.txt")
    assert _guest(vm, "ls -ln /tmp/root-owned.txt").split()[2:4] == ["0", "0"]
    bad = cli.run(vm.home, "cp", "--owner", "mallory", str(note), f"{VM}:/tmp/bad", check=False)
    assert bad.returncode == 3 and "no user 'mallory'" in bad.stderr
    assert "bad" not in _guest(vm, "ls /tmp")


# ---------------------------------------------------------------- a hostile guest


def test_links_in_a_guest_tree_are_never_followed_nor_made(vm: Vm) -> None:
    canary = vm.work / "canary"
    canary.mkdir()
    (canary / "secret").write_text("keep\n")
    before = tree_hash(canary)
    _guest(
        vm,
        "mkdir -p /srv/t/sub && echo ok > /srv/t/ok && ln -sf /etc/passwd /srv/t/passwd && "
        f"ln -sf ../../../../../..{canary} /srv/t/sub/up && echo s > /srv/t/suid && "
        "chmod 4777 /srv/t/suid && mknod /srv/t/null c 1 3",
    )
    dest = vm.work / "hostile-links"
    dest.mkdir()
    proc = cli.run(vm.home, "cp", "-r", f"{VM}:/srv/t", str(dest))
    assert "skipped 3 entries" in proc.stderr and "a symlink" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (dest / "t").iterdir()) == ["ok", "sub", "suid"]
    assert list((dest / "t" / "sub").iterdir()) == []
    assert (dest / "t" / "suid").stat().st_mode & 0o7002 == 0
    assert tree_hash(canary) == before


def test_a_huge_guest_file_is_refused_and_nothing_is_left(vm: Vm) -> None:
    _guest(vm, f"mkdir -p /srv/big && head -c {COPY_MAX_BYTES + 4096} /dev/zero > /srv/big/blob")
    dest = vm.work / "hostile-big"
    dest.mkdir()
    proc = cli.run(vm.home, "cp", "-r", f"{VM}:/srv/big", str(dest), check=False)
    assert proc.returncode == 5 and "byte limit" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # the error and its hint, no traceback
    assert list(dest.iterdir()) == []
    assert ".cloudlet-part" not in _guest(vm, "ls -a /tmp")


def test_a_compromised_guest_tar_cannot_climb_out(vm: Vm) -> None:
    """The guest's own tar is replaced by one that sends '..' names and absolute ones."""
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name, data in ((".", None), ("./fine", b"fine"), ("./../escaped", b"evil")):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    planted = vm.work / "evil.tar"
    planted.write_bytes(evil.getvalue())
    cli.run(vm.home, "cp", str(planted), f"{VM}:/root/evil.tar")
    fake_tar = vm.work / "fake-tar"
    fake_tar.write_text(FAKE_TAR)
    fake_tar.chmod(0o755)
    cli.run(vm.home, "cp", str(fake_tar), f"{VM}:/root/fake-tar")
    _guest(vm, "rm -f /usr/bin/tar && cp /root/fake-tar /usr/bin/tar && mkdir -p /srv/x")
    dest = vm.work / "hostile-tar" / "inner"
    dest.mkdir(parents=True)
    before = tree_hash(vm.work / "hostile-tar")
    try:
        proc = cli.run(vm.home, "cp", "-r", f"{VM}:/srv/x", str(dest), check=False)
    finally:
        _guest(vm, "rm -f /root/evil.tar")
    assert proc.returncode == 7 and "outside the copied directory" in proc.stderr, proc.stderr
    assert tree_hash(vm.work / "hostile-tar") == before
    assert not (vm.work / "hostile-tar" / "escaped").exists()
