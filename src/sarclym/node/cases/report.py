"""The report of a pull: a table on standard output and ``<out>/pull-report.json``.

Row keys are patient identifiers: the printed report (read by a person at the site) names them;
the JSON names them only in a store that is not pseudonymised (a pseudonymised store may leave
the clinical network, so its report gives line numbers only). Neither goes to the log.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TextIO

from sarclym.node.cases.labels import LabelsFile
from sarclym.node.cases.pull import FETCHED, SKIPPED, PullReport
from sarclym.node.cases.store import CaseStore

__all__ = ["print_report", "report_json"]

_ORDER = ("fetched", "skipped", "not_found", "ambiguous", "refused", "failed")


def report_json(report: PullReport, labels: LabelsFile, store: CaseStore) -> dict[str, Any]:
    """The JSON document of ``pull-report.json``."""
    rows = []
    for o in report.outcomes:
        item: dict[str, Any] = {"line": o.row.line, "status": o.status, "reason": o.reason}
        if not store.pseudonymised:
            item[labels.kind.value] = " ".join(o.row.key)
        if o.status in (FETCHED, SKIPPED):
            item.update(instances=o.instances, bytes=o.bytes)
        if o.retrieved:
            item["retrieved"] = o.retrieved
        rows.append(item)
    return {
        "source": report.source,
        "labels": labels.path.name,
        "key": labels.kind.value,
        "pseudonymised": store.pseudonymised,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "summary": report.summary(),
        "rows": rows,
    }


def print_report(report: PullReport, labels: LabelsFile, store: CaseStore, out: TextIO) -> None:
    """The table a person reads: counts, rate, then one line per row that is not in the store."""
    s = report.summary()
    out.write(f"cases pull from {report.source} into {store.root}\n")
    out.write(f"  {'rows':<12}{s['rows']:>6}\n  {'found':<12}{s['found']:>6}\n")
    for name in _ORDER:
        out.write(f"  {name.replace('_', ' '):<12}{s[name]:>6}\n")
    mb = s["bytes_fetched"] / 1e6
    rate = "" if s["studies_per_minute"] is None else f", {s['studies_per_minute']} studies/min"
    speed = "" if s["mb_per_s"] is None else f", {s['mb_per_s']} MB/s"
    out.write(f"  {mb:.1f} MB fetched in {s['seconds']:.1f} s{rate}{speed}\n")
    for o in report.outcomes:
        if o.status not in (FETCHED, SKIPPED):
            out.write(f"  {o.status}: {o.row.describe(labels.kind)}: {o.reason}\n")
    out.write(f"report: {store.paths.report}\nlabels: {store.paths.labels}\n")
