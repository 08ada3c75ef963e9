"""NIC, port forward and firewall calls answer with typed results, and hints carry steps.

The JSON a script reads (``to_dict``) keeps the keys ``-o json`` printed when these
were plain dicts; changes say what they did as fields; hints name no CLI command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudlet.cli import wording
from cloudlet.engine.engine import Engine
from cloudlet.engine.network_rows import NetworkVmView
from cloudlet.engine.network_views import (
    FirewallGroupView,
    FirewallView,
    NetworkPlan,
    NicView,
    PortView,
)
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody
from cloudlet.spec.network import parse_rule
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine
from tests.unit.test_network import FakeHost
from tests.unit.test_network import host as host  # the recorder of host plumbing (fixture)


@pytest.fixture
def engine(short_tmp: Path, host: FakeHost) -> Engine:
    made = make_fake_engine(short_tmp / "home", cpus=8, memory=16 * GIB)
    made.networks.network_create("backend", "10.80.1.0/24")
    made.create("web1", VMBody())
    return made


def test_nics_and_ports_are_views_with_the_old_json_keys(engine: Engine) -> None:
    ops = engine.networks
    added = ops.nic_add("web1", "backend")
    assert isinstance(added, Done)
    assert (added.kind, added.name, added.action, added.changed) == (
        "nic",
        "backend",
        "added",
        True,
    )
    assert not ops.nic_add("web1", "backend").changed
    (member,) = ops.network("backend").vms
    assert isinstance(member, NetworkVmView) and member.dns == "web1.backend"
    assert list(ops.network("backend").to_dict()["vms"][0]) == ["name", "ip", "mac", "tap", "dns"]
    nat, bridged = ops.nics("web1")
    assert isinstance(nat, NicView) and nat.to_dict() == {
        "network": "nat",
        "ip": "10.0.2.15",
        "mac": "",
        "tap": "",
        "kind": "user-mode NAT",
    }
    assert set(bridged.to_dict()) == {"network", "ip", "mac", "tap", "kind", "dns"}
    assert bridged.dns == "web1.backend"
    port = ops.port_add("web1", "8080:80/tcp")
    assert (port.kind, port.name, port.action) == ("port", "8080/tcp", "added")
    (listed,) = ops.ports("web1")
    assert isinstance(listed, PortView)
    assert listed.to_dict() == {
        "host_port": 8080,
        "guest_port": 80,
        "proto": "tcp",
        "network": "nat",
    }
    gone = ops.port_remove("web1", "8080")
    assert (gone.name, gone.action) == ("8080/tcp", "removed")
    removed = ops.nic_remove("web1", "backend")
    assert (removed.kind, removed.name, removed.action) == ("nic", "backend", "removed")
    assert ops.network_delete("backend").to_dict()["action"] == "deleted"


def test_firewall_results_are_typed(engine: Engine) -> None:
    ops = engine.networks
    created = ops.group_create("web", [parse_rule("80/tcp")])
    assert (created.kind, created.name, created.action) == ("firewall-group", "web", "created")
    applied = ops.firewall_apply("web1", "web")
    assert (applied.action, applied.changed) == ("applied", True)
    assert not ops.firewall_apply("web1", "web").changed
    allowed = ops.firewall_allow("web1", parse_rule("22/tcp"))
    assert (allowed.kind, allowed.action, allowed.changed) == ("firewall-rule", "allowed", True)
    assert not ops.firewall_allow("web1", parse_rule("22/tcp")).changed
    view = ops.firewall_list("web1")
    assert isinstance(view, FirewallView)
    data = view.to_dict()
    assert set(data) == {"vm", "default", "enforced_on", "groups", "rules", "forwards"}
    assert data["rules"][-1] == {"port": 80, "proto": "tcp", "source": "any", "from": "group web"}
    (group,) = ops.groups()
    assert isinstance(group, FirewallGroupView)
    assert group.to_dict() == {
        "name": "web",
        "rules": ["80/tcp from anywhere"],
        "used_by": ["web1"],
    }
    assert ops.firewall_remove("web1", parse_rule("22/tcp")).action == "removed"
    assert ops.firewall_apply("web1", "web", apply=False).action == "removed"
    assert ops.group_delete("web").action == "deleted"


def test_the_plan_is_typed_and_carries_its_ruleset(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.nic_add("web1", "backend")
    plan = ops.plan()
    assert isinstance(plan, NetworkPlan)
    assert [n.name for n in plan.networks] == ["backend"]
    assert [(n.vm, n.ip) for n in plan.nics] == [("web1", "10.80.1.10")]
    assert plan.ruleset == host.ruleset
    data = plan.to_dict()
    assert data["networks"][0]["route_to"] == [] and data["nics"][0]["network"] == "backend"


def test_network_hints_name_no_command_and_carry_next_steps(engine: Engine) -> None:
    ops = engine.networks
    ops.nic_add("web1", "backend")
    ops.group_create("web", [])
    ops.firewall_apply("web1", "web")
    cases = [
        (NotFound, lambda: ops.nic_add("web1", "nope"), step(Step.NETWORK_LIST)),
        (NotFound, lambda: ops.nic_remove("web1", "lab"), step(Step.NIC_LIST, vm="web1")),
        (NotFound, lambda: ops.port_remove("web1", "99"), step(Step.PORT_LIST, vm="web1")),
        (
            NotFound,
            lambda: ops.port_add("web1", "99:80", network="lab"),
            step(Step.NIC_LIST, vm="web1"),
        ),
        (
            NotFound,
            lambda: ops.firewall_remove("web1", parse_rule("23")),
            step(Step.FIREWALL_LIST, vm="web1"),
        ),
        (
            NotFound,
            lambda: ops.firewall_apply("web1", "db"),
            step(Step.FIREWALL_GROUP_CREATE, group="db"),
        ),
        (NotFound, lambda: ops.group_delete("db"), step(Step.FIREWALL_GROUP_LIST)),
        (
            Conflict,
            lambda: ops.group_delete("web"),
            step(Step.FIREWALL_UNAPPLY, vm="web1", group="web"),
        ),
        (
            Conflict,
            lambda: ops.network_delete("backend"),
            step(Step.NIC_REMOVE, network="backend"),
        ),
    ]
    for kind, call, expected in cases:
        with pytest.raises(kind) as caught:
            call()
        assert expected in caught.value.next_steps, (caught.value.one_line(), expected)
        assert "cloudlet " not in caught.value.one_line() and "--" not in caught.value.one_line()
    with pytest.raises(Conflict) as used:
        ops.group_delete("web")
    assert wording.error_line(used.value) == (
        "firewall group web is applied to web1: take it off those VMs first "
        "(cloudlet firewall unapply web1 web)"
    )


def test_the_cli_renders_the_typed_results(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables and -o json of every network read, and the changes' lines, from the views."""
    from typer.testing import CliRunner

    from cloudlet.cli import main, network_commands

    monkeypatch.setattr(network_commands, "open_engine", lambda: engine)

    def cli(*args: str) -> tuple[str, str]:
        result = CliRunner().invoke(main.app, list(args))
        assert result.exit_code == 0, (args, result.stderr, result.exception)
        return result.stdout, result.stderr

    _, said = cli("nic", "add", "web1", "backend")
    assert "web1: NIC on backend with 10.80.1.10" in said
    assert (
        "web1" in cli("network", "list")[0] and "10.80.1.10" in cli("network", "show", "backend")[0]
    )
    assert (
        json.loads(cli("network", "show", "backend", "-o", "json")[0])["vms"][0]["ip"]
        == "10.80.1.10"
    )
    assert "web1.backend" in cli("nic", "list", "web1")[0]
    assert [n["network"] for n in json.loads(cli("nic", "list", "web1", "-o", "json")[0])] == [
        "nat",
        "backend",
    ]
    cli("port", "add", "web1", "8080:80/tcp")
    assert json.loads(cli("port", "list", "web1", "-o", "json")[0])[0]["host_port"] == 8080
    assert "8080" in cli("port", "list", "web1")[0]
    cli("firewall", "group", "create", "web", "--allow", "80/tcp")
    assert "applied" in cli("firewall", "apply", "web1", "web")[1]
    assert "group web" in cli("firewall", "list", "web1")[0]
    assert json.loads(cli("firewall", "group", "list", "-o", "json")[0])[0]["used_by"] == ["web1"]
    refused = CliRunner().invoke(main.app, ["firewall", "group", "delete", "web"])
    assert isinstance(refused.exception, Conflict)
    assert wording.error_line(refused.exception).endswith("(cloudlet firewall unapply web1 web)")


def test_gc_answers_typed_items_and_the_cli_says_them_as_before(
    engine: Engine, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cloudlet.cli import main, network_commands

    monkeypatch.setattr(network_commands, "open_engine", lambda: engine)
    host.links |= {"clb-old"}
    result = CliRunner().invoke(main.app, ["network", "gc"])
    assert result.exit_code == 0 and result.stderr == "removed bridge clb-old\n"
    host.links |= {"clt-deadbeef1"}
    result = CliRunner().invoke(main.app, ["network", "gc", "-o", "json"])
    assert json.loads(result.stdout) == {
        "removed": ["TAP clt-deadbeef1"],
        "items": [
            {"what": "TAP", "name": "clt-deadbeef1", "action": "removed",
             "message": "TAP clt-deadbeef1"}
        ],
    }  # fmt: skip
    assert CliRunner().invoke(main.app, ["network", "gc"]).stderr == "nothing left over\n"
