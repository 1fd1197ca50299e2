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

Then the registry's versions, with this site's newest local evaluation of each (``sarclym-node
evaluate``: pass or fail against the acceptance criteria, the figures, who ran it when, the
report and its SHA-256; or plainly "not evaluated on this site's cases"), who activated or
rolled back which version when (the registry's ``ACTIVATIONS``), and the model card of the
version the node runs (:meth:`~sarclym.model.inference.registry.Registry.card`: its change
record with the activations and the newest local evaluation merged in).

An evaluation counts for a version only when it evaluated the very weights of the version's
card (their SHA-256), as the activation gate has it
(:func:`~sarclym.node.store.evaluations.passing_evaluation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sarclym.node.http.views import esc, markdown_to_html, stamp, table
from sarclym.node.store.audit import AuditEvent, process_actor
from sarclym.node.store.evaluations import EvaluationRecord, newest_evaluation
from sarclym.node.store.records import SeriesResult, SeriesStatus
from sarclym.node.store.state import StateDB

if TYPE_CHECKING:
    from sarclym.model.inference.registry import ModelInfo, Registry
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


# -- local evaluations and activations (issue 15) -------------------------------------------------

#: What the page says of a version with no local evaluation of its weights.
NOT_EVALUATED = "not evaluated on this site's cases"
#: Figures shown of an evaluation, in this order.
_FIGURES = (("auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def newest_evaluations(
    state: StateDB, weights: Mapping[str, str]
) -> dict[str, EvaluationRecord | None]:
    """The newest local evaluation of each version's own weights, or None.

    :func:`~sarclym.node.store.evaluations.newest_evaluation` of each: the read ``model show``
    uses too.

    Parameters
    ----------
    state
        The node's state database (``evaluations``).
    weights
        ``version -> weights SHA-256`` of its card: an evaluation of other weights under the
        same version name is not this version's.
    """
    return {version: newest_evaluation(state, version, sha) for version, sha in weights.items()}


def _read_evaluations(
    config: Config, state: StateDB | None, weights: Mapping[str, str]
) -> dict[str, EvaluationRecord | None] | str:
    """:func:`newest_evaluations` from ``state``, else from the data folder's state.db when it
    exists (no evaluation otherwise); the error's text when the database cannot be read."""
    from sarclym.node.errors import StateError

    try:
        if state is not None:
            return newest_evaluations(state, weights)
        if not StateDB.stored_for(config.storage):
            return dict.fromkeys(weights)
        with StateDB.of_storage(config.storage) as opened:
            return newest_evaluations(opened, weights)
    except (StateError, OSError, ValueError) as exc:
        return f"the state database cannot be read: {exc}"


def _number(value: Any) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.3f}"
    return "n/a"


def _figures(record: EvaluationRecord) -> str:
    """``AUC 0.930 (95% CI 0.830-0.980); ...; ECE 0.040; refusal rate 5.0%``."""
    metrics = record.metrics.get("metrics") or {}
    parts = []
    for key, name in _FIGURES:
        ci = metrics.get(key)
        if isinstance(ci, Mapping):
            parts.append(
                f"{name} {_number(ci.get('estimate'))} (95% CI {_number(ci.get('low'))}-"
                f"{_number(ci.get('high'))})"
            )
    parts.append(f"ECE {_number(record.metrics.get('ece'))}")
    rate = record.metrics.get("refusal_rate")
    if isinstance(rate, int | float) and math.isfinite(rate):
        parts.append(f"refusal rate {rate:.1%}")
    return "; ".join(parts)


def _failed_criteria(record: EvaluationRecord) -> str:
    failed = []
    for c in record.metrics.get("criteria") or []:
        if isinstance(c, Mapping) and not c.get("passed", True):
            bound = c.get("bound")
            failed.append(
                f"failed acceptance.{c.get('name')}: {_number(c.get('value'))}"
                + (f" (bound {bound:g})" if isinstance(bound, int | float) else "")
            )
    return "; ".join(failed)


def _outcome(record: EvaluationRecord) -> str:
    return (
        '<b class="evaluation-passed">passed</b>'
        if record.passed
        else '<b class="evaluation-failed error">FAILED</b>'
    )


def _evaluation_row(version: str, sha: str, record: EvaluationRecord | None) -> str:
    head = f'<td class="version">{esc(version)}</td>'
    if record is None:
        return (
            f'<tr class="not-evaluated">{head}<td class="muted" colspan="4">{NOT_EVALUATED} '
            f"(<code>sarclym-node evaluate --cases DIR --model {esc(version)}</code>)</td>"
            f'<td><code title="{esc(sha)}">{esc(sha[:16])}</code></td></tr>'
        )
    failed = _failed_criteria(record)
    return (
        f'<tr class="evaluated">{head}<td>{_outcome(record)}</td>'
        f"<td>{esc(stamp(record.run_at))} by {esc(record.run_by)}: {record.n_cases} cases, "
        f"{record.n_refused} refused</td>"
        f"<td>{esc(_figures(record))}"
        + (f'<br><span class="error">{esc(failed)}</span>' if failed else "")
        + f"</td><td><code>{esc(record.report_path)}</code><br>SHA-256 "
        f"<code>{esc(record.report_sha256)}</code></td>"
        f'<td><code title="{esc(sha)}">{esc(sha[:16])}</code></td></tr>'
    )


def _evaluations_section(
    evaluations: Mapping[str, EvaluationRecord | None] | str, weights: Mapping[str, str]
) -> str:
    intro = (
        '<p class="muted">Research use only. The newest local acceptance test of each version\'s '
        "weights on this site's labelled cases (<code>sarclym-node evaluate</code>), against "
        "the criteria of the configuration's <code>acceptance</code> section; <code>model "
        "activate</code> needs a passing one.</p>"
    )
    if isinstance(evaluations, str):
        return f'{intro}<p class="error">{esc(evaluations)}</p>'
    rows = [_evaluation_row(v, weights[v], evaluations.get(v)) for v in weights]
    headers = ["version", "outcome", "run", "figures", "report", "weights SHA-256"]
    return intro + table(headers, rows)


def _activations_section(registry: Registry) -> str:
    """Who activated or rolled back which version when, newest first."""
    from sarclym.model.errors import RegistryError

    try:
        records = registry.activations()
    except RegistryError as exc:
        return f'<p class="error">{esc(exc)}</p>'
    rows = []
    for a in reversed(records):
        gates = a.get("forced_gates") or []
        forced = f"forced over: {', '.join(map(str, gates))}" if a.get("forced") else ""
        rows.append(
            f'<tr class="activation"><td>{esc(a.get("at"))}</td><td>{esc(a.get("action"))}</td>'
            f'<td class="version">{esc(a.get("version"))}</td><td>{esc(a.get("by"))}</td>'
            f'<td class="error">{esc(forced)}</td></tr>'
        )
    return table(
        ["when (UTC)", "action", "version", "by", ""],
        rows,
        empty="no activation recorded (the registry records who activated what since issue 15)",
    )


def _with_local_evaluation(card: dict[str, Any], record: EvaluationRecord | None) -> None:
    """Merge the newest local evaluation into a change record (as ``model show`` does)."""
    change = card.get("change_record")
    if record is None or not isinstance(change, dict):
        return
    change.setdefault("evaluation", {})["local"] = record.change_record_entry()


def _evaluation_fact(evaluations: Mapping[str, EvaluationRecord | None] | str, wanted: str) -> str:
    if isinstance(evaluations, str):
        return f'<span class="error">{esc(evaluations)}</span>'
    record = evaluations.get(wanted)
    if record is None:
        return f'<span class="muted">{NOT_EVALUATED}</span>'
    return (
        f"{_outcome(record)} {esc(stamp(record.run_at))} by {esc(record.run_by)} on "
        f"{record.n_cases} cases"
    )


def model_page(
    config: Config,
    *,
    loaded: LoadedVersion | None = None,
    events: Sequence[AuditEvent] = (),
    state: StateDB | None = None,
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
    state
        The node's state database, for the local evaluations; None: the data folder's
        ``state.db`` is opened for the read when it exists.
    """
    from sarclym.model.errors import RegistryError
    from sarclym.model.inference.registry import render_card
    from sarclym.node.worker.registry import open_registry

    pinned = config.model.version
    try:
        registry = open_registry(config)
        active = registry.active()
        wanted = pinned or active
        if wanted is None:
            return f'<p class="error">No active model version in {esc(registry.root)}.</p>'
        card = registry.card(wanted)
        versions = registry.versions()
        weights = {
            v.version: str(registry.card(v.version).get("weights_sha256", "")) for v in versions
        }
    except (RegistryError, OSError, ValueError) as exc:
        return f'<p class="error">The model registry cannot be read: {esc(exc)}</p>'
    evaluations = _read_evaluations(config, state, weights)
    if not isinstance(evaluations, str):
        _with_local_evaluation(card, evaluations.get(wanted))
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
        ("local evaluation", _evaluation_fact(evaluations, wanted)),
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
        f"<h2>Local evaluations</h2>{_evaluations_section(evaluations, weights)}"
        f"<h2>Activations</h2>{_activations_section(registry)}"
        f'<h2>Model card</h2><div class="md model-card">{markdown_to_html(render_card(card))}</div>'
    )
