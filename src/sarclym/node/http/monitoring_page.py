"""The dashboard's monitoring: the final-diagnosis form of a result, and the Monitoring page.

``POST /dashboard/feedback`` (any signed-in user; with a session cookie, its CSRF token) sets
the final diagnosis of a series' study (sarcoidosis, lymphoma, other, unknown), kept with the
value it replaces (``feedback_history``: who, when, source ``dashboard``), then re-applies the
stop rule. ``GET /dashboard/monitoring``: the running concordance of each model version with
95% intervals, whether it is under review and why, input drift against its reference, and the
history of reviews. Research use only; every figure names its model version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from sarclym.node.config import Config
from sarclym.node.http.views import esc, stamp, table
from sarclym.node.monitoring.concordance import Concordance, Estimate
from sarclym.node.monitoring.review import CONCORDANCE, check
from sarclym.node.monitoring.watch import DRIFT, REFERENCE
from sarclym.node.store import feedback as store
from sarclym.node.store.records import SeriesRecord
from sarclym.node.store.state import StateDB

__all__ = ["diagnosis_section", "monitoring_body", "post_feedback"]


def diagnosis_section(state: StateDB, record: SeriesRecord, csrf: str | None) -> str:
    """The series page's "Final diagnosis" section: the current value, and the form when the
    user has a session (``csrf``; a bearer-token client POSTs without one)."""
    current = store.feedback_for(state, record.study_uid)
    if current is None:
        now = '<span class="muted">none yet</span>'
    else:
        now = (
            f'<strong class="diagnosis">{esc(current.diagnosis)}</strong> '
            f'<span class="muted">by {esc(current.actor)} ({esc(current.source)}), '
            f"{esc(stamp(current.at))}</span>"
        )
    parts = [f"<h2>Final diagnosis</h2><p>Of this study: {now}</p>"]
    if csrf is not None:
        options = "".join(
            f'<option value="{d}"{" selected" if current and current.diagnosis == d else ""}>'
            f"{d}</option>"
            for d in store.DIAGNOSES
        )
        parts.append(
            '<form method="post" action="/dashboard/feedback" class="feedback">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<input type="hidden" name="series_uid" value="{esc(record.series_uid)}">'
            f'<select name="diagnosis">{options}</select> '
            '<button type="submit">Save final diagnosis</button></form>'
        )
    return "".join(parts)


def post_feedback(
    state: StateDB, config: Config, form: Mapping[str, str], *, actor: str
) -> tuple[int, str]:
    """Apply the final-diagnosis form: (303, where to go) or (4xx, the message)."""
    series_uid = form.get("series_uid", "")
    diagnosis = form.get("diagnosis", "")
    record = state.series(series_uid) if series_uid else None
    if record is None:
        return 400, "series_uid must name a series of this node."
    if diagnosis not in store.DIAGNOSES:
        return 400, f"diagnosis must be one of {', '.join(store.DIAGNOSES)}."
    changed = store.set_feedback(
        state,
        record.study_uid,
        diagnosis,
        actor=actor,
        source="dashboard",
        detail={"series_uid": series_uid},
    )
    if changed:
        check(state, config, actor=actor)
    query = urlencode({"feedback": diagnosis if changed else "unchanged"})
    return 303, f"/dashboard/series/{series_uid}?{query}"


def _estimate(value: Estimate, minimum: float | None) -> str:
    if math.isnan(value.value):
        return '<span class="muted">n/a</span>'
    below = minimum is not None and not math.isnan(value.lower) and value.lower < minimum
    cls = ' class="breach"' if below else ""
    return (
        f"<span{cls}>{value.value:.3f}</span> "
        f'<span class="muted">({value.lower:.3f}-{value.upper:.3f})</span>'
    )


def _share(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.0f}%"


def monitoring_body(state: StateDB, config: Config) -> str:
    """The Monitoring page's body."""
    acceptance = config.acceptance
    reviews = store.model_reviews(state)
    concordance = {
        v: Concordance.from_dict(d) for v, d in store.figures(state, CONCORDANCE).items()
    }
    counts = store.feedback_counts(state)
    parts = [
        '<p class="muted">Research use only. The node\'s results against the final diagnoses '
        "fed back (dashboard or <code>sarclym-node feedback import</code>), by model version; "
        "95% bootstrap intervals in brackets. The stop rule applies from "
        f"{config.monitoring.min_labelled} labelled results (sarcoidosis or lymphoma) and "
        f"compares the lower ends with the acceptance criteria: AUC {acceptance.min_auc:.2f}"
        + (
            f", sensitivity {acceptance.min_sensitivity:.2f}"
            if acceptance.min_sensitivity is not None
            else ""
        )
        + (
            f", specificity {acceptance.min_specificity:.2f}"
            if acceptance.min_specificity is not None
            else ""
        )
        + f". On a breach: <strong>{esc(config.monitoring.on_breach)}</strong>.</p>",
        "<p>Final diagnoses: "
        + (", ".join(f"{esc(k)} {v}" for k, v in sorted(counts.items())) or "none yet")
        + "</p>",
    ]
    weights = store.weights_of_versions(state)
    rows = []
    for version in sorted(set(concordance) | set(reviews)):
        c = concordance.get(version)
        review = reviews.get(version)
        state_cell = (
            f'<span class="review">UNDER REVIEW</span> since {esc(stamp(review.since))}: '
            f"{esc(review.reason)}"
            if review is not None and review.under_review
            else '<span class="ok">in use</span>'
        )
        if c is None:
            cells = '<td colspan="3" class="muted">no labelled result</td><td>0</td>'
        else:
            cells = (
                f'<td class="auc">{_estimate(c.auc, acceptance.min_auc)}</td>'
                f"<td>{_estimate(c.sensitivity, acceptance.min_sensitivity)}</td>"
                f"<td>{_estimate(c.specificity, acceptance.min_specificity)}</td>"
                f'<td class="n">{c.n} ({c.positives} lymphoma, {c.negatives} sarcoidosis)</td>'
            )
        shas = " ".join(
            f'<code title="{esc(sha)}">{esc(sha[:12])}</code>' for sha in weights.get(version, [])
        )
        rows.append(
            f'<tr data-version="{esc(version)}"><td>{esc(version)}'
            + (f'<br><span class="muted">weights {shas}</span>' if shas else "")
            + f"</td>{cells}<td>{state_cell}</td></tr>"
        )
    parts.append(
        "<h2>Concordance</h2>"
        + table(
            ["model version", "AUC", "sensitivity", "specificity", "labelled", "state"],
            rows,
            empty="no result has a final diagnosis yet",
        )
    )
    parts.append(_drift(state))
    history = store.review_history(state)
    parts.append(
        "<h2>Reviews</h2>"
        + table(
            ["when", "model version", "event", "who", "why"],
            (
                f"<tr><td>{esc(stamp(h['at']))}</td><td>{esc(h['model_version'])}</td>"
                f"<td>{esc(h['event'])}</td><td>{esc(h['actor'])}</td>"
                f"<td>{esc(h['reason'])}</td></tr>"
                for h in reversed(history)
            ),
            empty="no review yet",
        )
    )
    return "".join(parts)


def _drift(state: StateDB) -> str:
    drift = store.figures(state, DRIFT)
    references = store.figures(state, REFERENCE)
    rows = []
    for version, data in sorted(drift.items()):
        shifts = data.get("shifts") or {}

        def shift(name: str, unit: str, shifts: Mapping[str, Any] = shifts) -> str:
            item = shifts.get(name) or {}
            if item.get("recent") is None or item.get("reference") is None:
                return "-"
            return f"{item['recent']} vs {item['reference']} {unit} ({item['shift']:+})"

        rows.append(
            f"<tr><td>{esc(version)}</td><td>{esc(data.get('reference_source'))} "
            f"(n {data.get('reference_n')})</td><td>{data.get('window_n')}</td>"
            f"<td>{_share(data.get('unseen_scanner_share'))}</td>"
            f"<td>{_share(data.get('unseen_reconstruction_share'))}</td>"
            f"<td>{esc(shift('injected_dose_mbq', 'MBq'))}</td>"
            f"<td>{esc(shift('uptake_min', 'min'))}</td>"
            f"<td>{esc(shift('weight_kg', 'kg'))}</td>"
            f"<td>{_share(data.get('refusal_share'))}</td></tr>"
        )
    waiting = sorted(set(references) - set(drift))
    note = (
        '<p class="muted">Liver and blood-pool SUV: not available (the node computes no '
        "reference-region SUV; see docs/monitoring.md).</p>"
    )
    return (
        "<h2>Input drift</h2>"
        + table(
            [
                "model version",
                "reference",
                "recent series",
                "unseen scanner model",
                "unseen reconstruction",
                "median dose",
                "median uptake",
                "median weight",
                "refused",
            ],
            rows,
            empty="no reference yet (a model card's input_profile, or the first results)",
        )
        + ("" if not waiting else f'<p class="muted">{esc(", ".join(waiting))}</p>')
        + note
    )
