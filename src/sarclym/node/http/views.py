"""HTML of the dashboard pages: server-rendered, one inline style sheet, no script, no CDN.

Every value that comes from the state database, the configuration or a request is escaped with
:func:`html.escape` (through :func:`esc`) at the point where it enters the markup; nothing else
builds HTML. The style sheet's SHA-256 goes into the Content-Security-Policy, which otherwise
allows nothing but images and forms of this origin.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

from sarclym.model.inference.prediction import OUTSIDE_TEXT
from sarclym.node.http.result_files import PatientContext
from sarclym.node.store.audit import AuditEvent
from sarclym.node.store.records import DeliveryRecord, SeriesRecord

__all__ = [
    "CSP",
    "RESEARCH_USE",
    "ResultView",
    "SeriesView",
    "esc",
    "markdown_to_html",
    "page",
]

RESEARCH_USE = "Research use only - not for diagnosis"

CSS = """
:root{--ink:#1d2433;--muted:#5d6778;--line:#dde2ea;--bg:#f5f7fa;--card:#fff;--accent:#1f5f9e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
.ruo{background:#8a1c1c;color:#fff;text-align:center;font-weight:600;padding:4px;
letter-spacing:.04em;text-transform:uppercase;font-size:12px}
header{display:flex;align-items:center;gap:24px;background:#17324d;color:#fff;padding:10px 24px}
header .brand{font-weight:700;font-size:16px}
header nav a{color:#cfe0f2;text-decoration:none;margin-right:18px}
header nav a.on{color:#fff;border-bottom:2px solid #fff;padding-bottom:2px}
header .user{margin-left:auto;display:flex;align-items:center;gap:10px;color:#cfe0f2}
header form{margin:0}
main{padding:16px 24px 32px}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid var(--line)}
th{background:#eef1f5;font-weight:600;font-size:12px;color:var(--muted);white-space:nowrap}
tr.study th{background:#e3ebf4;color:var(--ink);font-size:13px}
td.num{text-align:right;white-space:nowrap}
code,.uid{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
td .uid{white-space:nowrap;word-break:normal}
.nowrap{white-space:nowrap}
.muted{color:var(--muted);font-size:12px}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;
background:#e4e7ec;color:#374151;white-space:nowrap}
.b-done,.b-delivered{background:#d9f2e1;color:#11612f}
.b-failed,.b-dead{background:#fbdada;color:#8a1c1c}
.b-processing,.b-pending,.b-retry{background:#fdf0cc;color:#7a5300}
.b-queued,.b-complete,.b-receiving{background:#dbe8f7;color:#1f4f80}
.b-skipped,.b-pruned{background:#eceef1;color:#5d6778}
.chips span{display:inline-block;margin:0 10px 2px 0;white-space:nowrap}
.summary a{margin-right:8px;text-decoration:none}
.thumb{display:block;border:1px solid var(--line);background:#000;border-radius:3px}
a.result-image{display:inline-block;flex:none}
.full{display:block;max-width:100%;height:auto;border:1px solid var(--line)}
.context{color:var(--ink);font-weight:600}
.result{display:flex;gap:10px;align-items:flex-start}
.label-l{color:#8a1c1c;font-weight:700}.label-s{color:#1f4f80;font-weight:700}
.ood{color:#fff;background:#b3261e;padding:2px 6px;border-radius:3px;margin:2px 0}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px;
width:286px}
.card p{margin:6px 0}
.flash{background:#e4f1fb;border:1px solid #b6d4ee;padding:8px 12px;border-radius:4px}
.error{background:#fbdada;border:1px solid #eab3b3;padding:8px 12px;border-radius:4px}
button{font:inherit;padding:3px 12px;border-radius:4px;border:1px solid #1f4f80;
background:#1f5f9e;color:#fff;cursor:pointer}
header button{background:transparent;border-color:#8fb3d9}
.login{max-width:420px;margin:60px auto;background:var(--card);border:1px solid var(--line);
border-radius:6px;padding:24px}
.login input{width:100%;padding:7px;font:inherit;margin:6px 0 14px}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:4px 18px;margin:0 0 12px}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
.md table{width:auto;margin:8px 0}.md pre{background:#eef1f5;padding:8px;overflow:auto}
.md{background:var(--card);border:1px solid var(--line);padding:4px 18px 14px;max-width:1000px}
footer{padding:12px 24px;color:var(--muted);font-size:12px;border-top:1px solid var(--line)}
""".strip()

_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
#: Content-Security-Policy of every page: this origin's images and forms, the one style sheet.
CSP = (
    "default-src 'none'; img-src 'self' data:; connect-src 'self'; "
    f"style-src 'sha256-{_CSS_HASH}'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)

_NAV = (
    ("/dashboard/", "Series"),
    ("/dashboard/results", "Results"),
    ("/dashboard/deliveries", "Deliveries"),
    ("/dashboard/model", "Model"),
    ("/dashboard/audit", "Audit log"),
    ("/dashboard/monitoring", "Monitoring"),
)


def esc(value: object) -> str:
    """Text for HTML: ``None`` as an empty string, everything else escaped (quotes too)."""
    return "" if value is None else escape(str(value), quote=True)


@dataclass(frozen=True)
class ResultView:
    """The prediction of a DONE series, from its audit "done" event."""

    label: str
    probability_lymphoma: float | None
    model_version: str | None
    weights_sha256: str | None = None
    outside_training_data: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None


@dataclass(frozen=True)
class SeriesView:
    """One series with what the dashboard shows about it."""

    record: SeriesRecord
    events: Sequence[AuditEvent] = ()  # oldest first
    deliveries: Sequence[DeliveryRecord] = ()
    result: ResultView | None = None
    thumbnail: bool = False
    full_image: bool = False  # the result's SC at full resolution is on the node
    stages: Mapping[str, float] = field(default_factory=dict)
    #: Whether the user may see the patient context (``dashboard.patient_context_roles``)...
    context_allowed: bool = False
    #: ...and the context, when a file of the series is left on the node to read it from.
    context: PatientContext | None = None


# -- small pieces ------------------------------------------------------------------------------


def badge(state: str) -> str:
    """A coloured state label."""
    return f'<span class="badge b-{esc(state)}">{esc(state)}</span>'


def clock(t: float | None) -> str:
    """Local time of day, the full date and time in the tooltip."""
    if t is None:
        return ""
    when = dt.datetime.fromtimestamp(t)
    return f'<span title="{when:%Y-%m-%d %H:%M:%S}">{when:%H:%M:%S}</span>'


def stamp(t: float | None) -> str:
    """Local date and time."""
    return "" if t is None else f"{dt.datetime.fromtimestamp(t):%Y-%m-%d %H:%M:%S}"


def offset(seconds: float) -> str:
    """A delay in words: ``+0.84 s``, ``+2 min 5 s``, ``+3 h 2 min``."""
    if seconds < 120:
        return f"+{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"+{minutes} min {secs} s"
    return f"+{minutes // 60} h {minutes % 60} min"


def short_uid(uid: str) -> str:
    """The end of a UID (the part that differs), the whole UID in the tooltip."""
    text = uid if len(uid) <= 18 else "…" + uid[-16:]
    return f'<span class="uid" title="{esc(uid)}">{esc(text)}</span>'


def series_link(uid: str, text: str | None = None) -> str:
    """Link to the series page."""
    inner = short_uid(uid) if text is None else esc(text)
    return f'<a href="/dashboard/series/{quote(uid, safe="")}">{inner}</a>'


def result_image_url(uid: str) -> str:
    """Where the result's Secondary Capture is served at full resolution (PNG)."""
    return f"/dashboard/results/{quote(uid, safe='')}/sc.png"


def thumbnail(uid: str, width: int) -> str:
    """The result's Grad-CAM Secondary Capture, small, linked to the full-resolution image.

    ``width`` (CSS pixels) is at most half the thumbnail's size, so it is never upscaled.
    """
    src = f"/dashboard/thumbnails/{quote(uid, safe='')}.png"
    return (
        f'<a class="result-image" href="{result_image_url(uid)}">'
        f'<img class="thumb" src="{src}" width="{width}" '
        'alt="Grad-CAM heatmap thumbnail of the Secondary Capture: opens it at full resolution">'
        "</a>"
    )


def full_image(uid: str) -> str:
    """The result's Secondary Capture at full resolution (shrunk to the page, never enlarged)."""
    url = result_image_url(uid)
    return (
        f'<a class="result-image" href="{url}"><img class="full" src="{url}" '
        'alt="Secondary Capture with the Grad-CAM heatmap, full resolution"></a>'
    )


def result_text(result: ResultView) -> str:
    """Label, P(lymphoma), the out-of-distribution flag when raised, and model version."""
    css = "label-l" if result.label == "lymphoma" else "label-s"
    prob = "" if result.probability_lymphoma is None else f"{result.probability_lymphoma:.3f}"
    outside = ""
    if result.outside_training_data:
        outside = (
            f'<div class="ood"><b>{esc(OUTSIDE_TEXT.lower())}</b> '
            f"(OOD score {esc(_fmt(result.ood_score))} &gt; {esc(_fmt(result.ood_threshold))}"
            "): the probability is not to be trusted</div>"
        )
    return (
        f'<div class="{css}">{esc(result.label)}</div>'
        f'<div>P(lymphoma) <b class="p-lymphoma">{esc(prob)}</b></div>'
        f"{outside}"
        f'<div class="muted">model {esc(result.model_version)}</div>'
    )


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def table(headers: Sequence[str], rows: Iterable[str], empty: str = "nothing yet") -> str:
    """A table; ``rows`` are ready ``<tr>`` strings."""
    body = "".join(rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{esc(empty)}</td></tr>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def detail_text(detail: Mapping[str, Any]) -> str:
    """An audit event's facts as ``key: value`` pairs."""
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k or '?'} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        parts.append(f'<span><span class="muted">{esc(key)}</span> {esc(value)}</span>')
    return f'<div class="chips">{"".join(parts)}</div>'


def retry_form(result_id: str, destination: str, csrf: str, back: str) -> str:
    """The admin's Retry button of one delivery (POST, with the session's CSRF token)."""
    return (
        '<form method="post" action="/dashboard/deliveries/retry">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="result_id" value="{esc(result_id)}">'
        f'<input type="hidden" name="destination" value="{esc(destination)}">'
        f'<input type="hidden" name="next" value="{esc(back)}">'
        f'<button type="submit" class="retry" data-destination="{esc(destination)}">Retry'
        "</button></form>"
    )


# -- whole pages ---------------------------------------------------------------------------------


def page(
    title: str,
    body: str,
    *,
    user: str | None = None,
    role: str | None = None,
    csrf: str | None = None,
    active: str = "",
    version: str = "",
    patient_context: bool = False,
) -> str:
    """A whole page: research-use banner, navigation, the user and a logout button, ``body``.

    ``patient_context``: the user's role sees patient context (the footer says so; else it
    says the pages show UIDs only).
    """
    nav = ""
    account = ""
    if user is not None:
        on = ' class="on"'
        links = "".join(
            f'<a href="{href}"{on if href == active else ""}>{esc(text)}</a>' for href, text in _NAV
        )
        nav = f"<nav>{links}</nav>"
        logout = ""
        if csrf is not None:
            logout = (
                '<form method="post" action="/logout">'
                f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
                '<button type="submit">Log out</button></form>'
            )
        account = f'<span class="user">{esc(user)} ({esc(role)}){logout}</span>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f"<title>{esc(title)} - sarclym-node</title><style>{CSS}</style></head><body>"
        f'<div class="ruo">{esc(RESEARCH_USE)}</div>'
        f'<header><span class="brand">sarclym-node</span>{nav}{account}</header>'
        f"<main><h1>{esc(title)}</h1>{body}</main>"
        f"<footer>sarclym-node {esc(version)} - {esc(RESEARCH_USE)}. Sarcoidosis vs lymphoma "
        f"on FDG PET MIPs (after Aoki et al., Eur Radiol 2023). {_PHI_NOTE[patient_context]}"
        "</footer></body></html>"
    )


_PHI_NOTE = {
    False: "No patient names, IDs or dates are shown here: UIDs only.",
    True: "Patient context is shown to your role (dashboard.patient_context_roles).",
}


def login_page(next_path: str, error: str | None = None, version: str = "") -> str:
    """The login form: one token field."""
    message = f'<p class="error">{esc(error)}</p>' if error else ""
    body = (
        f'<div class="login">{message}<form method="post" action="/login">'
        '<label for="token">Access token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<button type="submit">Log in</button></form>'
        '<p class="muted">Tokens come from <code>sarclym-node dashboard-token</code>, or, with '
        "no user configured, from <code>&lt;data_dir&gt;/dashboard-admin.token</code> on the "
        "node.</p></div>"
    )
    return page("Log in", body, version=version)


# -- Markdown (model cards) --------------------------------------------------------------------

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    escaped = esc(text)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str) -> str:
    """The Markdown of a model card as minimal HTML.

    Headings, paragraphs, ``-`` lists, pipe tables, fenced code, ``**bold**`` and `` `code` ``;
    everything escaped first, so the card cannot inject markup.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre><code>{esc(chr(10).join(block))}</code></pre>")
            i += 1
        elif stripped.startswith("#"):
            level = min(len(stripped) - len(stripped.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{_inline(stripped.lstrip('#').strip())}</h{level}>")
            i += 1
        elif stripped.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            cells = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif stripped.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
        elif not stripped:
            i += 1
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not lines[i].strip().startswith(("#", "|", "```", "- ", "* "))
            ):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)
