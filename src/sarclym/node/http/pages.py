"""The bodies of the dashboard pages, from what :class:`~sarclym.node.http.dashboard.Dashboard`
read.

Each function takes plain data and returns HTML; every value goes through
:func:`~sarclym.node.http.views.esc` (or a helper that uses it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sarclym.node.http.views import (
    SeriesView,
    badge,
    clock,
    detail_text,
    esc,
    full_image,
    offset,
    result_text,
    retry_form,
    series_link,
    short_uid,
    stamp,
    table,
    thumbnail,
)
from sarclym.node.store.audit import STATUS_EVENTS, AuditEvent
from sarclym.node.store.records import DeliveryRecord, SeriesStatus

if TYPE_CHECKING:
    from sarclym.node.config import Config
    from sarclym.node.store.state import StateDB
    from sarclym.node.worker.running_model import LoadedVersion

__all__ = ["audit", "deliveries", "model", "overview", "results", "series"]


def _timeline(view: SeriesView) -> str:
    """Each stage reached, as its delay after the last instance arrived."""
    last = view.record.last_received
    chips = [
        f"<span>{esc(stage)} {esc(offset(max(view.stages[stage] - last, 0.0)))}</span>"
        for stage in (s.value for s in STATUS_EVENTS)
        if stage in view.stages
    ]
    return f'<div class="chips">{"".join(chips)}</div>'


def _delivery_chips(view: SeriesView) -> str:
    last = view.record.last_received
    chips = []
    for record in view.deliveries:
        when = ""
        if record.delivered_at is not None:
            when = f" {offset(max(record.delivered_at - last, 0.0))}"
        elif record.attempts:
            when = f" ({record.attempts} attempt{'s' if record.attempts > 1 else ''})"
        chips.append(
            f'<span class="delivery" data-destination="{esc(record.destination)}">'
            f"{esc(record.destination)} {badge(record.state.value)}{esc(when)}</span>"
        )
    return f'<div class="chips">{"".join(chips)}</div>'


def _received(view: SeriesView) -> str:
    record = view.record
    spread = record.last_received - record.first_received
    return (
        f'{clock(record.first_received)}<div class="muted nowrap">last {esc(offset(spread))}</div>'
    )


def _instances(view: SeriesView) -> str:
    record = view.record
    expected = f" / {record.expected_count}" if record.expected_count else ""
    return f"{record.instance_count}{esc(expected)}"


def _status_cell(view: SeriesView) -> str:
    reason = view.record.status_reason
    why = f'<div class="muted reason">{esc(reason)}</div>' if reason else ""
    return f"{badge(view.record.status.value)}{why}"


def _context_line(view: SeriesView) -> str:
    """The patient context in one line, for users whose role may see it ("" otherwise)."""
    if not view.context_allowed:
        return ""
    if view.context is None:
        return '<span class="muted">patient context: no file of this series is left</span>'
    return f'<span class="context">{esc(view.context.summary())}</span>'


def _result_cell(view: SeriesView, width: int = 128) -> str:
    if view.result is None:
        return ""
    image = thumbnail(view.record.series_uid, width) if view.thumbnail else ""
    return f'<div class="result">{image}<div>{result_text(view.result)}</div></div>'


def _series_row(view: SeriesView) -> str:
    record = view.record
    return (
        f'<tr data-series="{esc(record.series_uid)}">'
        f"<td><b>{esc(record.modality or '?')}</b> {series_link(record.series_uid)}</td>"
        f'<td class="num">{_instances(view)}</td>'
        f"<td>{_status_cell(view)}</td>"
        f"<td>{_received(view)}</td>"
        f"<td>{_timeline(view)}</td>"
        f"<td>{_result_cell(view)}</td>"
        f"<td>{_delivery_chips(view)}</td></tr>"
    )


def overview(
    views: Sequence[SeriesView],
    failed: Sequence[SeriesView],
    counts: Mapping[SeriesStatus, int],
    status: str | None,
) -> str:
    """Recent series grouped by study; failed series first; counts by status as filters."""
    links = [f'<a href="/dashboard/">{badge("all")} {sum(counts.values())}</a>']
    links += [
        f'<a href="/dashboard/?status={esc(s.value)}">{badge(s.value)} {counts[s]}</a>'
        for s in SeriesStatus
        if s in counts
    ]
    parts = [f'<p class="summary">{"".join(links)}</p>']
    if failed:
        rows = (
            f'<tr><td class="nowrap">{stamp(v.record.status_changed)}</td>'
            f"<td>{series_link(v.record.series_uid)}</td>"
            f"<td>{esc(v.record.status_reason)}</td></tr>"
            for v in failed
        )
        parts.append("<h2>Failed series</h2>" + table(["when", "series", "why"], rows))
    studies: dict[str, list[SeriesView]] = {}
    for view in views:
        studies.setdefault(view.record.study_uid, []).append(view)
    rows_html = []
    for study_uid, members in studies.items():
        first = min(v.record.first_received for v in members)
        known = [v for v in members if v.context is not None] or members
        context = _context_line(known[0])
        rows_html.append(
            f'<tr class="study" data-study="{esc(study_uid)}"><th colspan="7">'
            f"{context + '<br>' if context else ''}Study "
            f'<span class="uid">{esc(study_uid)}</span> <span class="muted">'
            f"{len(members)} series, first instance {esc(stamp(first))}</span></th></tr>"
        )
        rows_html += [_series_row(v) for v in members]
    headers = [
        "series",
        "instances",
        "status / why",
        "received",
        "after the last instance",
        "result",
        "delivered",
    ]
    parts.append("<h2>Recent studies</h2>" + table(headers, rows_html, "nothing received yet"))
    return "".join(parts)


def results(views: Sequence[SeriesView]) -> str:
    """One card per result: thumbnail, label, P(lymphoma), model, deliveries."""
    cards = []
    for view in views:
        if view.result is None:
            continue
        record = view.record
        image = thumbnail(record.series_uid, 256) if view.thumbnail else "<p>(no thumbnail)</p>"
        sha = view.result.weights_sha256
        context = _context_line(view)
        cards.append(
            f'<div class="card" data-series="{esc(record.series_uid)}">{image}'
            f"{f'<p>{context}</p>' if context else ''}"
            f"{result_text(view.result)}"
            f'<p class="muted">weights {esc(sha[:12] + "…" if sha else "?")}</p>'
            f"<p>study {short_uid(record.study_uid)}<br>series "
            f"{series_link(record.series_uid)}</p>"
            f'<p class="muted">done {esc(stamp(view.stages.get(SeriesStatus.DONE.value)))}</p>'
            f"{_delivery_chips(view)}</div>"
        )
    if not cards:
        return '<p class="muted">No results yet.</p>'
    return (
        '<p class="muted">Grad-CAM heatmaps of the Secondary Captures sent to the PACS (click '
        "one for full resolution); P(lymphoma) is the model's probability of malignant "
        "lymphoma (vs sarcoidosis).</p>"
        f'<div class="cards">{"".join(cards)}</div>'
    )


def _delivery_rows(
    records: Sequence[DeliveryRecord], csrf: str | None, back: str, now: float
) -> list[str]:
    rows = []
    for record in records:
        series_uid, version = record.result.series_uid, record.result.model_version
        due = ""
        if record.next_attempt_at is not None and record.state.value == "pending":
            due = "now" if record.next_attempt_at <= now else offset(record.next_attempt_at - now)
        if csrf is not None and record.state.value != "delivered":
            action = retry_form(record.result_id, record.destination, csrf, back)
        elif record.state.value != "delivered":
            action = '<span class="muted">admin only</span>'
        else:
            action = ""
        rows.append(
            f'<tr data-result="{esc(record.result_id)}" '
            f'data-destination="{esc(record.destination)}">'
            f"<td>{series_link(series_uid)}</td><td>{esc(version)}</td>"
            f"<td>{esc(record.destination)}</td><td>{badge(record.state.value)}</td>"
            f'<td class="num">{record.attempts}</td><td>{esc(due)}</td>'
            f'<td>{esc(record.last_error)}</td><td class="nowrap">'
            f"{esc(stamp(record.updated_at))}</td>"
            f"<td>{action}</td></tr>"
        )
    return rows


_DELIVERY_HEADERS = [
    "series",
    "model",
    "destination",
    "state",
    "attempts",
    "next attempt",
    "last error",
    "updated",
    "",
]


def _flash(notice: str | None) -> str:
    """What an action did (the dashboard reads it after the action took effect)."""
    return "" if notice is None else f'<p class="flash">{esc(notice)}</p>'


def deliveries(
    records: Sequence[DeliveryRecord],
    delivered: int,
    *,
    csrf: str | None,
    notice: str | None,
    now: float,
) -> str:
    """Results not confirmed by a destination yet (pending, dead letter), with Retry."""
    intro = (
        f'<p class="muted">Confirmed by their destination: {delivered}. Below: those still '
        "retrying (pending) and those in the dead letter (dead). Retry re-arms one (attempts "
        "back to 0) and sends it now; the page then shows what that attempt did.</p>"
    )
    rows = _delivery_rows(records, csrf, "/dashboard/deliveries", now)
    return _flash(notice) + intro + table(_DELIVERY_HEADERS, rows, "every result delivered")


def _event_rows(events: Sequence[AuditEvent], show_series: bool) -> list[str]:
    rows = []
    start = events[0].at if events and not show_series else None
    for event in events:
        delay = f'<div class="muted">{esc(offset(event.at - start))}</div>' if start else ""
        series_cell = f"<td>{series_link(event.series_uid)}</td>" if show_series else ""
        rows.append(
            f'<tr data-event="{esc(event.event)}"><td class="nowrap">{esc(stamp(event.at))}'
            f'{delay}</td>{series_cell}<td>{badge(event.event)}</td><td class="nowrap">'
            f"{esc(event.actor)}</td>"
            f"<td>{detail_text(event.detail)}</td></tr>"
        )
    return rows


def audit(events: Sequence[AuditEvent]) -> str:
    """The latest audit events of all series, newest first."""
    intro = (
        '<p class="muted">Who or what touched each series: the AE that sent it, the process '
        "that processed it, the destinations that confirmed its results, operators' retries. "
        "Newest first; no patient data.</p>"
    )
    rows = _event_rows(events, show_series=True)
    return intro + table(["when", "series", "event", "actor", "detail"], rows)


def series(view: SeriesView, *, csrf: str | None, notice: str | None, now: float) -> str:
    """One series: patient context (roles that may see it), facts, the result at full
    resolution, deliveries (Retry for admins), its audit trail."""
    record = view.record
    facts: list[tuple[str, str]] = []
    if view.context_allowed and view.context is not None:
        facts += [(k, f'<span class="context">{esc(v)}</span>') for k, v in view.context.facts()]
    elif view.context_allowed:
        facts.append(
            (
                "patient",
                '<span class="muted">no file of this series is left on the '
                "node to read it from (spool and outbox pruned)</span>",
            )
        )
    facts += [
        ("Study Instance UID", f'<span class="uid">{esc(record.study_uid)}</span>'),
        ("Series Instance UID", f'<span class="uid">{esc(record.series_uid)}</span>'),
        ("modality", esc(record.modality)),
        ("SOP class", f'<span class="uid">{esc(record.sop_class_uid)}</span>'),
        ("instances", _instances(view) + f" ({record.byte_count / 1e6:.1f} MB)"),
        ("status", _status_cell(view)),
        ("first instance", esc(stamp(record.first_received))),
        ("last instance", esc(stamp(record.last_received))),
        ("after the last instance", _timeline(view)),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    parts = [_flash(notice), f'<dl class="facts">{dl}</dl>']
    if view.result is not None:
        sha = view.result.weights_sha256
        parts.append(
            f'<h2>Result</h2><div class="result"><div>{result_text(view.result)}</div>'
            f'<p class="muted">weights SHA-256<br><code>{esc(sha)}</code></p></div>'
            f"{full_image(record.series_uid) if view.full_image else ''}"
        )
    if view.deliveries:
        back = f"/dashboard/series/{record.series_uid}"
        rows = _delivery_rows(view.deliveries, csrf, back, now)
        parts.append("<h2>Deliveries</h2>" + table(_DELIVERY_HEADERS, rows))
    rows = _event_rows(view.events, show_series=False)
    parts.append("<h2>Audit trail</h2>" + table(["when", "event", "actor", "detail"], rows))
    return "".join(parts)


def model(
    config: Config,
    *,
    loaded: LoadedVersion | None = None,
    events: Sequence[AuditEvent] = (),
    state: StateDB | None = None,
) -> str:
    """The model: active (or pinned) beside what the processes have loaded, the registry's
    versions, the card, local evaluations and activations
    (:func:`sarclym.node.http.model_page.model_page`)."""
    from sarclym.node.http.model_page import model_page

    return model_page(config, loaded=loaded, events=events, state=state)
