"""The dashboard's Model page: the version the node should run beside what its processes run.

``model activate`` and ``model rollback`` change the registry's active version; each process
that runs the model loads it before its next series
(:mod:`sarclym.node.worker.running_model`), and ``model.version`` in the configuration pins a
version that activation does not change. So the page shows, side by side:

- **active**: the registry's active version, and **pinned** when ``model.version`` is set (the
  version this node runs whatever is active);
- **loaded**: what this ``serve`` process runs now (its worker threads), and what each process
  (each ``worker``, and this ``serve``) ran for its latest result, from the audit log's ``done``
  events (which name the model version); a process behind the wanted version loads it before
  its next series, and one that could not load it says why.

Then the registry's versions and the model card of the version the node runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sarclym.node.http.views import esc, markdown_to_html, stamp, table
from sarclym.node.store.audit import AuditEvent, process_actor
from sarclym.node.store.records import SeriesResult, SeriesStatus

if TYPE_CHECKING:
    from sarclym.model.inference.registry import ModelInfo
    from sarclym.node.config import Config
    from sarclym.node.worker.running_model import LoadedVersion

__all__ = ["model_page", "reported_versions"]

#: Processes listed from the audit log, newest report first.
_MAX_REPORTS = 20


def reported_versions(events: Sequence[AuditEvent]) -> dict[str, tuple[str, float]]:
    """The model version of each process's latest result: ``{actor: (version, at)}``.

    Parameters
    ----------
    events
        Audit events, newest first (:func:`~sarclym.node.store.audit.audit_events`); the
        ``done`` events name the process (actor) and the model version.
    """
    reports: dict[str, tuple[str, float]] = {}
    for event in events:
        if event.event != SeriesStatus.DONE.value or event.actor in reports:
            continue
        result = SeriesResult.from_detail(event.detail)
        if result is not None and result.model_version:
            reports[event.actor] = (result.model_version, event.at)
    return reports


def _lag(version: str, wanted: str) -> str:
    """What happens next for a process that ran ``version`` while ``wanted`` is to run."""
    return "" if version == wanted else f"loads {wanted} before its next series"


def _this_process(config: Config, loaded: LoadedVersion | None, wanted: str) -> str:
    """The row of this ``serve`` process: what its worker threads run."""
    actor = esc(process_actor())
    if not config.service.workers:
        return (
            f'<tr class="this-process"><td>this serve</td><td class="actor">{actor}</td>'
            '<td class="loaded-version">none</td><td></td><td class="muted">service.workers '
            "is 0: the worker processes run the model</td></tr>"
        )
    if loaded is None:
        return (
            f'<tr class="this-process"><td>this serve</td><td class="actor">{actor}</td>'
            '<td class="loaded-version">not loaded yet</td><td></td><td class="muted">'
            f"loads {esc(wanted)} before its first series</td></tr>"
        )
    if loaded.error and loaded.version != wanted:
        note = (
            f'<span class="error">cannot load {esc(wanted)}: {esc(loaded.error)}; still runs '
            f"{esc(loaded.version)}, and tries again before its next series</span>"
        )
    else:
        note = esc(_lag(loaded.version, wanted))
    return (
        f'<tr class="this-process"><td>this serve</td><td class="actor">{actor}</td>'
        f'<td class="loaded-version">{esc(loaded.version)}</td>'
        f"<td>loaded {esc(stamp(loaded.loaded_at))}</td><td>{note}</td></tr>"
    )


def _reported(events: Sequence[AuditEvent], wanted: str) -> list[str]:
    """One row per other process, from its latest result."""
    this = process_actor()
    reports = sorted(reported_versions(events).items(), key=lambda kv: kv[1][1], reverse=True)
    rows = []
    for actor, (version, at) in [(a, r) for a, r in reports if a != this][:_MAX_REPORTS]:
        rows.append(
            f'<tr class="reported"><td>reported</td><td class="actor">{esc(actor)}</td>'
            f'<td class="reported-version">{esc(version)}</td>'
            f"<td>latest result {esc(stamp(at))}</td><td>{esc(_lag(version, wanted))}</td></tr>"
        )
    return rows


def _versions_table(versions: Sequence[ModelInfo], pinned: str | None) -> str:
    rows = [
        f"<tr><td>{esc(v.version)}</td>"
        f"<td>{'active' if v.active else ''}{' pinned' if v.version == pinned else ''}</td>"
        f"<td>{esc(v.arch)}</td><td>{esc(v.created)}</td>"
        f"<td>{'' if v.cv_auc_mean is None else f'{v.cv_auc_mean:.3f}'}</td>"
        f"<td>{'synthetic' if v.synthetic_data else ''}</td></tr>"
        for v in versions
    ]
    return table(["version", "", "architecture", "created", "CV AUC", "data"], rows)


def model_page(
    config: Config,
    *,
    loaded: LoadedVersion | None = None,
    events: Sequence[AuditEvent] = (),
) -> str:
    """The body of ``/dashboard/model``.

    Parameters
    ----------
    config
        The node configuration (``model``, ``service.workers``, the data folder).
    loaded
        What this ``serve`` process runs (:meth:`~sarclym.node.worker.processor.Processor.
        loaded_version`); None when it has loaded no model.
    events
        Recent audit events, newest first: each process's latest ``done`` event says which
        version it ran.
    """
    from sarclym.model.errors import RegistryError
    from sarclym.model.inference.registry import CARD_FILE, render_card
    from sarclym.node.worker.registry import open_registry

    pinned = config.model.version
    try:
        registry = open_registry(config)
        active = registry.active()
        wanted = pinned or active
        if wanted is None:
            return f'<p class="error">No active model version in {esc(registry.root)}.</p>'
        card = json.loads((registry.root / wanted / CARD_FILE).read_text(encoding="utf-8"))
        versions = registry.versions()
    except (RegistryError, OSError, ValueError) as exc:
        return f'<p class="error">The model registry cannot be read: {esc(exc)}</p>'
    facts = [
        (
            "active",
            f'<b class="active-version">{esc(active)}</b> (the registry\'s: <code>model '
            "activate</code> and <code>model rollback</code> change it; a running process "
            "loads it before its next series)",
        ),
    ]
    if pinned:
        facts.append(
            (
                "pinned",
                f'<b class="pinned-version">{esc(pinned)}</b> (model.version in the '
                "configuration: this node runs it whatever is active)",
            )
        )
    facts += [
        ("runs", f'<b class="model-version">{esc(wanted)}</b>'),
        (
            "weights SHA-256",
            f'<code class="weights-sha256">{esc(card.get("weights_sha256"))}</code>',
        ),
        ("architecture", esc(card.get("arch"))),
        ("created", esc(card.get("created"))),
        ("registry", f"<code>{esc(registry.root)}</code>"),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    rows = [_this_process(config, loaded, wanted), *_reported(events, wanted)]
    loaded_html = table(["", "process", "version", "", ""], rows)
    return (
        f'<dl class="facts">{dl}</dl><h2>Loaded</h2>'
        '<p class="muted">What this serve runs now, and the version each process ran for its '
        "latest result (the audit log).</p>"
        f"{loaded_html}<h2>Versions in the registry</h2>{_versions_table(versions, pinned)}"
        f'<h2>Model card</h2><div class="md model-card">{markdown_to_html(render_card(card))}</div>'
    )
