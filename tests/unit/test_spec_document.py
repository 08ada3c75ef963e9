"""Spec files: parsing with line-located errors, the schema, and writing a spec back."""

from __future__ import annotations

import pytest

from cloudlet.errors import InvalidInput
from cloudlet.spec.document import (
    VMDocument,
    document_for,
    dump_yaml,
    json_schema,
    parse_documents,
    size_text,
)
from cloudlet.spec.instance import AccessSpec, BackupPolicy, FirewallSpec, InstanceSpec
from cloudlet.spec.units import GIB, MIB

GOOD = """\
apiVersion: cloudlet/v1
kind: VM
metadata:
  name: web1
spec:
  image: tiny
  type: gp.medium
  disk_size: 2G
  volumes: [10G, 512M]
  firewall:
    inbound_ports: [443, 22]
  backup: {schedule: daily, keep: 7}
  access: {api_access: true}
  state: stopped
"""


def test_a_vm_document_reads_every_field() -> None:
    (entry,) = parse_documents(GOOD, "web1.yaml")
    spec = entry.doc.spec
    assert entry.name == "web1" and spec.type == "gp.medium" and spec.state == "stopped"
    assert (spec.disk_size, spec.volumes) == (2 * GIB, [10 * GIB, 512 * MIB])
    assert spec.firewall.inbound_ports == (22, 443)
    assert spec.backup == BackupPolicy(schedule="daily", keep=7)
    assert spec.access.api_access is True
    assert entry.line("spec.volumes") == 9


def edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


NO_NAME = edit("metadata:\n  name: web1\n", "metadata: {}\n")
UNKNOWN_TYPE = "f.yaml:7: spec.type: unknown machine type 'gp.hugee': did you mean"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: cloudlet/v1\nkind: VM\nmetadata:\n  name: [a\n", "f.yaml:5: invalid YAML"),
        (edit("  state: stopped", "  colour: blue"), "f.yaml:14: spec.colour: unknown field"),
        (edit("type: gp.medium", "cpus: two"), "f.yaml:7: spec.cpus: Input should be a valid int"),
        (edit("gp.medium", "gp.hugee"), UNKNOWN_TYPE),
        (edit("disk_size: 2G", "disk_size: lots"), "f.yaml:8: spec.disk_size: invalid size"),
        (NO_NAME, "f.yaml:3: metadata.name: required field is missing"),
        (edit("cloudlet/v1", "cloudlet/v9"), "f.yaml:1: apiVersion: unsupported version"),
        (edit("name: web1", "name: Web_1"), "f.yaml:4: metadata.name:"),
        (edit("[443, 22]", "[70000]"), "f.yaml:11: spec.firewall.inbound_ports: port 70000"),
        ("just text\n", "f.yaml:1: document: a YAML str, not a mapping"),
        ("", "f.yaml:1: document: no VM in the file"),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_documents(text, "f.yaml")
    assert expected in exc.value.one_line()
    assert "\n" not in exc.value.one_line()


def test_a_list_and_several_documents_give_every_vm_with_its_own_lines() -> None:
    item = "  - apiVersion: cloudlet/v1\n    kind: VM\n    metadata: {name: NAME}\n"
    listed = "apiVersion: cloudlet/v1\nkind: List\nitems:\n" + item.replace("NAME", "a")
    listed += item.replace("NAME", "b") + "    spec: {type: gp.nope}\n"
    with pytest.raises(InvalidInput, match=r"^lab.yaml:10: spec.type: unknown machine type"):
        parse_documents(listed, "lab.yaml")
    two = GOOD + "---\n" + GOOD.replace("web1", "web2")
    assert [e.name for e in parse_documents(two, "lab.yaml")] == ["web1", "web2"]
    with pytest.raises(InvalidInput, match=r"lab.yaml:19: metadata.name: 'web1' is declared twice"):
        parse_documents(GOOD + "---\n" + GOOD, "lab.yaml")


def test_custom_shape_needs_cpus_and_memory() -> None:
    text = GOOD.replace("type: gp.medium", "type: custom\n  cpus: 3")
    with pytest.raises(InvalidInput, match=r"f.yaml:7: spec.type: a custom machine type needs"):
        parse_documents(text, "f.yaml")
    (entry,) = parse_documents(text + "  memory: 1536\n", "f.yaml")
    assert entry.doc.spec.memory == 1536 * MIB  # a bare number is MiB, like --memory


def test_written_spec_reads_back_equal() -> None:
    spec = InstanceSpec(
        name="db1", image="cloudy", type="custom", cpus=3, memory=1536 * MIB, disk_size=GIB,
        access=AccessSpec(user="ops", ssh_public_keys=("ssh-ed25519 AAAA",)),
        user_data="#cloud-config\nruncmd:\n- [touch, /x]\n", containers=True,
        volumes=(GIB,), firewall=FirewallSpec(inbound_ports=(80,)),
        backup=BackupPolicy(schedule="hourly", keep=24), api_access=True,
    )  # fmt: skip
    doc = document_for(spec, state="stopped")
    text = dump_yaml([doc])
    assert "memory: 1536M" in text and "user_data: |" in text
    (entry,) = parse_documents(text, "db1.yaml")
    assert entry.doc == doc


def test_own_key_pair_is_left_out_of_the_written_spec() -> None:
    access = AccessSpec(user="u", ssh_public_keys=("ssh-ed25519 AAAA",), ssh_private_key="/k/id")
    spec = InstanceSpec(name="a", cpus=1, memory=GIB, access=access)
    assert document_for(spec, state="running", own_key="/k/id").spec.access.ssh_keys == []
    assert document_for(spec, state="running", own_key="/other").spec.access.ssh_keys == [
        "ssh-ed25519 AAAA"
    ]


def test_old_spec_rows_still_load() -> None:
    old = '{"name": "a", "image": "tiny", "type": "gp.small", "cpus": 1, "memory": 1073741824}'
    spec = InstanceSpec.model_validate_json(old)
    assert (spec.containers, spec.volumes, spec.api_access) == (False, (), False)
    assert spec.backup.schedule == "none" and spec.firewall.inbound_ports == ()


def test_schema_documents_every_field() -> None:
    schema = json_schema()
    body = schema["$defs"]["VMBody"]["properties"]
    for name in ("image", "type", "containers", "volumes", "firewall", "backup", "state", "wait"):
        assert name in body
    assert schema["$defs"]["VMBody"]["additionalProperties"] is False
    assert VMDocument.model_fields["apiVersion"].description


def test_size_text_is_exact() -> None:
    assert [size_text(n) for n in (GIB, 1536 * MIB, 4096 + 1)] == ["1G", "1536M", "4097B"]


def test_backup_flag_presets_and_custom() -> None:
    from cloudlet.spec.instance import parse_backup

    assert parse_backup("daily") == BackupPolicy(schedule="daily", keep=7)
    assert parse_backup("hourly") == BackupPolicy(schedule="hourly", keep=24)
    assert parse_backup("weekly:4") == BackupPolicy(schedule="weekly", keep=4)
    for bad in ("monthly:3", "daily:0", "daily:x", "sometimes"):
        with pytest.raises(InvalidInput, match="invalid backup policy"):
            parse_backup(bad)
