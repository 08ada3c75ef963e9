"""Spec files as use cases: create from a file, plan, apply, and export a VM's spec.

``plan`` compares each VM of a file with what exists and returns typed decisions;
``apply`` carries them out, after refusing the whole file when any decision is a
refusal (so a file is applied completely or not at all). Applying the same file
twice changes nothing the second time.

What can change, and how:
- power state (``state: running|stopped``): start or stop;
- machine type / cpus / memory: at once when the VM is stopped (or declared
  stopped: it is stopped first); a running VM that should stay running is refused,
  with how to get there (a stop is needed);
- volumes, firewall, backup, api_access: recorded at once (enforced when those
  features land);
- everything else (location, architecture, image, disk, network, profile, access,
  user-data, containers) is fixed once created: refused, with "delete and re-create".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cloudlet.engine.engine import Engine, SpecChanges
from cloudlet.engine.local_files import LocalBody, is_key_line, read_files
from cloudlet.engine.views import InstanceView
from cloudlet.errors import CloudletError, Conflict, InvalidInput, NotFound
from cloudlet.next_steps import NextStep, Step, step
from cloudlet.progress import ProgressEvent, ProgressSink
from cloudlet.spec.document import VMDocument, VMEntry, document_for
from cloudlet.spec.instance import LOCAL_ZONE, FirewallSpec, InstanceSpec
from cloudlet.spec.machine_types import resolve_shape
from cloudlet.spec.states import STARTABLE_STATES, VMState
from cloudlet.spec.units import format_size

Action = Literal["create", "stop", "reshape", "update", "start", "refuse", "none"]
ORDER: tuple[Action, ...] = ("stop", "reshape", "update", "start")


@dataclass(frozen=True)
class Decision:
    """One thing apply does (or refuses) for one VM."""

    name: str
    action: Action
    detail: str
    where: str  # file:line of the VM (or of the field concerned)
    changes: dict[str, Any] = field(default_factory=dict)
    # what a user can do about a refusal; the detail says it in words
    next_steps: tuple[NextStep, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["next_steps"] = [s.to_dict() for s in self.next_steps]
        return data

    def line(self) -> str:
        return f"{self.name}: {self.action}: {self.detail}"


@dataclass(frozen=True)
class Plan:
    decisions: list[Decision]
    entries: dict[str, VMEntry]

    @property
    def refusals(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "refuse"]

    @property
    def changes(self) -> list[Decision]:
        return [d for d in self.decisions if d.action not in ("none", "refuse")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": [d.to_dict() for d in self.decisions],
            "changes": len(self.changes),
            "refused": len(self.refusals),
        }


# ---------------------------------------------------------------------- file -> request
def local_body(entry: VMEntry, *, keys_only: bool = False) -> LocalBody:
    """The VM body a document stands for, with its files (relative to it) read in."""
    body = entry.doc.spec
    if keys_only:
        body = body.model_copy(update={"user_data_file": None})
    return read_files(body, resolve=lambda path: Path(entry.relative(path)), locate=entry.located)


def check_host(engine: Engine, entry: VMEntry) -> None:
    """What needs the host: location, image, keys and user-data; errors name line and field."""
    spec = entry.doc.spec
    if spec.location != LOCAL_ZONE:
        raise entry.error(
            "spec.location",
            f"unknown location {spec.location!r}",
            hint=f"this host's zone is {LOCAL_ZONE!r} (the only one for now)",
        )
    if spec.iso is None and spec.image not in engine.deps.images.names():
        from cloudlet.images import catalog

        if spec.image in catalog.names():
            hint, steps = "download it first", [step(Step.IMAGE_PULL, image=spec.image)]
        else:
            hint = "use one of the local images or of the catalog"
            steps = [step(Step.IMAGE_LIST), step(Step.IMAGE_CATALOG)]
        raise entry.error(
            "spec.image", f"unknown image {spec.image!r}", hint=hint, cls=NotFound, next_steps=steps
        )
    from cloudlet import cloudinit

    for i, key in enumerate(spec.access.ssh_keys):
        try:
            if is_key_line(key):
                cloudinit.parse_public_key(key, source="the key")
            else:
                cloudinit.load_public_key(Path(entry.relative(key)).expanduser())
        except CloudletError as exc:
            raise entry.located(f"spec.access.ssh_keys.{i}", exc) from None
    if spec.user_data is not None:
        try:
            cloudinit.validate_user_data(spec.user_data)
        except CloudletError as exc:
            raise entry.located("spec.user_data", exc) from None


def create_from(
    engine: Engine, entry: VMEntry, *, progress: ProgressSink | None = None
) -> InstanceView:
    """``cloudlet create --from FILE``: the file's VM, created like the flags would."""
    check_host(engine, entry)
    local = local_body(entry)
    try:
        return engine.create(entry.name, local.body, key_files=local.key_files, progress=progress)
    except (InvalidInput, NotFound) as exc:
        if exc.message.startswith(entry.source):
            raise
        raise entry.located("spec", exc) from None


# ---------------------------------------------------------------------- plan
def _fixed_differences(
    engine: Engine, entry: VMEntry, spec: InstanceSpec
) -> list[tuple[str, str, str]]:
    """(field, current, wanted) for every fixed field the file wants changed."""
    want = entry.doc.spec
    found: list[tuple[str, str, str]] = []

    def differ(path: str, current: object, wanted: object) -> None:
        if current != wanted:
            found.append((path, str(current), str(wanted)))

    differ("spec.location", spec.location, want.location)
    if want.arch is not None:
        differ("spec.arch", spec.arch, want.arch)
    if want.iso is None:
        differ("spec.image", spec.install_iso or spec.image, want.image)
    differ("spec.profile", spec.profile, want.profile)
    differ("spec.network", spec.network.mode, want.network)
    differ("spec.restrict_network", spec.network.restrict, want.restrict_network)
    differ("spec.networks", [n.network for n in spec.network.nics], want.networks)
    differ("spec.containers", spec.containers, want.containers)
    if want.disk_size is not None and want.disk_size != spec.disk_size:
        found.append(
            (
                "spec.disk_size",
                format_size(spec.disk_size) if spec.disk_size else "the image's size",
                format_size(want.disk_size),
            )
        )
    if want.access.user is not None:
        differ("spec.access.user", spec.access.user, want.access.user)
    if want.access.ssh_keys:
        from cloudlet import cloudinit

        keys = [
            cloudinit.parse_public_key(k)
            for k in local_body(entry, keys_only=True).body.access.ssh_keys
        ]
        if sorted(k.split()[:2] for k in keys) != sorted(
            k.split()[:2] for k in spec.access.ssh_public_keys
        ):
            found.append(("spec.access.ssh_keys", "other keys", "these keys"))
    wanted_ud = want.user_data
    if want.user_data_file is not None:
        path = Path(entry.relative(want.user_data_file))
        try:
            wanted_ud = path.read_text()
        except OSError as exc:
            raise entry.error(
                "spec.user_data_file", f"cannot read {path}: {exc.strerror}"
            ) from None
    if wanted_ud is not None and _norm(wanted_ud) != _norm(spec.user_data or ""):
        found.append(("spec.user_data", "other user data", "this user data"))
    return found


def _norm(text: str) -> str:
    return text.strip() + "\n"


def _shape_text(type_name: str, cpus: int, memory: int) -> str:
    return f"{type_name} ({cpus} vCPU{'s' if cpus != 1 else ''}, {format_size(memory)})"


def _plan_one(engine: Engine, entry: VMEntry) -> list[Decision]:
    name = entry.name
    want = entry.doc.spec
    where = f"{entry.source}:{entry.line('metadata.name')}"
    try:
        view = engine.show(name)
    except NotFound:
        check_host(engine, entry)
        shape = resolve_shape(want.type, want.cpus, want.memory)
        detail = (
            f"image {want.image}, {_shape_text(shape.name, shape.cpus, shape.memory)}, {want.state}"
        )
        return [Decision(name, "create", detail, where)]
    spec = engine.spec(name)
    decisions: list[Decision] = []
    for path, current, wanted in _fixed_differences(engine, entry, spec):
        field_name = path.removeprefix("spec.")
        decisions.append(
            Decision(
                name,
                "refuse",
                f"{field_name} is {current}, the file says {wanted}: {field_name} is fixed once "
                f"created; to get there, delete and re-create the VM: delete it, then apply "
                f"the file again",
                f"{entry.source}:{entry.line(path)}",
                next_steps=(step(Step.VM_DELETE, vm=name),),
            )
        )
    shape = resolve_shape(want.type, want.cpus, want.memory)
    running = view.state in (VMState.RUNNING, VMState.PAUSED)
    if (view.type, view.cpus, view.memory) != (shape.name, shape.cpus, shape.memory):
        change = (
            f"{_shape_text(view.type, view.cpus, view.memory)} -> "
            f"{_shape_text(shape.name, shape.cpus, shape.memory)}"
        )
        path = "spec.type" if want.type else "spec.cpus"
        if running and want.state == "running":
            decisions.append(
                Decision(
                    name,
                    "refuse",
                    f"machine type {change} needs a stop, and {name} is running: declare "
                    f"'state: stopped' (apply stops it, then changes it), or stop it and "
                    f"apply the file again",
                    f"{entry.source}:{entry.line(path)}",
                    next_steps=(step(Step.VM_STOP, vm=name),),
                )
            )
        else:
            then = " (after the stop)" if running else ""
            decisions.append(
                Decision(
                    name,
                    "reshape",
                    f"machine type {change}, applies at once{then}",
                    f"{entry.source}:{entry.line(path)}",
                    {"type": shape.name, "cpus": shape.cpus, "memory": shape.memory},
                )
            )
    data: dict[str, Any] = {}
    if tuple(want.volumes) != spec.volumes:
        data["volumes"] = tuple(want.volumes)
    if want.firewall != spec.firewall:
        data["firewall"] = FirewallSpec(inbound_ports=want.firewall.inbound_ports)
    if want.backup != spec.backup:
        data["backup"] = want.backup
    if want.access.api_access != spec.api_access:
        data["api_access"] = want.access.api_access
    if data:
        decisions.append(
            Decision(
                name,
                "update",
                f"record {', '.join(sorted(data))} (enforced when volumes, networks, backups "
                "and the API server land)",
                where,
                {k: _plain(v) for k, v in data.items()},
            )
        )
    if want.state == "running" and view.state != VMState.RUNNING:
        if view.state == VMState.PAUSED:
            decisions.append(Decision(name, "start", "resume the paused VM", where))
        else:
            decisions.append(Decision(name, "start", f"start it (it is {view.state})", where))
    elif want.state == "stopped" and running:
        decisions.append(Decision(name, "stop", f"stop it (it is {view.state})", where))
    elif want.state == "stopped" and view.state not in STARTABLE_STATES:
        decisions.append(
            Decision(name, "refuse", f"it is {view.state}; wait and apply again", where)
        )
    refusals = [d for d in decisions if d.action == "refuse"]
    if refusals:
        return refusals
    decisions.sort(key=lambda d: ORDER.index(d.action))
    return decisions or [Decision(name, "none", "up to date", where)]


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return list(value) if isinstance(value, tuple) else value


def plan(engine: Engine, entries: list[VMEntry]) -> Plan:
    """What apply would do for every VM of a file, without doing it."""
    decisions: list[Decision] = []
    for entry in entries:
        decisions.extend(_plan_one(engine, entry))
    return Plan(decisions, {e.name: e for e in entries})


# ---------------------------------------------------------------------- apply
def apply(engine: Engine, entries: list[VMEntry], *, progress: ProgressSink | None = None) -> Plan:
    """Bring every VM of a file to the file's state; all or nothing when anything is refused."""
    the_plan = plan(engine, entries)
    if the_plan.refusals:
        first = the_plan.refusals[0]
        more = len(the_plan.refusals) - 1
        source = the_plan.entries[first.name].source
        also = f" ({more} more refused: plan the file to see them all)" if more else ""
        raise Conflict(
            f"{first.where}: {first.name}: {first.detail}",
            hint=f"nothing was changed{also}",
            next_steps=[*first.next_steps, *([step(Step.SPEC_PLAN, file=source)] if more else [])],
        )
    for decision in the_plan.decisions:
        entry = the_plan.entries[decision.name]
        if progress is not None and decision.action != "none":
            progress(ProgressEvent(decision.line()))
        if decision.action == "create":
            create_from(engine, entry, progress=progress)
        elif decision.action == "stop":
            engine.stop(decision.name)
        elif decision.action == "reshape":
            c = decision.changes
            engine.reshape(decision.name, c["type"], c["cpus"], c["memory"])
        elif decision.action == "update":
            engine.update_spec(decision.name, SpecChanges(**decision.changes))
        elif decision.action == "start":
            if engine.show(decision.name).state == VMState.PAUSED:
                engine.resume(decision.name)
            else:
                engine.start(decision.name, wait=entry.doc.spec.wait != "none")
    return the_plan


# ---------------------------------------------------------------------- export
def export(engine: Engine, name: str) -> VMDocument:
    """The document that re-creates VM ``name`` (``cloudlet spec NAME``)."""
    from cloudlet import cloudinit

    spec = engine.spec(name)
    state = engine.show(name).state
    own = str(engine.paths.home / "keys" / cloudinit.OWN_KEY_NAME)
    running = state in (VMState.RUNNING, VMState.PAUSED, VMState.STARTING)
    return document_for(spec, state="running" if running else "stopped", own_key=own)
