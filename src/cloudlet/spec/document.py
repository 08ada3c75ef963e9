"""Spec files: the YAML form of a VM (``apiVersion: cloudlet/v1``, ``kind: VM``).

A file holds one VM, a ``kind: List`` of VMs, or several YAML documents. Every
``cloudlet create`` flag has a field here. Parsing keeps the line of every field, so
an error names the file, the line and the field::

    lab.yaml:7: spec.type: unknown machine type 'gp.hugee': did you mean 'gp.large'?

Pure data: the caller reads the file; nothing here touches the host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from cloudlet.errors import CloudletError, InvalidInput
from cloudlet.next_steps import NextStep, Step, step
from cloudlet.spec.instance import Arch, BackupPolicy, FirewallSpec, InstanceSpec, Profile
from cloudlet.spec.machine_types import CATALOG, CUSTOM, resolve_shape
from cloudlet.spec.names import image_name, model_check, vm_name
from cloudlet.spec.suggest import did_you_mean
from cloudlet.spec.units import GIB, KIB, MIB, parse_size

API_VERSION: Literal["cloudlet/v1"] = "cloudlet/v1"
PowerIntent = Literal["running", "stopped"]
WaitFor = Literal["agent", "cloud-init", "none"]
Loc = tuple[str | int, ...]


def size_text(n: int) -> str:
    """Bytes as the shortest exact size string parse_size reads back: 1073741824 -> "1G"."""
    for unit, factor in (("G", GIB), ("M", MIB), ("K", KIB)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def _size_parser(default_unit: str) -> BeforeValidator:
    def parse(value: object) -> object:
        if isinstance(value, bool):
            return value  # let pydantic say it is not a size
        if isinstance(value, int | float | str):
            try:
                return parse_size(str(value), default_unit=default_unit)
            except InvalidInput as exc:
                raise ValueError(exc.one_line()) from None
        return value

    return BeforeValidator(parse)


def _size_schema(default_unit: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[KMGTkmgt]?(i?[Bb])?\s*$"},
            ],
            "description": f"a size such as 512M or 20G; a bare number is in {default_unit}iB",
        }
    )


_emit_size = PlainSerializer(size_text, return_type=str)
MemorySize = Annotated[int, _size_parser("M"), _emit_size, _size_schema("M")]
DiskSize = Annotated[int, _size_parser("G"), _emit_size, _size_schema("G")]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccessDoc(_Doc):
    """Login user, SSH keys and API access."""

    user: str | None = Field(default=None, description="login user (cloud-init images)")
    ssh_keys: list[str] = Field(
        default=[],
        description="public keys: lines such as 'ssh-ed25519 AAAA...' or, in a spec file, "
        "paths of .pub files (relative to it; read on the host that reads the file); "
        "none: cloudlet's own key pair",
    )
    api_access: bool = Field(default=False, description="an API token scoped to this VM")


class VMBody(_Doc):
    """What the VM is: one field per option of creating a VM, plus its power state.

    The one create request: CLI flags, spec files, the wizard and API bodies all build
    it, and ``Engine.create(name, body)`` takes it. It carries data, not host paths:
    a local frontend reads key paths and ``user_data_file`` into key lines and
    ``user_data`` before the engine sees it (``engine.local_files``); ``iso`` is the one
    host path, which only a local frontend may give.
    """

    image: str = Field(default="tiny", description="an image name (a local or catalog image)")
    type: str | None = Field(
        default=None, description="a machine type (see the types), or 'custom' with cpus/memory"
    )
    cpus: int | None = Field(default=None, ge=1, le=255, description="vCPUs (custom shape)")
    memory: MemorySize | None = Field(default=None, description="memory (custom shape)")
    disk_size: DiskSize | None = Field(default=None, description="root disk; none: image size")
    arch: Arch | None = Field(default=None, description="guest architecture; fixed once created")
    location: str = Field(default="local", description="zone of the host; fixed once created")
    profile: Profile = "modern"
    network: Literal["nat", "none"] = "nat"
    restrict_network: bool = Field(default=False, description="NAT without any way out")
    networks: list[str] = Field(default=[], description="virtual networks by name, one NIC each")
    containers: bool = Field(
        default=False, description="install podman and enable its docker-compatible socket"
    )
    volumes: list[DiskSize] = Field(
        default=[],
        description="extra volume sizes: made (or a detached one of that name and size "
        "reused) and attached as NAME-vol0, NAME-vol1, ...",
    )
    access: AccessDoc = AccessDoc()
    firewall: FirewallSpec = Field(
        default=FirewallSpec(), description="inbound rules (enforced on virtual networks)"
    )
    backup: BackupPolicy = Field(
        default=BackupPolicy(), description="backup policy (made when due backups are run)"
    )
    user_data: str | None = Field(default=None, description="your own #cloud-config, inline")
    user_data_file: str | None = Field(
        default=None,
        description="your own #cloud-config file (relative to the spec file; read into "
        "user_data on the host that reads the file)",
    )
    iso: str | None = Field(
        default=None,
        description="install from this ISO onto disk_size: a path on this host, so only a "
        "local frontend may give it",
    )
    state: PowerIntent = Field(default="running", description="power state apply brings it to")
    wait: WaitFor = Field(
        default="agent", description="what create waits for: guest agent, cloud-init, or none"
    )

    @field_validator("image")
    @classmethod
    def _valid_image(cls, value: str) -> str:
        return model_check(image_name, value)


class Metadata(_Doc):
    name: str = Field(description="VM name")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return model_check(vm_name, value)


class VMDocument(_Doc):
    """One VM."""

    apiVersion: Literal["cloudlet/v1"] = Field(description="the spec file format version")
    kind: Literal["VM"]
    metadata: Metadata
    spec: VMBody = VMBody()


class ListDocument(_Doc):
    """Several VMs in one document (several YAML documents work as well)."""

    apiVersion: Literal["cloudlet/v1"]
    kind: Literal["List"]
    items: list[dict[str, Any]] = Field(description="VM documents")


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a spec file document (VM or List)."""
    vm = VMDocument.model_json_schema(ref_template="#/$defs/{model}")
    defs = vm.pop("$defs", {})
    defs["VMDocument"] = vm
    lst = ListDocument.model_json_schema(ref_template="#/$defs/{model}")
    lst["properties"]["items"] = {
        "type": "array",
        "items": {"$ref": "#/$defs/VMDocument"},
        "description": "VM documents",
    }
    defs["ListDocument"] = lst
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cloudlet.invalid/schema/v1/spec.json",
        "title": "VM spec file (cloudlet/v1)",
        "description": "One VM (kind: VM) or several (kind: List, or several YAML documents).",
        "oneOf": [{"$ref": "#/$defs/VMDocument"}, {"$ref": "#/$defs/ListDocument"}],
        "$defs": defs,
    }


# ---------------------------------------------------------------------- parsed entries
@dataclass(frozen=True)
class VMEntry:
    """One VM read from a file, with the line of every field for error messages."""

    doc: VMDocument
    source: str
    lines: dict[Loc, int] = field(default_factory=dict)
    base: Loc = ()

    @property
    def name(self) -> str:
        return self.doc.metadata.name

    def line(self, path: str) -> int:
        parts = tuple(int(p) if p.isdigit() else p for p in path.split(".")) if path else ()
        loc: Loc = self.base + parts
        return _line_of(self.lines, loc)

    def error(
        self,
        path: str,
        message: str,
        *,
        hint: str | None = None,
        cls: type[CloudletError] = InvalidInput,
        next_steps: Sequence[NextStep] = (),
    ) -> CloudletError:
        """An error naming this file, the field's line and the field."""
        return cls(
            f"{self.source}:{self.line(path)}: {path}: {message}", hint=hint, next_steps=next_steps
        )

    def located(self, path: str, exc: CloudletError) -> CloudletError:
        """``exc`` again, with this file, line and field in front of its message."""
        return self.error(
            path, exc.message, hint=exc.hint, cls=type(exc), next_steps=exc.next_steps
        )

    def relative(self, path: str) -> str:
        """A path written in the file, taken relative to the file's own directory."""
        if PurePath(path).is_absolute() or self.source == "<stdin>":
            return path
        return str(PurePath(self.source).parent / path)


def _line_of(lines: dict[Loc, int], loc: Loc) -> int:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get((), 1)


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, str(key.value))
            lines[child] = key.start_mark.line + 1
            _index(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _first_error(
    exc: ValidationError, source: str, lines: dict[Loc, int], base: Loc
) -> InvalidInput:
    errors = exc.errors()
    first = errors[0]
    loc: Loc = tuple(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "literal_error" and loc[-1:] == ("apiVersion",):
        message = f"unsupported version {first.get('input')!r}, this cloudlet reads {API_VERSION}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(
        f"{source}:{_line_of(lines, base + loc)}: {_dotted(loc) or 'document'}: {message}{more}",
        hint="the spec files' schema lists every field",
        next_steps=[step(Step.SPEC_SCHEMA)],
    )


def _yaml_error(exc: yaml.YAMLError, source: str) -> InvalidInput:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return InvalidInput(f"{source}:{line}: invalid YAML: {problem}", hint="fix the YAML syntax")


def parse_documents(text: str, source: str) -> list[VMEntry]:
    """Every VM in a spec file's text, validated; InvalidInput names file, line and field."""
    try:  # the reader refuses control characters as soon as it is made
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    raw: list[tuple[Any, dict[Loc, int]]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[Loc, int] = {}
            _index(node, (), lines)
            raw.append((loader.construct_document(node), lines))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    finally:
        loader.dispose()
    entries: list[VMEntry] = []
    for data, lines in raw:
        if data is None:
            continue
        if not isinstance(data, dict):
            raise InvalidInput(
                f"{source}:{lines.get((), 1)}: document: a YAML {type(data).__name__}, "
                "not a mapping",
                hint="start with 'apiVersion: cloudlet/v1' and 'kind: VM'",
            )
        if data.get("kind") == "List":
            try:
                listed = ListDocument.model_validate(data)
            except ValidationError as exc:
                raise _first_error(exc, source, lines, ()) from None
            for i, item in enumerate(listed.items):
                entries.append(_vm_entry(item, source, lines, ("items", i)))
        else:
            entries.append(_vm_entry(data, source, lines, ()))
    if not entries:
        raise InvalidInput(f"{source}:1: document: no VM in the file", hint="add a 'kind: VM'")
    seen: dict[str, VMEntry] = {}
    for entry in entries:
        if entry.name in seen:
            raise entry.error(
                "metadata.name",
                f"{entry.name!r} is declared twice (first at line "
                f"{seen[entry.name].line('metadata.name')})",
                hint="give each VM its own name",
            )
        seen[entry.name] = entry
    return entries


def _vm_entry(data: Any, source: str, lines: dict[Loc, int], base: Loc) -> VMEntry:
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{source}:{_line_of(lines, base)}: {_dotted(base)}: not a mapping",
            hint="each item is a VM document with apiVersion, kind, metadata, spec",
        )
    try:
        doc = VMDocument.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, source, lines, base) from None
    entry = VMEntry(doc, source, lines, base)
    check_entry(entry)
    return entry


def check_entry(entry: VMEntry) -> None:
    """What can be checked without the host: machine type and shape, exclusive fields."""
    spec = entry.doc.spec
    try:
        resolve_shape(spec.type, spec.cpus, spec.memory)
    except CloudletError as exc:
        field_name = "spec.type"
        if exc.message.startswith("invalid vCPU") and spec.cpus is not None:
            field_name = "spec.cpus"
        elif exc.message.startswith("invalid memory") and spec.memory is not None:
            field_name = "spec.memory"
        if "unknown machine type" in exc.message:
            guess = did_you_mean(str(spec.type), CATALOG)
            raise entry.error(
                field_name, f"unknown machine type {spec.type!r}",
                hint=guess or "use the name of a machine type, or 'custom' with cpus and memory",
                next_steps=[] if guess else [step(Step.TYPE_LIST)],
            ) from None  # fmt: skip
        raise entry.located(field_name, exc) from None
    if spec.user_data is not None and spec.user_data_file is not None:
        raise entry.error(
            "spec.user_data_file",
            "user_data and user_data_file both given",
            hint="keep one of them",
        )
    if spec.iso is not None and spec.disk_size is None:
        raise entry.error(
            "spec.iso", "an install from ISO needs disk_size", hint="add disk_size: 20G"
        )


# ---------------------------------------------------------------------- writing
def document_for(
    spec: InstanceSpec, *, state: PowerIntent, own_key: str | None = None
) -> VMDocument:
    """The document that re-creates ``spec`` (``create --from`` gives an equal spec).

    ``own_key`` is the private key path of cloudlet's own pair: a VM that uses it gets
    no ``ssh_keys`` (so a re-create elsewhere uses that host's own pair).
    """
    custom = spec.type == CUSTOM
    access = spec.access
    keys = [] if own_key and access.ssh_private_key == own_key else list(access.ssh_public_keys)
    # Sizes go in as text: a bare number in a spec file means MiB/GiB, not bytes.
    body = VMBody.model_validate(
        {
            "image": spec.install_iso or spec.image,
            "type": spec.type,
            "cpus": spec.cpus if custom else None,
            "memory": size_text(spec.memory) if custom else None,
            "disk_size": size_text(spec.disk_size) if spec.disk_size else None,
            "arch": spec.arch,
            "location": spec.location,
            "profile": spec.profile,
            "network": spec.network.mode,
            "restrict_network": spec.network.restrict,
            "networks": [nic.network for nic in spec.network.nics],
            "containers": spec.containers,
            "volumes": [size_text(v) for v in spec.volumes],
            "access": AccessDoc(user=access.user, ssh_keys=keys, api_access=spec.api_access),
            "firewall": spec.firewall,
            "backup": spec.backup,
            "user_data": spec.user_data,
            "state": state,
        }
    )
    return VMDocument(
        apiVersion=API_VERSION, kind="VM", metadata=Metadata(name=spec.name), spec=body
    )


_ALWAYS = ("image", "type", "arch", "location", "state")


def to_data(doc: VMDocument) -> dict[str, Any]:
    """Plain data for YAML: defaults left out except the fields a reader looks for."""
    data: dict[str, Any] = doc.model_dump(mode="json", exclude_defaults=True)
    full = doc.spec.model_dump(mode="json")
    body = data.setdefault("spec", {})
    for key in _ALWAYS:
        if full.get(key) is not None:
            body.setdefault(key, full[key])
    data["spec"] = {k: body[k] for k in full if k in body}  # schema order
    data["apiVersion"] = doc.apiVersion
    data["kind"] = doc.kind
    return {k: data[k] for k in ("apiVersion", "kind", "metadata", "spec")}


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump_yaml(docs: list[VMDocument]) -> str:
    """YAML text for one or several VM documents (several YAML documents)."""
    return yaml.dump_all(
        [to_data(d) for d in docs],
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=1 << 16,
    )


def dump_json(docs: list[VMDocument]) -> str:
    return json.dumps([to_data(d) for d in docs], indent=2)
