"""The page shell (head, inline CSS, navigation) and small widgets the pages share.

The CSS is inline and the one script (``static/live.js``, live updates) is served by the
package: the dashboard must work on a closed network, so there is no CDN and no font. The
script is never inline: the pages' Content-Security-Policy admits scripts of this server only.
"""

from __future__ import annotations

from datetime import UTC, datetime

from devassign import schemas
from devassign.domain import Role
from devassign.store import Principal
from devassign.web.assets import LIVE_JS_URL
from devassign.web.markup import Html, join, tag

CSS = """
:root { --fg:#1d2330; --muted:#6b7280; --line:#e3e6eb; --bg:#f6f7f9; --accent:#2456c7;
  --available:#2f9e44; --reserved:#e8a317; --assigned:#2456c7; --cleaning:#8e44ad;
  --bad:#d63939; --other:#adb5bd; --tainted:#795548; --partitioned:#9c8ade; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:0 20px; display:flex; align-items:center; gap:24px; }
header .brand { font-weight:700; font-size:16px; padding:12px 0; }
header nav a { color:#cfd6e4; text-decoration:none; padding:14px 10px; display:inline-block; }
header nav a.on, header nav a:hover { color:#fff; box-shadow: inset 0 -3px 0 #6ea0ff; }
header .who { margin-left:auto; color:#cfd6e4; font-size:13px; display:flex; gap:8px; align-items:center; }
header .who button { background:none; border:1px solid #56607a; color:#cfd6e4; border-radius:4px;
  padding:2px 8px; cursor:pointer; }
main { padding:18px 20px 40px; max-width:1400px; }
h1 { font-size:20px; margin:4px 0 14px; }
h2 { font-size:16px; margin:22px 0 8px; }
a { color:var(--accent); }
.muted { color:var(--muted); }
.card { background:#fff; border:1px solid var(--line); border-radius:6px; padding:12px 14px;
  margin-bottom:14px; }
.card > h2:first-child { margin-top:0; }
.grid { display:grid; grid-template-columns: 2fr 3fr; gap:14px; }
.grid > * { min-width:0; overflow-x:auto; }
@media (max-width: 1000px) { .grid { grid-template-columns: 1fr; } }
table { border-collapse:collapse; width:100%; background:#fff; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { white-space:nowrap; font-size:12px; text-transform:uppercase; letter-spacing:.03em; color:var(--muted);
  font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
td a, .nowrap { white-space:nowrap; }
code, .mono { font-family: ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
.badge { display:inline-block; padding:0 7px; border-radius:10px; font-size:12px; color:#fff;
  background:var(--other); white-space:nowrap; }
.s-available, .s-up, .s-yes { background:var(--available); }
.s-reserved { background:var(--reserved); }
.s-assigned { background:var(--assigned); }
.s-cleaning { background:var(--cleaning); }
.s-unhealthy, .s-quarantined, .s-missing, .s-down, .s-no { background:var(--bad); }
.bar { display:flex; height:12px; width:220px; border-radius:3px; overflow:hidden; background:#eef0f3; }
.bar span { display:block; height:100%; }
.bar .available { background:var(--available); } .bar .reserved { background:var(--reserved); }
.bar .assigned { background:var(--assigned); } .bar .cleaning { background:var(--cleaning); }
.bar .bad { background:var(--bad); }
.legend span { margin-right:12px; font-size:12px; color:var(--muted); }
.legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px; }
form.filters { display:flex; gap:10px; align-items:end; flex-wrap:wrap; margin-bottom:12px; }
label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
input, select, textarea { font:inherit; padding:4px 6px; border:1px solid #c8cdd6; border-radius:4px; }
textarea { font-family: ui-monospace,Menlo,Consolas,monospace; font-size:13px; }
button.primary { background:var(--accent); color:#fff; border:0; border-radius:4px; padding:6px 14px;
  cursor:pointer; }
.error { background:#fdecec; border:1px solid #f3b4b4; color:#8a1c1c; padding:8px 12px; border-radius:6px; }
.ok { background:#e9f7ec; border:1px solid #b2dfbc; color:#1b5e20; padding:8px 12px; border-radius:6px; }
tr.child td:first-child { padding-left:28px; }
tr.group .muted { font-weight:400; margin-left:10px; }
tr.group td { background:#f2f4f8; font-weight:600; }
.pager { margin-top:10px; display:flex; gap:14px; }
dl { display:grid; grid-template-columns: max-content 1fr; gap:4px 16px; margin:0; }
dt { color:var(--muted); } dd { margin:0; }
header .live { font-size:12px; padding:0 7px; border-radius:10px; }
header .live.on { background:var(--available); color:#fff; }
header .live.off { background:var(--reserved); color:#1d2330; }
.bar .tainted, .t-NoSchedule, .t-Drain { background:var(--tainted); }
.bar .partitioned { background:var(--partitioned); } .bar .down { background:var(--other); }
.t-None { background:var(--other); }
.numa { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:10px; }
.numa > h3 { flex-basis:100%; font-size:13px; margin:4px 0 0; color:var(--muted); font-weight:600; }
.pgroup { border:1px solid var(--line); border-radius:6px; padding:6px 8px; background:#fff; }
.pgroup .plabel { font-size:12px; color:var(--muted); margin-bottom:4px; }
.cells { display:flex; flex-wrap:wrap; gap:3px; max-width:420px; }
.cell { display:inline-block; min-width:34px; height:26px; padding:0 4px; line-height:26px;
  text-align:center; border-radius:4px; color:#fff; font-size:11px; text-decoration:none;
  font-family: ui-monospace,Menlo,Consolas,monospace; }
.cell.s-removed { background:var(--other); }
.cell.parent { box-shadow: inset 0 0 0 2px #1d2330; }
.cell.tainted { outline:2px solid var(--tainted); outline-offset:1px;
  background-image: repeating-linear-gradient(135deg, rgba(0,0,0,.38) 0 3px, transparent 3px 7px); }
"""


# No icon: a browser would otherwise ask for /favicon.ico, a route this server does not have.
NO_ICON = tag("link", rel="icon", href="data:,")


def page(
    title: str,
    body: Html,
    *,
    viewer: Principal,
    auth: bool,
    active: str = "",
    refresh: int | None = None,
    live: str | None = None,
) -> Html:
    """A whole document: the navigation fits the viewer's role (members see no hosts).

    ``live``: the page's event stream (``/ui/events/stream?...``); with it the page loads
    ``live.js``, which replaces the page's ``data-live`` parts as events come, and ``refresh``
    reloads the whole page only in a browser without scripts.
    """
    items = [("overview", "/ui/", "Overview")]
    if viewer.role is not Role.MEMBER:
        items += [("hosts", "/ui/hosts", "Hosts"), ("devices", "/ui/devices", "Devices")]
    items += [
        ("allocations", "/ui/allocations", "Allocations"),
        ("events", "/ui/events", "Events"),
        ("explain", "/ui/explain", "Explain"),
    ]
    nav = tag(
        "nav",
        *(tag("a", text, href=href, class_="on" if key == active else None) for key, href, text in items),
    )
    who = tag("span", f"{viewer.name} ({viewer.role.value})")
    if auth:
        who = Html(
            who
            + tag(
                "form",
                tag("button", "sign out", type="submit"),
                method="post",
                action="/ui/logout",
                style="margin:0",
            )
        )
    else:
        who = Html(who + tag("span", "auth off", class_="badge s-down"))
    if live:
        who = Html(tag("span", "", id="live-status", class_="live", role="status") + who)
    reload = tag("meta", http_equiv="refresh", content=str(refresh)) if refresh else Html("")
    head = join(
        [
            tag("meta", charset="utf-8"),
            tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
            NO_ICON,
            tag("noscript", reload) if live and refresh else reload,
            tag("title", f"{title} - devassign"),
            tag("style", Html(CSS)),
            tag("script", src=LIVE_JS_URL, defer=True) if live else "",
        ]
    )
    header = tag("header", tag("div", "devassign", class_="brand"), nav, tag("div", who, class_="who"))
    main = tag("body", header, tag("main", body), data_stream=live)
    return Html("<!doctype html>\n" + tag("html", tag("head", head), main, lang="en"))


def live_part(fragment: str | None, body: Html) -> Html:
    """A part of a page that ``live.js`` replaces with the HTML of ``fragment`` (a
    ``/ui/fragments/...`` route) as events come; without a fragment, the body as it is."""
    return body if fragment is None else tag("div", body, data_live=fragment)


def badge(state: object) -> Html:
    return tag("span", state, class_=f"badge s-{state}")


def taint_words(taint: schemas.Taint) -> str:
    """What a taint says, for a tooltip: its effect, why, who set it, what it covers."""
    what = (
        f"device {taint.device}"
        if taint.device_id
        else (f"parent {taint.parent} and its devices" if taint.parent else f"host {taint.host}")
    )
    until = f", until {when(taint.expires_at)} UTC" if taint.expires_at else ""
    return f"{taint.effect}: {taint.reason} ({what}; set by {taint.set_by}{until})"


def taint_badges(taints: list[schemas.Taint]) -> Html:
    """One badge per taint effect: NoSchedule and Drain keep free devices from new claims."""
    effects = sorted({t.effect for t in taints})
    return join(
        tag(
            "span",
            f"taint {effect}",
            class_=f"badge t-{effect}",
            title="; ".join(taint_words(t) for t in taints if t.effect == effect),
        )
        for effect in effects
    )


def count_bar(counts: schemas.StateCounts) -> Html:
    """One bar per type: how the live devices split between the states that matter."""
    live = counts.total  # removed devices are history, not counted in total
    if live <= 0:
        return tag("div", class_="bar", title="no devices")
    parts = [
        ("available", counts.available),
        ("reserved", counts.reserved),
        ("assigned", counts.assigned),
        ("cleaning", counts.cleaning),
        ("tainted", counts.tainted),
        ("partitioned", counts.partitioned),
        ("down", counts.down),
        ("bad", out_of_service(counts)),
    ]
    spans = [
        tag("span", class_=cls, style=f"width:{100 * n / live:.2f}%", title=f"{n} {cls}")
        for cls, n in parts
        if n
    ]
    return tag("div", *spans, class_="bar", title=", ".join(f"{n} {c}" for c, n in parts if n))


def legend() -> Html:
    names = [
        ("available", "available"),
        ("reserved", "reserved"),
        ("assigned", "assigned"),
        ("cleaning", "cleaning"),
        ("tainted", "free but tainted"),
        ("partitioned", "free, but its GPU or PF cannot give it now"),
        ("down", "free, on a host that is down"),
        ("bad", "unhealthy / quarantined / missing"),
    ]
    return tag(
        "div",
        *(
            tag("span", Html(f'<i class="bar-key" style="background:var(--{_var(c)})"></i>'), t)
            for c, t in names
        ),
        class_="legend",
    )


def _var(cls: str) -> str:
    return {"down": "other"}.get(cls, cls)


def out_of_service(counts: schemas.StateCounts) -> int:
    return counts.unhealthy + counts.quarantined + counts.missing


def age(when: datetime | None, now: datetime) -> Html:
    """ "12 s ago" with the exact UTC time on hover; a dash for never."""
    if when is None:
        return tag("span", "never", class_="muted")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int((now - when).total_seconds())
    if seconds < 0:
        text = "just now"
    elif seconds < 120:
        text = f"{seconds} s ago"
    elif seconds < 7200:
        text = f"{seconds // 60} min ago"
    elif seconds < 172800:
        text = f"{seconds // 3600} h ago"
    else:
        text = f"{seconds // 86400} d ago"
    return tag("span", text, title=when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def when(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def error_box(message: object) -> Html:
    return tag("div", message, class_="error", role="alert")


def bare_page(title: str, body: Html) -> Html:
    """A document without navigation: for the login form and errors before anyone is known."""
    head = join(
        [
            tag("meta", charset="utf-8"),
            tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
            NO_ICON,
            tag("title", f"{title} - devassign"),
            tag("style", Html(CSS)),
        ]
    )
    header = tag("header", tag("div", "devassign", class_="brand"))
    return Html(
        "<!doctype html>\n"
        + tag("html", tag("head", head), tag("body", header, tag("main", body)), lang="en")
    )


def login_form(next_path: str, error: str | None = None) -> Html:
    """Paste an API token (from `devassign token create`); it is kept in an HttpOnly cookie."""
    form = tag(
        "form",
        tag(
            "label",
            "API token",
            tag("input", type="password", name="token", size="48", autocomplete="off", autofocus=True),
        ),
        tag("input", type="hidden", name="next", value=next_path),
        tag("button", "sign in", type="submit", class_="primary"),
        method="post",
        action="/ui/login",
        class_="filters",
    )
    hint = tag(
        "p",
        "This server needs a token. Ask an admin for one (",
        tag("code", "devassign token create --via-api --role member --project P"),
        ") or for a one-time sign-in link (",
        tag("code", "devassign token login-link ID"),
        ").",
        class_="muted",
    )
    parts = [tag("h1", "Sign in"), hint]
    if error:
        parts.append(error_box(error))
    parts.append(tag("div", form, class_="card"))
    return join(parts)
