"""The inventory pages as pure functions: API models in, an HTML body out.

Nothing here reads the store or the request, so each page can be reasoned about (and
tested) from the data it is given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from devassign import schemas
from devassign.domain import DeviceState
from devassign.web.layout import (
    age,
    badge,
    count_bar,
    legend,
    live_part,
    out_of_service,
    taint_badges,
    taint_words,
    when,
)
from devassign.web.markup import Html, definition_list, esc, join, link, table, tag, url

EVENTS_PER_PAGE = 50
DEVICES_PER_PAGE = 500
HOSTS_PER_PAGE = 500
OVERVIEW_HOSTS = 20  # the overview's first hosts by name; the hosts page pages through all


# ---------------------------------------------------------------- overview


# The types table's numbers, as the API names them (``out_of_service`` is the page's own sum).
COUNTS = (
    "total",
    "available",
    "reserved",
    "assigned",
    "cleaning",
    "out_of_service",
    "tainted",
    "partitioned",
    "down",
)


def _counts(c: schemas.StateCounts) -> dict[str, int]:
    numbers = c.model_dump()
    numbers["out_of_service"] = out_of_service(c)
    return {key: numbers[key] for key in COUNTS}


def types_table(types: Sequence[schemas.ResourceType]) -> Html:
    """Each number carries its name (``data-count``) and each row its type (``data-type``)."""
    rows = [
        (
            Html(tag("strong", t.name) + tag("div", t.description, class_="muted")),
            *(tag("span", n, data_count=key) for key, n in _counts(t.counts).items()),
            count_bar(t.counts),
        )
        for t in types
    ]
    headers = ("type", *(key.replace("_", " ") for key in COUNTS), "")
    empty = "no resource types yet: create one with `devassign type create NAME --description TEXT`"
    keys = [{"data_type": t.name} for t in types]
    return Html(
        table(headers, rows, numeric=range(1, len(COUNTS) + 1), empty=empty, row_attrs=keys) + legend()
    )


def hosts_table(hosts: Sequence[schemas.Host], now: datetime) -> Html:
    rows = [
        (
            link(h.name, f"/ui/hosts/{h.name}"),
            Html(join([badge(h.status), taint_badges(h.taints)], " ")),
            h.device_count,
            age(h.last_report_at, now),
            age(h.last_seen_at, now),
        )
        for h in hosts
    ]
    headers = ("host", "status", "devices", "last report", "last seen")
    keys = [{"data_host": h.name, "data_status": h.status} for h in hosts]
    empty = "no host has reported yet: start `devassign agent run`"
    return table(headers, rows, numeric=(2,), empty=empty, row_attrs=keys)


def events_table(events: Sequence[schemas.Event], *, operator: bool, compact: bool = False) -> Html:
    """Newest first; ``compact`` (the overview) drops the date, the device and the actor to fit
    beside the hosts (the message names the device)."""

    def where(value: str | None, key: str) -> Html:
        if not value:
            return Html("")
        return link(value, "/ui/events", **{key: value}) if operator or key == "consumer" else esc(value)

    rows = [
        (
            tag(
                "span",
                when(e.at)[11:] if compact else when(e.at),
                class_="mono nowrap",
                title=f"{when(e.at)} UTC, event {e.id}",
            ),
            e.action,
            where(e.host, "host"),
            *(() if compact else (tag("span", where(e.device, "device"), class_="mono"),)),
            where(e.consumer, "consumer"),
            e.message,
            *(() if compact else (e.actor,)),
        )
        for e in events
    ]
    headers: tuple[str, ...] = ("at (UTC)", "action", "host", *(() if compact else ("device",)))
    headers += ("consumer", "message", *(() if compact else ("actor",)))
    return table(headers, rows)


def overview(
    types: Sequence[schemas.ResourceType],
    now: datetime,
    *,
    hosts: Sequence[schemas.Host] | None,
    events: Sequence[schemas.Event],
    allocations: Sequence[schemas.Allocation] | None,
    host_counts: tuple[int, int] | None = None,
) -> Html:
    """Types with what is left; hosts and the newest events for operators, own allocations for members.

    ``hosts``: the first :data:`OVERVIEW_HOSTS` by name; ``host_counts``: (all hosts, of which
    up), counted apart so a region of 100,000 hosts is not listed on the overview."""
    parts = [
        tag("h1", "Overview"),
        tag("div", tag("h2", "Resource types"), types_table(types), class_="card"),
    ]
    side: list[Html] = []
    if hosts is not None:
        total, up = host_counts or (len(hosts), sum(1 for h in hosts if h.status == "up"))
        shown = hosts[:OVERVIEW_HOSTS]
        more = (
            tag("p", link(f"all {total:,} hosts", "/ui/hosts"), class_="muted") if total > len(shown) else ""
        )
        summary = Html(
            tag("h2", "Hosts ", tag("span", f"{up:,} up, {total - up:,} down", class_="muted"))
            + hosts_table(shown, now)
            + more
        )
        side.append(tag("div", summary, class_="card"))
    if allocations is not None:
        side.append(
            tag(
                "div",
                tag("h2", "Your project's allocations"),
                allocations_table(allocations, operator=False),
                class_="card",
            )
        )
    recent = tag(
        "div",
        tag("h2", "Newest events ", link("all", "/ui/events")),
        events_table(events, operator=hosts is not None, compact=True),
        class_="card",
    )
    parts.append(tag("div", join(side), recent, class_="grid"))
    return join(parts)


# ---------------------------------------------------------------- hosts and devices


def hosts_listing(
    hosts: Sequence[schemas.Host], now: datetime, *, after: str | None = None, total: int | None = None
) -> Html:
    """A page of :data:`HOSTS_PER_PAGE` hosts by name after ``after`` (one more in ``hosts``
    means there are more), with links to the first and the next page."""
    shown = hosts[:HOSTS_PER_PAGE]
    pager: list[Html] = []
    if after is not None:
        pager.append(link("first", "/ui/hosts"))
    if len(hosts) > HOSTS_PER_PAGE:
        pager.append(link("next", "/ui/hosts", after=shown[-1].name))
    count = "" if total is None else tag("p", f"{total:,} hosts, by name", class_="muted")
    return join([count, hosts_table(shown, now), tag("div", *pager, class_="pager")])


@dataclass(frozen=True)
class Group:
    """Devices that share a parent (a PF's VFs, a GPU's vGPU slots), and the parent if it is a device."""

    parent: str
    device: schemas.Device | None
    children: list[schemas.Device]


def group_by_parent(devices: Sequence[schemas.Device]) -> tuple[list[Group], list[schemas.Device]]:
    """Groups by parent address, and the devices that are nobody's parent or child."""
    by_address = {d.address: d for d in devices}
    children: dict[str, list[schemas.Device]] = defaultdict(list)
    for d in devices:
        if d.parent:
            children[d.parent].append(d)
    groups = [
        Group(p, by_address.get(p), sorted(kids, key=lambda d: d.address))
        for p, kids in sorted(children.items())
    ]
    alone = [d for d in devices if not d.parent and d.address not in children]
    return groups, alone


_DEVICE_HEADERS = (
    "address",
    "type",
    "kind",
    "state",
    "consumer",
    "numa",
    "iommu",
    "driver",
    "vendor:product",
)


def _device_cells(d: schemas.Device, *, with_host: bool = False) -> tuple[object, ...]:
    cells: tuple[object, ...] = (
        tag("span", link(d.address, f"/ui/devices/{d.id}"), class_="mono"),
        d.type,
        d.kind.value,
        join([badge(d.state.value), "" if d.healthy else badge("unhealthy"), taint_badges(d.taints)], " "),
        link(d.consumer, "/ui/allocations", consumer=d.consumer) if d.consumer else "",
        "" if d.numa_node is None else d.numa_node,
        "" if d.iommu_group is None else d.iommu_group,
        d.driver,
        f"{d.vendor_id or '?'}:{d.product_id or '?'}" if d.vendor_id or d.product_id else "",
    )
    return (link(d.host, f"/ui/hosts/{d.host}"), *cells) if with_host else cells


def _row(cells: Sequence[object], cls: str | None = None) -> Html:
    return tag("tr", *(tag("td", c) for c in cells), class_=cls)


_GROUP_WORDS = {"sriov_vf": ("PF", "VFs"), "mdev_type": ("GPU", "vGPU slots")}


def grouped_devices(devices: Sequence[schemas.Device]) -> Html:
    """One table: each parent as a heading row, its children indented under it."""
    if not devices:
        return tag("p", "this host reports no devices", class_="muted")
    groups, alone = group_by_parent(devices)
    rows: list[Html] = []
    for g in groups:
        what, kids = _GROUP_WORDS.get(g.children[0].kind.value, ("parent", "devices"))
        free = sum(1 for c in g.children if c.state is DeviceState.AVAILABLE)
        label = Html(
            esc(f"{what} ")
            + tag("span", g.parent, class_="mono")
            + tag("span", f"{len(g.children)} {kids}, {free} available", class_="muted")
        )
        if g.device is not None:
            rows.append(_row(_device_cells(g.device), "group"))
        else:
            rows.append(tag("tr", tag("td", label, colspan=len(_DEVICE_HEADERS)), class_="group"))
        rows.extend(_row(_device_cells(c), "child") for c in g.children)
    if alone:
        if groups:
            rows.append(
                tag("tr", tag("td", "standalone devices", colspan=len(_DEVICE_HEADERS)), class_="group")
            )
        rows.extend(_row(_device_cells(d)) for d in alone)
    head = tag("thead", tag("tr", *(tag("th", h) for h in _DEVICE_HEADERS)))
    return tag("table", head, tag("tbody", *rows))


def _short(address: str, *, alone: bool = False) -> str:
    """A cell's label: what tells a device from its siblings (``02.1`` of ``0000:3b:02.1``;
    a standalone device's bus too, ``af:00.0``)."""
    if "/" in address:
        return address.rsplit("/", 1)[1]
    if address.count(":") < 2:
        return address
    return address.split(":", 1)[1] if alone else address.rsplit(":", 1)[1]


# Taints that keep a free device from new claims: its cell is hatched ("None" only informs).
BLOCKING = frozenset({"NoSchedule", "Drain"})


def _cell(d: schemas.Device, *, parent: bool = False, alone: bool = False) -> Html:
    state = d.state.value if d.healthy else "unhealthy"
    blocked = any(t.effect in BLOCKING for t in d.taints)
    words = [d.address, d.type, d.state.value + ("" if d.healthy else ", unhealthy")]
    if d.consumer:
        words.append(f"held by {d.consumer}")
    words += [f"taint {taint_words(t)}" for t in d.taints]
    return tag(
        "a",
        _short(d.address, alone=alone or parent),
        href=f"/ui/devices/{d.id}",
        class_=" ".join(
            ["cell", f"s-{state}", *(["parent"] if parent else []), *(["tainted"] if blocked else [])]
        ),
        title="; ".join(words),
        data_device=d.id,
        data_state=d.state.value,
        data_taint=" ".join(sorted({t.effect for t in d.taints})) or None,
    )


def _numa(d: schemas.Device, parent: schemas.Device | None) -> int | None:
    return d.numa_node if d.numa_node is not None or parent is None else parent.numa_node


def device_grid(devices: Sequence[schemas.Device]) -> Html:
    """Per NUMA node, each parent (a PF, a GPU) with its devices as cells coloured by state;
    hatched when a taint keeps them from new claims. Each cell links to its device; its
    tooltip says the rest."""
    if not devices:
        return Html("")
    groups, alone = group_by_parent(devices)
    blocks: dict[int | None, list[Html]] = defaultdict(list)
    for g in groups:
        what, kids = _GROUP_WORDS.get(g.children[0].kind.value, ("parent", "devices"))
        members = ([g.device] if g.device is not None else []) + g.children
        by_numa: dict[int | None, list[schemas.Device]] = defaultdict(list)
        for d in members:
            by_numa[_numa(d, g.device)].append(d)
        for numa, found in by_numa.items():
            label = Html(esc(f"{what} ") + tag("span", g.parent, class_="mono"))
            cells = [_cell(d, parent=d is g.device) for d in found]
            blocks[numa].append(_grid_group(label, f"{len(g.children)} {kids}", cells))
    standalone: dict[int | None, list[schemas.Device]] = defaultdict(list)
    for d in alone:
        standalone[d.numa_node].append(d)
    for numa, found in standalone.items():
        size = f"{len(found)} device{'s' if len(found) > 1 else ''}"
        blocks[numa].append(_grid_group(Html("standalone"), size, [_cell(d, alone=True) for d in found]))
    order = sorted(blocks, key=lambda n: (n is None, n or 0))
    return join(
        tag(
            "div",
            tag("h3", "no NUMA node" if numa is None else f"NUMA node {numa}"),
            *blocks[numa],
            class_="numa",
            data_numa="none" if numa is None else numa,
        )
        for numa in order
    )


def _grid_group(label: Html, size: str, cells: list[Html]) -> Html:
    return tag(
        "div",
        tag("div", label, " ", tag("span", size, class_="muted"), class_="plabel"),
        tag("div", *cells, class_="cells"),
        class_="pgroup",
    )


def host_page(
    host: schemas.Host, devices: Sequence[schemas.Device], events: Sequence[schemas.Event], now: datetime
) -> Html:
    facts = definition_list(
        {
            "status": badge(host.status),
            "taints": taint_badges(host.taints) or "none",
            "host id": host.host_id or "-",
            "generation": host.generation,
            "last report": age(host.last_report_at, now),
            "last seen": age(host.last_seen_at, now),
            "devices": host.device_count,
            "first seen": when(host.created_at),
        }
    )
    return join(
        [
            tag("h1", "Host ", tag("span", host.name, class_="mono")),
            tag("div", facts, class_="card"),
            tag(
                "div",
                tag(
                    "h2",
                    "Device map ",
                    tag(
                        "span",
                        "by NUMA node and parent; hatched: tainted NoSchedule or Drain",
                        class_="muted",
                    ),
                ),
                device_grid(devices),
                legend(),
                class_="card",
                id="device-map",
            ),
            tag(
                "h2",
                "Devices ",
                tag("span", "grouped by parent: PF with its VFs, GPU with its vGPU slots", class_="muted"),
            ),
            grouped_devices(devices),
            tag("h2", "Newest events ", link("all", "/ui/events", host=host.name)),
            events_table(events, operator=True),
        ]
    )


def _select(name: str, chosen: str | None, options: Sequence[str], *, blank: str = "any") -> Html:
    opts = [tag("option", blank, value="")]
    opts += [tag("option", o, value=o, selected=o == chosen) for o in options]
    return tag("label", name, tag("select", *opts, name=name))


def _text(name: str, value: str | None, *, placeholder: str = "") -> Html:
    return tag(
        "label", name, tag("input", type="text", name=name, value=value or "", placeholder=placeholder)
    )


def _filters(action: str, *fields: Html) -> Html:
    return tag(
        "form",
        *fields,
        tag("button", "filter", type="submit", class_="primary"),
        link("clear", action),
        method="get",
        action=action,
        class_="filters",
    )


def devices_page(
    devices: Sequence[schemas.Device],
    *,
    host: str | None,
    type: str | None,
    state: str | None,
    offset: int,
    type_names: Sequence[str],
) -> Html:
    """Devices, :data:`DEVICES_PER_PAGE` at a time; the host is typed, not chosen from a list
    (a region has too many for one)."""
    form = _filters(
        "/ui/devices",
        _text("host", host, placeholder="host name"),
        _select("type", type, type_names),
        _select("state", state, [s.value for s in DeviceState]),
    )
    shown = devices[:DEVICES_PER_PAGE]
    rows = [_device_cells(d, with_host=True) for d in shown]
    pager: list[Html] = []
    if offset:
        pager.append(
            link(
                "previous",
                "/ui/devices",
                host=host,
                type=type,
                state=state,
                offset=max(0, offset - DEVICES_PER_PAGE) or None,
            )
        )
    if len(devices) > DEVICES_PER_PAGE:
        pager.append(
            link("next", "/ui/devices", host=host, type=type, state=state, offset=offset + DEVICES_PER_PAGE)
        )
    return join(
        [
            tag("h1", "Devices"),
            form,
            table(("host", *_DEVICE_HEADERS), rows, empty="no device matches"),
            tag("div", *pager, class_="pager"),
        ]
    )


def _partition(device: schemas.Device) -> str:
    """``0000:3b:00.0, mode GRID T4-4Q, takes framebuffer_mb 4096 of 16384`` for a partition."""
    if device.pool is None:
        return "-"
    takes = ", ".join(
        f"{k} {v} of {device.pool_counters.get(k, 0)}" for k, v in sorted(device.consumes.items())
    )
    parts = [device.pool, f"mode {device.mode}" if device.mode else "", f"takes {takes}" if takes else ""]
    return ", ".join(p for p in parts if p)


def device_page(
    device: schemas.Device, events: Sequence[schemas.Event], *, before: int | None = None
) -> Html:
    """The device and its history, newest first, :data:`EVENTS_PER_PAGE` at a time (one event
    more in ``events`` means there are older ones); ``before``: this page's events are older."""
    facts = {
        "host": link(device.host, f"/ui/hosts/{device.host}"),
        "address": tag("span", device.address, class_="mono"),
        "type": device.type,
        "kind": device.kind.value,
        "state": Html(badge(device.state.value) + esc(f"  since {when(device.state_changed_at)} UTC")),
        "healthy": "yes" if device.healthy else f"no: {device.health_reason or 'its check failed'}",
        "taints": join(tag("div", badge_of(t), " ", t.reason) for t in device.taints) or "none",
        "consumer": link(device.consumer, "/ui/allocations", consumer=device.consumer)
        if device.consumer
        else "-",
        "parent": device.parent or "-",
        "carved from": _partition(device),
        "vendor:product": f"{device.vendor_id or '?'}:{device.product_id or '?'}",
        "numa node": "-" if device.numa_node is None else device.numa_node,
        "iommu group": "-" if device.iommu_group is None else device.iommu_group,
        "driver": device.driver or "-",
        "id": tag("span", device.id, class_="mono"),
    }
    attrs = table(
        ("attribute", "value"),
        [(k, tag("span", v, class_="mono")) for k, v in sorted(device.attributes.items())],
        empty="no extra attributes",
    )
    here = f"/ui/devices/{device.id}"
    shown = events[:EVENTS_PER_PAGE]
    pager: list[Html] = []
    if before is not None:
        pager.append(link("newest", here))
    if len(events) > EVENTS_PER_PAGE:
        pager.append(link("older", here, before=shown[-1].id))
    return join(
        [
            tag("h1", "Device ", tag("span", device.address, class_="mono")),
            tag("div", definition_list(facts), class_="card"),
            tag("h2", "Attributes"),
            attrs,
            tag(
                "h2",
                "History ",
                tag("span", "newest first" if before is None else f"before event {before}", class_="muted"),
            ),
            events_table(shown, operator=True),
            tag("div", *pager, class_="pager"),
        ]
    )


def badge_of(taint: schemas.Taint) -> Html:
    return tag("span", f"taint {taint.effect}", class_=f"badge t-{taint.effect}", title=taint_words(taint))


# ---------------------------------------------------------------- allocations and events


def allocations_table(allocations: Sequence[schemas.Allocation], *, operator: bool) -> Html:
    def devices(a: schemas.Allocation) -> Html:
        return join(
            tag(
                "div",
                tag("span", d.address, class_="mono"),
                f" {d.type} ",
                badge(d.state.value) if d.state else "",
            )
            for d in a.devices
        )

    rows = [
        (
            tag("span", a.consumer, class_="mono"),
            a.project,
            link(a.host, f"/ui/hosts/{a.host}") if operator else a.host,
            badge(a.state),
            devices(a),
            when(a.created_at),
            when(a.expires_at) if a.expires_at else "",
        )
        for a in allocations
    ]
    headers = ("consumer", "project", "host", "state", "devices", "created (UTC)", "expires (UTC)")
    return table(headers, rows, empty="no allocations")


def allocations_page(
    allocations: Sequence[schemas.Allocation],
    *,
    consumer: str | None,
    host: str | None,
    project: str | None,
    released: bool,
    operator: bool,
) -> Html:
    fields = [_text("consumer", consumer)]
    if operator:
        fields += [_text("host", host), _text("project", project)]
    fields.append(
        tag(
            "label",
            "released too",
            tag("input", type="checkbox", name="released", value="1", checked=released),
        )
    )
    return join(
        [
            tag("h1", "Allocations"),
            _filters("/ui/allocations", *fields),
            allocations_table(allocations, operator=operator),
        ]
    )


def events_page(
    events: Sequence[schemas.Event],
    *,
    host: str | None,
    device: str | None,
    consumer: str | None,
    before: int | None,
    operator: bool,
    live: str | None = None,
) -> Html:
    """Newest first, :data:`EVENTS_PER_PAGE` at a time; one event more in ``events`` means there
    are older. ``live``: the fragment that replaces the list (not the filters) as events come."""
    fields = [_text("host", host), _text("device", device, placeholder="id or address")] if operator else []
    fields.append(_text("consumer", consumer))
    listing = events_list(
        events, host=host, device=device, consumer=consumer, before=before, operator=operator
    )
    return join([tag("h1", "Events"), _filters("/ui/events", *fields), live_part(live, listing)])


def events_list(
    events: Sequence[schemas.Event],
    *,
    host: str | None,
    device: str | None,
    consumer: str | None,
    before: int | None,
    operator: bool,
) -> Html:
    """The events page's table and its links to older and newer pages."""
    shown = events[:EVENTS_PER_PAGE]
    pager: list[Html] = []
    if before is not None:
        pager.append(link("newest", "/ui/events", host=host, device=device, consumer=consumer))
    if len(events) > EVENTS_PER_PAGE:
        older = url("/ui/events", host=host, device=device, consumer=consumer, before=shown[-1].id)
        pager.append(tag("a", "older", href=older))
    return join([events_table(shown, operator=operator), tag("div", *pager, class_="pager")])
