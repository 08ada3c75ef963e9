"""`cloudlet network|nic|port|firewall ...`: parse, call the engine, render."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli.options import NetArg, Output, VmArg
from cloudlet.errors import InvalidInput

# Rich and the engine are imported on first use (cli/lazy.py): start-up stays cheap.
if TYPE_CHECKING:
    from rich.table import Table

    from cloudlet.cli import render
    from cloudlet.cli.render import err, out
    from cloudlet.engine.factory import open_engine
    from cloudlet.engine.network import NetworkService
    from cloudlet.engine.network_rows import NetworkView
    from cloudlet.spec.network import parse_rule
else:
    from cloudlet.cli.lazy import lazy

    Table = lazy("rich.table", "Table")
    render = lazy("cloudlet.cli.render")
    err = lazy("cloudlet.cli.render", "err")
    out = lazy("cloudlet.cli.render", "out")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")
    parse_rule = lazy("cloudlet.spec.network", "parse_rule")

network_app = typer.Typer(
    help="Virtual networks: bridge, DHCP/DNS, NAT, isolation, routing.", no_args_is_help=True
)
nic_app = typer.Typer(help="A VM's NICs on virtual networks (hot-plugged).", no_args_is_help=True)
port_app = typer.Typer(help="Port forwards: host port -> guest port.", no_args_is_help=True)
firewall_app = typer.Typer(help="Per-VM inbound firewall rules and groups.", no_args_is_help=True)
group_app = typer.Typer(help="Firewall groups: named rule sets.", no_args_is_help=True)

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
    app.add_typer(nic_app, name="nic")
    app.add_typer(port_app, name="port")
    app.add_typer(firewall_app, name="firewall")
    firewall_app.add_typer(group_app, name="group")


def _ops() -> NetworkService:
    return open_engine().networks


def _table(columns: list[str], rows: list[list[str]]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out.print(table)


# ---------------------------------------------------------------- networks
@network_app.command("create")
def network_create(
    name: NetArg,
    subnet: Annotated[str, typer.Option(help="IPv4 subnet, e.g. 10.80.1.0/24")],
    nat: Annotated[bool, typer.Option("--nat", help="NAT out through the host (default)")] = False,
    isolated: Annotated[bool, typer.Option("--isolated", help="no way out of the subnet")] = False,
    route_to: Annotated[
        list[str] | None,
        typer.Option("--route-to", help="route to this network, no NAT out (repeatable)"),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a network: bridge, dnsmasq (fixed leases, DNS VM.NETWORK), nftables rules."""
    modes = [
        m for m, on in (("nat", nat), ("isolated", isolated), ("routed", bool(route_to))) if on
    ]
    if len(modes) > 1:
        raise InvalidInput(
            f"--{' and --'.join(modes).replace('routed', 'route-to')} contradict",
            hint="give one of --nat, --isolated, --route-to",
        )
    view = _ops().network_create(
        name, subnet, mode=modes[0] if modes else "nat", route_to=tuple(route_to or ())
    )
    if output == Output.json:
        render.print_json(view.to_dict())
    else:
        err.print(f"network {name} created: {view.subnet} ({view.mode}) on bridge {view.bridge}")


def _networks_table(items: list[NetworkView]) -> None:
    if not items:
        err.print("no networks yet: 'cloudlet network create NAME --subnet 10.80.1.0/24 --nat'")
        return
    _table(
        ["NAME", "SUBNET", "MODE", "ROUTED TO", "BRIDGE", "DHCP/DNS", "VMS"],
        [
            [
                n.name,
                n.subnet,
                n.mode,
                ", ".join(n.route_to) or "-",
                n.bridge,
                f"pid {n.dnsmasq_pid}" if n.dnsmasq_running else "[red]down[/]",
                ", ".join(v.name for v in n.vms) or "-",
            ]
            for n in items
        ],
    )


@network_app.command("list")
def network_list(output: OutputOpt = Output.table) -> None:
    """Networks, their policy and their VMs."""
    items = _ops().networks()
    if output == Output.json:
        render.print_json([n.to_dict() for n in items])
    else:
        _networks_table(items)


@network_app.command("show")
def network_show(name: NetArg, output: OutputOpt = Output.table) -> None:
    """One network with each VM's address, MAC, TAP and DNS name."""
    view = _ops().network(name)
    if output == Output.json:
        render.print_json(view.to_dict())
        return
    data = view.to_dict()
    del data["vms"]
    render.key_values(data)
    if view.vms:
        _table(
            ["VM", "ADDRESS", "DNS", "MAC", "TAP"],
            [[v.name, v.ip, v.dns, v.mac, v.tap] for v in view.vms],
        )


@network_app.command("delete")
def network_delete(name: NetArg) -> None:
    """Delete a network (refused while VMs are attached)."""
    render.said(_ops().network_delete(name))


@network_app.command("gc")
def network_gc(output: OutputOpt = Output.table) -> None:
    """Find and remove what a crash left: bridges, TAPs, dnsmasq, stale rules."""
    removed = _ops().gc()
    if output == Output.json:
        render.print_json(
            {"removed": [i.message for i in removed], "items": [i.to_dict() for i in removed]}
        )
    elif removed:
        for item in removed:
            err.print(f"removed {item.message}")
    else:
        err.print("nothing left over")


# ---------------------------------------------------------------- NICs
@nic_app.command("add")
def nic_add(vm: VmArg, network: NetArg) -> None:
    """Add a NIC on a network: hot-plugged into a running VM, or at its next start."""
    render.said(_ops().nic_add(vm, network))


@nic_app.command("remove")
def nic_remove(vm: VmArg, network: NetArg) -> None:
    """Remove a VM's NIC on a network (unplugged from a running VM)."""
    render.said(_ops().nic_remove(vm, network))


@nic_app.command("list")
def nic_list(vm: VmArg, output: OutputOpt = Output.table) -> None:
    """A VM's NICs with their fixed addresses."""
    items = _ops().nics(vm)
    if output == Output.json:
        render.print_json([n.to_dict() for n in items])
        return
    _table(
        ["NETWORK", "KIND", "ADDRESS", "DNS", "MAC", "TAP"],
        [[n.network, n.kind, n.ip, n.dns or "-", n.mac or "-", n.tap or "-"] for n in items],
    )


# ---------------------------------------------------------------- ports
@port_app.command("add")
def port_add(
    vm: VmArg,
    forward: Annotated[str, typer.Argument(help="HOST:GUEST[/PROTO], e.g. 8080:80/tcp")],
    network: Annotated[
        str | None,
        typer.Option(help="the NIC to forward to: nat or a network (default: the first NIC)"),
    ] = None,
) -> None:
    """Forward a host port to a guest port (DNAT on networks, hostfwd on user-mode NAT)."""
    render.said(_ops().port_add(vm, forward, network))


@port_app.command("list")
def port_list(vm: VmArg, output: OutputOpt = Output.table) -> None:
    """A VM's port forwards."""
    items = _ops().ports(vm)
    if output == Output.json:
        render.print_json([p.to_dict() for p in items])
        return
    if not items:
        err.print(f"{vm} has no port forwards: 'cloudlet port add {vm} 8080:80/tcp'")
        return
    _table(
        ["HOST PORT", "GUEST PORT", "PROTO", "NETWORK"],
        [[str(p.host_port), str(p.guest_port), p.proto, p.network] for p in items],
    )


@port_app.command("remove")
def port_remove(
    vm: VmArg, port: Annotated[str, typer.Argument(help="HOST_PORT[/PROTO], e.g. 8080/tcp")]
) -> None:
    """Remove a port forward."""
    render.said(_ops().port_remove(vm, port))


# ---------------------------------------------------------------- firewall
PortOpt = Annotated[str, typer.Option("--port", help="PORT[/PROTO], e.g. 22/tcp")]
FromOpt = Annotated[
    str | None, typer.Option("--from", help="source address or subnet (default: any)")
]


@firewall_app.command("allow")
def firewall_allow(vm: VmArg, port: PortOpt, source: FromOpt = None) -> None:
    """Allow inbound traffic to a port of the VM (from anywhere or one subnet)."""
    render.said(_ops().firewall_allow(vm, parse_rule(port, source)))


@firewall_app.command("remove")
def firewall_remove(vm: VmArg, port: PortOpt, source: FromOpt = None) -> None:
    """Remove one of the VM's own allow rules."""
    render.said(_ops().firewall_remove(vm, parse_rule(port, source)))


@firewall_app.command("apply")
def firewall_apply(vm: VmArg, group: Annotated[str, typer.Argument(help="group name")]) -> None:
    """Apply a firewall group to a VM."""
    render.said(_ops().firewall_apply(vm, group))


@firewall_app.command("unapply")
def firewall_unapply(vm: VmArg, group: Annotated[str, typer.Argument(help="group name")]) -> None:
    """Take a firewall group off a VM."""
    render.said(_ops().firewall_apply(vm, group, apply=False))


@firewall_app.command("list")
def firewall_list(vm: VmArg, output: OutputOpt = Output.table) -> None:
    """A VM's effective inbound rules (its own and its groups') and the default policy."""
    view = _ops().firewall_list(vm)
    if output == Output.json:
        render.print_json(view.to_dict())
        return
    err.print(f"default: {view.default}")
    if not view.enforced_on:
        err.print(f"[yellow]note:[/] {vm} has no NIC on a virtual network: rules are recorded only")
    if view.rules:
        _table(
            ["PORT", "PROTO", "FROM", "RULE"],
            [[str(r.port), r.proto, r.source, r.origin] for r in view.rules],
        )
    else:
        err.print("no allow rules")
    for forward in view.forwards:
        err.print(f"port forward {forward} (allowed in)")


@group_app.command("create")
def group_create(
    name: Annotated[str, typer.Argument(help="group name")],
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="PORT[/PROTO] to allow (repeatable)")
    ] = None,
    source: FromOpt = None,
) -> None:
    """Create a firewall group."""
    render.said(_ops().group_create(name, [parse_rule(a, source) for a in allow or ()]))


@group_app.command("list")
def group_list(output: OutputOpt = Output.table) -> None:
    """Firewall groups, their rules and the VMs they apply to."""
    items = _ops().groups()
    if output == Output.json:
        render.print_json([g.to_dict() for g in items])
        return
    _table(
        ["NAME", "RULES", "USED BY"],
        [[g.name, ", ".join(g.rules), ", ".join(g.used_by) or "-"] for g in items],
    )


@group_app.command("delete")
def group_delete(name: Annotated[str, typer.Argument(help="group name")]) -> None:
    """Delete a firewall group no VM uses."""
    render.said(_ops().group_delete(name))
