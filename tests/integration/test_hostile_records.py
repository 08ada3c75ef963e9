"""Records from files on real QEMU, through the real CLI: a tampered export and a
tampered backup manifest are refused in one line with nothing made; the untampered
export imports and boots."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cloudlet.backup.store import Manifest
from tests.integration import cli

pytestmark = pytest.mark.integration


def tree_hash(root: Path) -> str:
    """Every file's name and content under ``root`` but the log and the lock files,
    which every command touches."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.suffix not in (".log", ".lock"):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def retar(src: Path, dest: Path, edit: dict[str, bytes]) -> None:
    """``src`` with some files replaced, every SHA-256 and size fixed up to match."""
    with tarfile.open(src) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    files.update(edit)
    manifest = json.loads(files["manifest.json"])
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256(files[name]).hexdigest()
        manifest["bytes"][name] = len(files[name])
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(dest, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tampered_records_are_refused_and_the_genuine_export_boots(
    cloudlet_home: Path, short_tmp: Path
) -> None:
    home = cloudlet_home
    cli.run(home, "create", "src", "--no-start")
    export = short_tmp / "src.cloudlet"
    cli.run(home, "export", "src", str(export))
    with tarfile.open(export) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        spec = json.loads(tar.extractfile("spec.json").read())  # type: ignore[union-attr]

    # a crafted image directory for QEMU's -kernel/-initrd/-append, and hostile fields
    crafted = short_tmp / "crafted"
    crafted.mkdir()
    (crafted / "image.json").write_text(json.dumps(
        {"name": "tiny", "disk": "disk.qcow2", "kernel": "/etc/shadow", "cmdline": "init=/bin/sh"}
    ))  # fmt: skip
    hostile = {
        "cpus": ({**manifest, "vm_row": {**manifest["vm_row"], "cpus": -5}}, spec),
        "location": (manifest, {**spec, "location": "../../etc"}),
        "type": (manifest, {**spec, "type": "x;rm -rf /"}),
        "user": (manifest, {**spec, "access": {"user": "-oProxyCommand=touch /tmp/pwn"}}),
        "kernel": ({**manifest, "vm_row": {**manifest["vm_row"], "kernel": "/etc/shadow"}}, spec),
    }
    before = tree_hash(home)
    for case, (m, s) in hostile.items():
        bad = short_tmp / f"{case}.cloudlet"
        retar(export, bad, {"manifest.json": json.dumps(m).encode(),
                            "spec.json": json.dumps(s).encode()})  # fmt: skip
        refused = cli.run(home, "import", str(bad), "--name", "evil", check=False)
        assert refused.returncode == 2, (case, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1 and str(bad) in refused.stderr
        assert tree_hash(home) == before, case
    assert not Path("/tmp/pwn").exists()

    # a host path in the row is never used: the import boots this host's tiny image
    pathy = short_tmp / "pathy.cloudlet"
    row = {**manifest["vm_row"], "image_path": str(crafted)}
    retar(export, pathy, {"manifest.json": json.dumps({**manifest, "vm_row": row}).encode()})
    cli.run(home, "import", str(pathy), "--name", "copy")
    shown = cli.run_json(home, "show", "copy")
    assert shown["paths"]["image"] == cli.run_json(home, "show", "src")["paths"]["image"]
    cli.run(home, "start", "copy")
    assert "init=/bin/sh" not in cli.run(home, "exec", "copy", "--", "cat", "/proc/cmdline").stdout
    cli.run(home, "stop", "copy")

    # a backup manifest edited and re-hashed: refused by restore, reported by verify
    backup = cli.run_json(home, "backup", "create", "src")
    vm_id = cli.run_json(home, "show", "src")["id"]
    path = home / "backups" / "manifests" / vm_id / f"{backup['id']}.json"
    body = json.loads(path.read_text())
    body.pop("sha256"), body.pop("hmac")
    body["disks"][0]["chunks"][0] = "0" * 64
    path.write_text(json.dumps({**body, "sha256": Manifest.digest(body)}))
    before = tree_hash(home / "instances")
    refused = cli.run(home, "restore", "src", "--latest", "--as", "back", check=False)
    assert refused.returncode == 2 and str(path) in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert tree_hash(home / "instances") == before
    verify = cli.run(home, "backup", "verify", "src", check=False)
    assert verify.returncode != 0 and "not signed" in verify.stdout + verify.stderr
