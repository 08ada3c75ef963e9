"""Property-based fuzzing of the readers of files we did not write: the spec-file parser,
the user-data check, the backup manifest reader and the export reader. On any input
the only exception allowed is a CloudletError (a one-line message), never an internal
error. Runs are bounded by max_examples; no deadline, since six test runs share two
cores and a timing limit would fail on load, not on a bug."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudlet.backup.manifest_check import HostKey
from cloudlet.backup.store import CHUNK_SIZE, DiskManifest, Manifest
from cloudlet.cloudinit.userdata import validate_user_data
from cloudlet.engine.backups import BackupService
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError
from cloudlet.spec.document import VMBody, check_entry, parse_documents
from tests.fakes import make_fake_engine

# A longer run on purpose: CLOUDLET_FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz_records.py
EXAMPLES = int(os.environ.get("CLOUDLET_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
keys = st.sampled_from(["name", "image", "type", "cpus", "memory", "disk", "arch", "access",
                        "user", "network", "ports", "items", "kind", "spec", "metadata",
                        "apiVersion", "volumes", "firewall", "backup", "location"])  # fmt: skip
yaml_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=20,
)


def only_cloudlet_errors(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except CloudletError as exc:
        assert exc.message and "\n" not in exc.one_line(), exc.one_line()


# ---------------------------------------------------------------- spec files
@FUZZ
@given(st.text(max_size=400))
def test_spec_parser_on_any_text(text: str) -> None:
    only_cloudlet_errors(lambda: [check_entry(e) for e in parse_documents(text, "f.yaml")])


@FUZZ
@given(yaml_like)
def test_spec_parser_on_any_structure(data: Any) -> None:
    for text in (json.dumps(data), json.dumps({"kind": "VM", "spec": data, "metadata": data})):
        only_cloudlet_errors(lambda t=text: [check_entry(e) for e in parse_documents(t, "f")])


# ---------------------------------------------------------------- user-data
@FUZZ
@given(st.text(max_size=300) | json_values.map(lambda v: "#cloud-config\n" + json.dumps(v)))
def test_user_data_check_on_any_text(text: str) -> None:
    only_cloudlet_errors(validate_user_data, text)


# ---------------------------------------------------------------- backup manifests
@pytest.fixture(scope="module")
def key() -> Iterator[HostKey]:
    with tempfile.TemporaryDirectory() as tmp:
        yield HostKey(Path(tmp) / "key")


def genuine(key: HostKey) -> dict[str, Any]:
    manifest = Manifest(
        id="20260101T000000-abcdef", vm="web1", vm_id="0" * 8 + "-0000-0000-0000-" + "0" * 12,
        created_at="t", finished_at="t", kind="full", parent=None,
        disks=[DiskManifest("root", 2 * CHUNK_SIZE, ["a" * 64, None])], spec={}, vm_row={},
    )  # fmt: skip
    return dict(json.loads(manifest.to_json(key)))


@FUZZ
@given(st.text(max_size=300) | json_values.map(json.dumps))
def test_manifest_reader_on_any_text(key: HostKey, text: str) -> None:
    only_cloudlet_errors(Manifest.from_json, text, "m.json", key)


@settings(FUZZ, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "disks.0", "vm_row", "bitmap"]),
            keys | st.text(max_size=10),
            json_values,
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_manifest_reader_on_a_mutated_manifest(
    key: HostKey, edits: list[tuple[str, str, Any]], rehash: bool
) -> None:
    """Field edits of a real manifest, re-hashed (as an attacker can) or not."""
    data = genuine(key)
    for where, field, value in edits:
        target: Any = data
        for part in filter(None, where.split(".")):
            target = target[int(part)] if part.isdigit() else target.get(part)
        if isinstance(target, dict):
            target[field] = value
    if rehash:
        data.pop("sha256", None)
        data["sha256"] = Manifest.digest({k: v for k, v in data.items() if k != "hmac"})
    only_cloudlet_errors(Manifest.from_json, json.dumps(data), "m.json", key)
    only_cloudlet_errors(Manifest.from_json, json.dumps(data), "m.json", None)


# ---------------------------------------------------------------- exports
@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="cl-fuzz-") as tmp:
        e = make_fake_engine(Path(tmp) / "home")
        e.create("web1", VMBody())
        e.stop("web1")
        yield e


@pytest.fixture(scope="module")
def ops(engine: Engine) -> BackupService:
    return engine.backups


def tar_of(members: list[tuple[str, int, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = bytes([kind])
            info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


names = st.sampled_from(["manifest.json", "spec.json", "disk.qcow2", "volumes", "volumes/a.qcow2",
                         "../x", "/abs", ""]) | st.text(max_size=20)  # fmt: skip
member_kinds = st.sampled_from([tarfile.REGTYPE[0], tarfile.AREGTYPE[0], tarfile.SYMTYPE[0],
                                tarfile.LNKTYPE[0], tarfile.CHRTYPE[0], tarfile.FIFOTYPE[0],
                                tarfile.DIRTYPE[0]])  # fmt: skip
contents = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())


@settings(FUZZ, max_examples=max(1, EXAMPLES * 2 // 3), suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(names, member_kinds, contents), max_size=6) | st.binary(max_size=2000))
def test_export_reader_on_any_archive(
    engine: Engine, ops: BackupService, archive: list[tuple[str, int, bytes]] | bytes
) -> None:
    data = archive if isinstance(archive, bytes) else tar_of(archive)
    with tempfile.NamedTemporaryFile(suffix=".cloudlet") as f:
        f.write(data)
        f.flush()
        only_cloudlet_errors(ops.import_, Path(f.name), "fuzzed")
    assert [v.name for v in engine.instances()] == ["web1"]


@pytest.fixture(scope="module")
def export_files(ops: BackupService) -> dict[str, bytes]:
    """The files of a genuine export of web1."""
    with tempfile.TemporaryDirectory() as tmp:
        ops.export("web1", Path(tmp) / "web1.cloudlet")
        with tarfile.open(Path(tmp) / "web1.cloudlet") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@settings(FUZZ, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["spec", "vm_row", "manifest", "volumes"]),
            keys | st.text(max_size=10),
            json_values,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_export_reader_on_a_mutated_export(
    engine: Engine,
    ops: BackupService,
    export_files: dict[str, bytes],
    edits: list[tuple[str, str, Any]],
) -> None:
    """Field edits of a genuine export's spec and manifest, with every sum and size fixed
    up (as an attacker can): refused in one line, or imported as a valid VM."""
    spec = json.loads(export_files["spec.json"])
    manifest = json.loads(export_files["manifest.json"])
    for where, field, value in edits:
        target = {"spec": spec, "vm_row": manifest["vm_row"], "manifest": manifest}.get(where)
        if target is None:
            manifest["volumes"] = [{"name": field, "file": value}]
        else:
            target[field] = value
    files = {**export_files, "spec.json": json.dumps(spec).encode()}
    if isinstance(manifest.get("files"), dict) and isinstance(manifest.get("bytes"), dict):
        manifest["files"]["spec.json"] = hashlib.sha256(files["spec.json"]).hexdigest()
        manifest["bytes"]["spec.json"] = len(files["spec.json"])
    files["manifest.json"] = json.dumps(manifest).encode()
    members = [(n, tarfile.REGTYPE[0], b) for n, b in files.items()]
    with tempfile.NamedTemporaryFile(suffix=".cloudlet") as f:
        f.write(tar_of(members))
        f.flush()
        only_cloudlet_errors(ops.import_, Path(f.name), "mutated")
    for view in engine.instances():
        if view.name != "web1":
            engine.delete(view.name)
