"""The explain form: would a request fit, where, and why not. It never claims.

The form takes the flavor's short form (``hardware_resource:T=N``, one per line) because that
is what people paste; it becomes the same ``ClaimBody`` the API's ``POST /v1/explain`` takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from devassign.scheduler import ClaimBody, RequestError, parse_specs
from devassign.scheduler.reasons import funnel_sentence
from devassign.web.layout import badge, error_box
from devassign.web.markup import Html, join, link, table, tag

EXAMPLE = "hardware_resource:NIC_VF_1G=1"
PLACEMENTS_SHOWN = 5


class FormError(Exception):
    """What the person typed cannot be read as a request."""


def claim_body(specs: str, hosts: str) -> ClaimBody:
    """``ClaimBody`` from the form's text: specs one per line, hosts separated by spaces or commas."""
    lines = [line.strip() for line in specs.splitlines() if line.strip()]
    if not lines:
        raise FormError(f"write at least one spec, e.g. {EXAMPLE}")
    try:
        parse_specs(lines)  # the same checks and messages as `devassign explain --spec`
    except RequestError as exc:
        raise FormError(exc.message) from exc
    extra = dict(line.partition("=")[::2] for line in lines)
    names = [h for h in re.split(r"[\s,]+", hosts) if h]
    return ClaimBody(extra_specs={k.strip(): v.strip() for k, v in extra.items()}, hosts=names)


def form(specs: str, hosts: str, *, operator: bool = True) -> Html:
    """The request form; naming hosts is for operators, so members get no hosts field."""
    target = tag(
        "label",
        "only these hosts (optional)",
        tag("input", type="text", name="hosts", value=hosts, placeholder="compute-1 compute-2"),
    )
    return tag(
        "form",
        tag(
            "label",
            "specs, one per line",
            tag("textarea", specs, name="specs", rows="4", cols="44", placeholder=EXAMPLE),
        ),
        target if operator else "",
        tag("button", "explain", type="submit", class_="primary"),
        method="get",
        action="/ui/explain",
        class_="filters",
    )


def result(found: Mapping[str, Any], *, operator: bool, addresses: Mapping[str, str] | None = None) -> Html:
    """The placer's explanation: verdict, per-filter counts, each host's reason, the best placements.

    ``addresses`` maps device ids to addresses, so a placement reads as devices, not UUIDs.
    """
    names = addresses or {}
    fits = bool(found.get("fits"))
    funnel_counts: dict[str, int] = dict(found.get("funnel") or {})
    sentence = ("It fits: " if fits else "It does not fit: ") + str(found.get("summary", ""))
    # The SQL pre-filter's removals, which explain "0 hosts considered", in the words of the
    # CLI and of a refused claim (its tainted_T and partitioned_T hosts are some of lacking_T).
    before = "" if fits else funnel_sentence(funnel_counts, found.get("taints") or ())
    if before:
        sentence += f"; before scheduling: {before}"
    verdict = tag("div", sentence, class_="ok" if fits else "error")
    removed = table(
        ("filter", "hosts removed"),
        list(dict(found.get("removed") or {}).items()),
        numeric=(1,),
        empty="no filter removed a host",
    )
    funnel = table(("step", "hosts"), list(funnel_counts.items()), numeric=(1,), empty="-")

    def host_cell(name: str) -> Html:
        return link(name, f"/ui/hosts/{name}") if operator else Html(tag("span", name))

    hosts = table(
        ("host", "fits", "reason", "why"),
        [
            (
                host_cell(h["host"]),
                badge("yes" if h["fits"] else "no"),
                h.get("reason") or "",
                h.get("message") or "",
            )
            for h in found.get("hosts") or []
        ],
        empty="no host was considered",
    )
    parts = [
        verdict,
        tag(
            "p",
            f"{found.get('considered', 0)} {'host' if found.get('considered') == 1 else 'hosts'} "
            f"considered, {found.get('feasible', 0)} fit",
            class_="muted",
        ),
        tag(
            "div",
            tag("div", tag("h2", "Scheduler filters"), removed),
            tag("div", tag("h2", "Inventory pre-filter"), funnel),
            class_="grid",
        ),
    ]
    if not operator:
        # Members get reasons with how many hosts each refused, never host names or devices.
        reasons = list(dict(found.get("reasons") or {}).items())
        parts += [tag("h2", "Why hosts were refused"), table(("reason", "hosts"), reasons, numeric=(1,))]
        return join(parts)
    parts += [tag("h2", "Each host"), hosts]
    if found.get("closest"):
        closest = [
            (host_cell(h["host"]), h.get("reason") or "", h.get("message") or "") for h in found["closest"]
        ]
        parts += [tag("h2", "Closest hosts"), table(("host", "reason", "why"), closest)]
    if found.get("placements"):

        def devices(p: Mapping[str, Any]) -> Html:
            def line(name: str, d: Mapping[str, Any]) -> Html:
                label = d["type"] if name == d["type"] else f"{name} ({d['type']})"
                ids = ", ".join(names.get(i, i) for i in d["ids"])
                return tag("div", f"{label}: ", tag("span", ids, class_="mono"))

            return join(line(name, d) for name, d in (p.get("devices") or {}).items())

        shown = list(found["placements"])[:PLACEMENTS_SHOWN]
        rows = [(host_cell(p["host"]), p.get("score", ""), devices(p)) for p in shown]
        parts += [
            tag("h2", "Where it would go, best first"),
            table(("host", "score", "devices"), rows, numeric=(1,)),
        ]
    return join(parts)


def page(
    specs: str,
    hosts: str,
    found: Mapping[str, Any] | None,
    error: str | None,
    *,
    operator: bool,
    addresses: Mapping[str, str] | None = None,
) -> Html:
    intro = tag(
        "p",
        "Asks the scheduler where a request would go and why not, without claiming anything. The same as ",
        tag("code", "devassign explain --spec ..."),
        ".",
        class_="muted",
    )
    parts = [tag("h1", "Explain a request"), intro, form(specs, hosts, operator=operator)]
    if error:
        parts.append(error_box(error))
    if found is not None:
        parts.append(result(found, operator=operator, addresses=addresses))
    return join(parts)
