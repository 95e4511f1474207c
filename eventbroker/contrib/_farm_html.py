"""The farm page as HTML: no front-end build, no external resource, every text escaped.

`page` is the whole document (a snapshot that works with JavaScript off); `fragment` is its
``<main>`` content, which the page's small script fetches again every few seconds and swaps in.
Everything shown comes from `FarmState`, whose peer parts are already checked
(`parse_summary`); here every text, attribute and number goes through `_e` (HTML escaping,
quotes included), the charts are inline SVG built from numbers, and the script reads its
settings from ``data-`` attributes, never from text spliced into code.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Sequence

from .._flow import FlowWindow
from ._farm import FarmState, InstanceRow, InstanceSummary, JobView, RecentEvent

_CHART_SECONDS = 360.0
_W, _H = 720, 134
_TOP, _BOTTOM = 15, 96
"""The plot area's top and bottom (labels above it, the marks and the time axis below)."""

DONE_MESSAGES = {
    "run": "Run requested: the job starts on the instance that schedules it.",
    "stop": "Stop requested: the running instance was asked to stop the job.",
}


def _e(value: object) -> str:
    """Escape for HTML text and double-quoted attribute values."""
    return html.escape(str(value), quote=True)


def _clock(t: float | None) -> str:
    if t is None:
        return "\u2013"
    return time.strftime("%H:%M:%S", time.gmtime(t))


def _day_clock(t: float | None) -> str:
    if t is None:
        return "\u2013"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _ago(now: float, t: float | None) -> str:
    if t is None:
        return "\u2013"
    seconds = max(0.0, now - t)
    if seconds < 1.5:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def _ratio(value: float | None) -> str:
    return "\u2013" if value is None else f"{value * 100:.0f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _short(instance_id: str) -> str:
    return instance_id[:8]


def _badge(word: str, kind: str | None = None) -> str:
    return f'<span class="badge {_e(kind or word)}">{_e(word)}</span>'


def _table(head: Sequence[str], rows: Iterable[str], cls: str, empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="{_e(cls)}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: object, cls: str = "") -> str:
    return f'<td class="{_e(cls)}">{_e(value)}</td>' if cls else f"<td>{_e(value)}</td>"


# ------------------------------------------------------------------------------ instances


def _cache_totals(summary: InstanceSummary | None) -> tuple[str, str, str]:
    if summary is None or not summary.caches:
        return "\u2013", "\u2013", "\u2013"
    hits = sum(c.hits for c in summary.caches)
    reads = hits + sum(c.misses for c in summary.caches)
    stale = sum(c.stale for c in summary.caches)
    l2 = [c.l2 for c in summary.caches if c.l2 != "none"]
    circuit = "open" if "open" in l2 else ("closed" if l2 else "no L2")
    return _ratio(hits / reads if reads else None), str(stale), circuit


def _instance_row(row: InstanceRow, now: float) -> str:
    s = row.summary
    ratio, stale, circuit = _cache_totals(s)
    state = {"this": "this page", "up": "up", "late": "late", "gone": "stopped reporting"}[
        row.state
    ]
    health = "\u2013" if s is None else s.health
    reasons = "" if s is None or not s.reasons else "; ".join(s.reasons)
    health_cell = (
        f'<td><span class="badge {_e(health)}" title="{_e(reasons)}">{_e(health)}</span>'
        + (f'<div class="why">{_e(reasons)}</div>' if reasons else "")
        + "</td>"
    )
    roles = []
    if s is not None:
        if s.caches:
            roles.append("caches " + ", ".join(c.name for c in s.caches))
        if s.jobs:
            roles.append("jobs " + ", ".join(j.name for j in s.jobs))
    ev = None if s is None else s.events
    cells = [
        f"<td>{_badge(state, row.state)}</td>",
        f'<td><span class="host">{_e(row.host or "?")}</span> '
        f'<code title="{_e(row.instance_id)}">{_e(_short(row.instance_id))}</code>'
        f'<div class="why">{_e("; ".join(roles))}</div></td>',
        _td(row.application_name + (f" / {row.site_id}" if row.site_id else "")),
        f'<td title="{_e(_day_clock(row.started_at))}">{_e(_ago(now, row.started_at))}</td>',
        f'<td title="{_e(_day_clock(row.last_seen))}">'
        f"{_e(_ago(now, row.last_seen) if row.state != 'this' else 'now')}</td>",
        _td("\u2013" if s is None else s.connection),
        health_cell,
        _td("\u2013" if ev is None else ev.events_in, "num events-in"),
        _td("\u2013" if ev is None else ev.events_out, "num events-out"),
        _td("\u2013" if ev is None else ev.refused, "num"),
        _td("\u2013" if ev is None else ev.gaps, "num"),
        _td("\u2013" if ev is None else _ms(ev.lag_p50), "num"),
        _td("\u2013" if ev is None else _ms(ev.lag_p99), "num"),
        _td(ratio, "num"),
        _td(stale, "num"),
        _td(circuit),
    ]
    return (
        f'<tr class="instance {_e(row.state)}" data-instance="{_e(row.instance_id)}">'
        + "".join(cells)
        + "</tr>"
    )


def _instances(state: FarmState) -> str:
    head = (
        "state",
        "host / instance",
        "application",
        "up since",
        "last seen",
        "connection",
        "health",
        "events in",
        "out",
        "refused",
        "gaps",
        "lag p50",
        "lag p99",
        "hit ratio",
        "stale served",
        "L2 circuit",
    )
    rows = [_instance_row(row, state.now) for row in state.instances]
    heard = sum(1 for row in state.instances if row.state in ("up", "late"))
    return (
        f'<section id="instances"><h2>Instances <small>{_e(len(state.instances))} listed, '
        f"{_e(heard)} heard from besides this one</small></h2>"
        + _table(head, rows, "instances", "no instance")
        + '<p class="note">Counters of other instances are as of their last heartbeat '
        "(they send one every heartbeat interval, and soon after a burst of events or a job "
        "report); this instance's are live.</p></section>"
    )


# ------------------------------------------------------------------------------ flow


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)


def _rate(window: FlowWindow, count: int) -> float:
    return count / max(1.0, window.end - window.start)


def _flow_chart(windows: Sequence[FlowWindow], now: float) -> str:
    t0 = now - _CHART_SECONDS
    shown = [w for w in windows if w.end > t0]
    plot_h = _BOTTOM - _TOP

    def x(t: float) -> float:
        return round((max(t, t0) - t0) / _CHART_SECONDS * _W, 1)

    rate_max = _nice(max((_rate(w, max(w.events_in, w.events_out)) for w in shown), default=0))
    lags = [w.lag_p99 for w in shown if w.lag_p99 is not None]
    lag_max = _nice(max(lags, default=0.0) * 1000)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="events per second and delivery lag, last 6 minutes">'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = round(_BOTTOM - frac * plot_h, 1)
        parts.append(f'<line class="grid" x1="0" x2="{_W}" y1="{y}" y2="{y}"/>')
    parts.append(
        f'<text class="axis" x="2" y="11">{_e(f"{rate_max:g}")} events/s</text>'
        f'<text class="axis lag" x="{_W - 2}" y="11" text-anchor="end">'
        f"{_e(f'{lag_max:g}')} ms lag</text>"
    )
    p50: list[str] = []
    p99: list[str] = []
    for w in shown:
        left = x(w.start)
        width = max(1.0, x(w.end) - left - 1)
        half = width / 2
        for count, cls, offset in ((w.events_in, "in", 0.0), (w.events_out, "out", half)):
            height = round(_rate(w, count) / rate_max * plot_h, 1)
            if height > 0:
                parts.append(
                    f'<rect class="{cls}" x="{round(left + offset, 1)}" y="{round(_BOTTOM - height, 1)}" '
                    f'width="{round(half, 1)}" height="{height}"><title>{_e(_clock(w.start))}: '
                    f"{_e(count)} events {'in' if cls == 'in' else 'out'} "
                    f"({_e(f'{_rate(w, count):.1f}')}/s)</title></rect>"
                )
        mid = round(left + width / 2, 1)
        for value, points in ((w.lag_p50, p50), (w.lag_p99, p99)):
            if value is not None:
                y = round(_BOTTOM - min(value * 1000 / lag_max, 1.0) * plot_h, 1)
                points.append(f"{mid},{y}")
        marks = []
        if w.refused:
            causes = ", ".join(f"{cause} {n}" for cause, n in sorted(w.refused.items()))
            marks.append(("refused", f"refused: {causes}"))
        if w.gaps:
            marks.append(("gap", f"{w.gaps} sequence gap(s): event_missed"))
        if w.reconnects:
            marks.append(("missed", f"{w.reconnects} reconnect(s): event_missed"))
        for i, (cls, text) in enumerate(marks):
            parts.append(
                f'<rect class="mark {cls}" x="{mid - 3}" y="{_BOTTOM + 3 + i * 8}" width="6" '
                f'height="6"><title>{_e(_clock(w.start))}: {_e(text)}</title></rect>'
            )
    for points, cls in ((p50, "p50"), (p99, "p99")):
        if len(points) > 1:
            parts.append(f'<polyline class="{cls}" points="{" ".join(points)}"/>')
        for point in points:
            px, py = point.split(",")
            parts.append(f'<circle class="{cls}" cx="{px}" cy="{py}" r="1.8"/>')
    for minutes in range(6, -1, -1):
        t = now - minutes * 60
        label = "now" if minutes == 0 else f"-{minutes} min"
        anchor = "end" if minutes == 0 else ("start" if minutes == 6 else "middle")
        parts.append(
            f'<text class="axis" x="{x(t)}" y="{_H - 2}" text-anchor="{anchor}">{_e(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _flow(state: FarmState) -> str:
    flow = state.flow
    minute = flow.last(60.0)
    seconds = max(1.0, minute.end - minute.start)
    causes = flow.last(float("inf")).refused
    refused = ", ".join(f"{cause} {n}" for cause, n in sorted(causes.items())) if causes else "none"
    summary = (
        f'<ul class="facts"><li>last minute: <b class="rate-in">{_e(f"{minute.events_in / seconds:.2f}")}</b> '
        f'events/s in, <b class="rate-out">{_e(f"{minute.events_out / seconds:.2f}")}</b> out</li>'
        f"<li>delivery lag p50 <b>{_e(_ms(minute.lag_p50))}</b>, p99 "
        f"<b>{_e(_ms(minute.lag_p99))}</b></li>"
        f"<li>refusals by cause (6 min): {_e(refused)}</li>"
        f"<li>gaps (event_missed) in 6 min: {_e(sum(w.gaps for w in flow.windows))}, "
        f"reconnects: {_e(sum(w.reconnects for w in flow.windows))}</li></ul>"
    )
    legend = (
        '<p class="legend"><span class="key in"></span>events in/s '
        '<span class="key out"></span>out/s <span class="key p50"></span>lag p50 '
        '<span class="key p99"></span>lag p99 <span class="key refused"></span>refusal '
        '<span class="key gap"></span>gap <span class="key missed"></span>reconnect</p>'
    )
    return (
        '<section id="flow"><h2>Flow <small>this instance, windows of 10 s</small></h2>'
        + _flow_chart(flow.windows, state.now)
        + legend
        + summary
        + "</section>"
    )


# ------------------------------------------------------------------------------ caches


def _caches(state: FarmState) -> str:
    head = (
        "instance",
        "cache",
        "entries",
        "hit ratio",
        "stale served",
        "factory errors",
        "backplane in",
        "backplane out",
        "auto-recovery backlog",
        "L2",
    )
    rows = []
    for row in state.instances:
        if row.summary is None or row.state == "gone":
            continue
        for c in row.summary.caches:
            rows.append(
                f'<tr data-instance="{_e(row.instance_id)}">'
                f'<td><span class="host">{_e(row.host or "?")}</span> '
                f'<code title="{_e(row.instance_id)}">{_e(_short(row.instance_id))}</code></td>'
                + _td(c.name)
                + _td(c.entries, "num")
                + _td(_ratio(c.hit_ratio), "num")
                + _td(c.stale, "num")
                + _td(c.factory_errors, "num")
                + _td(c.backplane_in, "num")
                + _td(c.backplane_out, "num")
                + _td(c.backlog, "num")
                + _td({"none": "none", "ok": "ok", "open": "circuit open"}[c.l2])
                + "</tr>"
            )
    return (
        '<section id="caches"><h2>Caches</h2>'
        + _table(head, rows, "caches", "no instance reports a cache")
        + "</section>"
    )


# ------------------------------------------------------------------------------ jobs


def _button(base: str, job: JobView, action: str, csrf: str, label: str) -> str:
    return (
        f'<form method="post" action="{_e(base)}/jobs/{_e(job.job_id)}/{_e(action)}">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        f'<button type="submit" class="{_e(action)}">{_e(label)}</button></form>'
    )


def _progress(done: int | None, total: int | None) -> str:
    if done is None:
        return ""
    if total:
        return (
            f'<progress max="{_e(total)}" value="{_e(min(done, total))}"></progress> '
            f"{_e(done)}/{_e(total)}"
        )
    return f"{_e(done)} done"


def _job(
    job: JobView,
    holders: Sequence[str],
    schedulers: Sequence[str],
    base: str,
    csrf: str,
    now: float,
) -> str:
    running = job.running
    if running is not None:
        holder = ", ".join(_short(h) for h in holders)
        state = (
            f'{_badge("running")} on <code title="{_e(", ".join(holders))}">{_e(holder)}</code> '
            f"since {_e(_ago(now, running.started_at))}: {_e(running.status or '')} "
            + _progress(running.done, running.total)
        )
    else:
        state = _badge("idle") + " no lease held"
    buttons = _button(base, job, "run", csrf, "Run now") if running is None else ""
    if job.stoppable and running is not None:
        buttons += _button(base, job, "stop", csrf, "Stop")
    runs = [
        f'<tr class="run {_e(r.outcome)}" data-run="{_e(r.run_id)}">'
        f'<td title="{_e(_day_clock(r.started_at))}">{_e(_clock(r.started_at))}</td>'
        f"<td>{_badge(r.outcome)}</td>"
        + _td(_duration(r.duration), "num")
        + f'<td class="status">{_e(r.status)}</td></tr>'
        for r in job.runs
    ]
    return (
        f'<article class="job" data-job="{_e(job.job_id)}"><h3>{_e(job.name)} '
        f"<small>{_e(job.schedule)}; scheduled by "
        f"{_e(', '.join(_short(s) for s in schedulers) or 'no instance')}</small></h3>"
        f'<p class="state">{state}</p><div class="buttons">{buttons}</div>'
        + _table(("started", "outcome", "duration", "status"), runs, "runs", "no run yet")
        + "</article>"
    )


def _jobs(state: FarmState, base: str, csrf: str) -> str:
    body = "".join(
        _job(job, holders, schedulers, base, csrf, state.now)
        for job, holders, schedulers in state.jobs
    )
    if not body:
        body = '<p class="empty">no instance reports a job scheduler</p>'
    return f'<section id="jobs"><h2>Jobs</h2>{body}</section>'


# ------------------------------------------------------------------------------ events


def _event_row(event: RecentEvent) -> str:
    param = "(private)" if event.param is None else event.param
    return (
        "<tr>"
        + _td(_clock(event.at))
        + _td(event.event)
        + f'<td><code title="{_e(event.source)}">{_e(_short(event.source))}</code></td>'
        + f'<td class="param"><code>{_e(param)}</code></td></tr>'
    )


def _events(state: FarmState) -> str:
    rows = [_event_row(event) for event in state.recent]
    return (
        '<section id="events"><h2>Recent events <small>received by this instance</small></h2>'
        + _table(("sent", "event", "from", "param"), rows, "events", "none received yet")
        + "</section>"
    )


# ------------------------------------------------------------------------------ the page


def fragment(state: FarmState, *, base: str, csrf: str, done: str | None = None) -> str:
    """The content of ``<main>``: every section, at `state.now`."""
    notice = ""
    if done in DONE_MESSAGES:
        notice = f'<p class="notice">{_e(DONE_MESSAGES[done])}</p>'
    return (
        f'<p class="asof">as of <time>{_e(_day_clock(state.now))}</time></p>'
        + notice
        + _instances(state)
        + _flow(state)
        + _caches(state)
        + _jobs(state, base, csrf)
        + _events(state)
    )


_STYLE = """
:root{--fg:#1d2430;--muted:#5d6776;--line:#dfe3ea;--bg:#f7f8fa;--in:#2f6fdb;--out:#2e9d5b;
--p50:#7a4cc2;--p99:#c2417a;--bad:#c8372d;--warn:#d88a16;--ok:#2e9d5b}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg)}header{padding:12px 20px;background:#1d2430;color:#fff}
header h1{margin:0;font-size:18px}header p{margin:2px 0 0;color:#c5ccd8;font-size:12px}
main{padding:8px 20px 24px}section{background:#fff;border:1px solid var(--line);border-radius:6px;
padding:10px 14px;margin:12px 0}h2{font-size:15px;margin:0 0 8px}h3{font-size:14px;margin:6px 0}
small{color:var(--muted);font-weight:normal}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 6px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,Menlo,Consolas,monospace}.why{color:var(--muted);font-size:11px;max-width:28em}
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:12px;background:#e8ebf0}
.badge.ok,.badge.up,.badge.succeeded,.badge.connected{background:#dcf2e4;color:#1e6b3e}
.badge.this{background:#dde8fb;color:#1d4ea3}.badge.degraded,.badge.late,.badge.stopped{background:#fbeed6;color:#87530a}
.badge.down,.badge.gone,.badge.failed,.badge.aborted{background:#f9dcd9;color:#8e231b}
.badge.running{background:#dde8fb;color:#1d4ea3}tr.gone{color:var(--muted)}
.chart{width:100%;max-width:900px;height:auto;display:block}.chart .grid{stroke:var(--line)}
.chart .axis{font-size:10px;fill:var(--muted)}.chart rect.in{fill:var(--in)}.chart rect.out{fill:var(--out)}
.chart polyline{fill:none;stroke-width:1.5}.chart .p50{stroke:var(--p50);fill:var(--p50)}
.chart .p99{stroke:var(--p99);fill:var(--p99)}.chart polyline.p50,.chart polyline.p99{fill:none}
.chart .mark.refused{fill:var(--bad)}.chart .mark.gap{fill:var(--warn)}.chart .mark.missed{fill:#6d4aa8}
.legend{font-size:12px;color:var(--muted);margin:4px 0}.key{display:inline-block;width:10px;height:10px;
margin:0 4px 0 10px;vertical-align:middle}.key.in{background:var(--in)}.key.out{background:var(--out)}
.key.p50{background:var(--p50)}.key.p99{background:var(--p99)}.key.refused{background:var(--bad)}
.key.gap{background:var(--warn)}.key.missed{background:#6d4aa8}.facts{margin:4px 0;padding-left:18px}
.job{border-top:1px solid var(--line);padding-top:6px}.job:first-of-type{border-top:0}
.buttons{margin:4px 0 6px}.buttons form{display:inline}button{font:inherit;padding:3px 12px;
border-radius:4px;border:1px solid #9aa5b5;background:#fff;cursor:pointer;margin-right:6px}
button.run{border-color:var(--in);color:var(--in)}button.stop{border-color:var(--bad);color:var(--bad)}
td.status,td.param,.host,.why{overflow-wrap:anywhere}section{overflow-x:auto}.empty,.note,.asof{color:var(--muted);font-size:12px;margin:4px 0}
.notice{background:#dde8fb;padding:6px 10px;border-radius:4px}progress{vertical-align:middle}
"""

_SCRIPT = """
(function () {
  var main = document.getElementById('farm');
  var live = document.getElementById('live');
  var url = main.getAttribute('data-fragment');
  var every = Number(main.getAttribute('data-refresh')) * 1000;
  if (!url || !(every > 0)) { return; }
  function say(text) { live.textContent = text; }
  function tick() {
    fetch(url, {credentials: 'same-origin', cache: 'no-store'})
      .then(function (response) {
        if (response.status === 401) { say('signed out: reload with the token'); return null; }
        if (!response.ok) { throw new Error('HTTP ' + response.status); }
        return response.text();
      })
      .then(function (text) {
        if (text !== null) { main.innerHTML = text; say('live: updates every ' + every / 1000 + ' s'); }
        if (text !== null) { setTimeout(tick, every); }
      })
      .catch(function (error) { say('update failed (' + error.message + '), retrying'); setTimeout(tick, every); });
  }
  say('live: updates every ' + every / 1000 + ' s');
  setTimeout(tick, every);
})();
"""


def page(
    state: FarmState,
    *,
    base: str,
    csrf: str,
    nonce: str,
    refresh: float,
    host: str,
    done: str | None = None,
) -> str:
    """The whole document: a snapshot that a small script keeps up to date."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Farm: {_e(state.application_name)}</title>"
        f'<style nonce="{_e(nonce)}">{_STYLE}</style></head><body>'
        f"<header><h1>Farm: {_e(state.application_name)}</h1>"
        f'<p>served by {_e(host)}; <span id="live">snapshot (JavaScript off: reload for '
        "a new one)</span></p></header>"
        f'<main id="farm" data-fragment="{_e(base)}/fragment" data-refresh="{_e(refresh)}">'
        + fragment(state, base=base, csrf=csrf, done=done)
        + "</main>"
        f'<script nonce="{_e(nonce)}">{_SCRIPT}</script></body></html>'
    )
