"""The acceptance report: one HTML page a person reads, one JSON file with every figure.

``<out>/evaluation-<versions>-<UTC time>.html`` holds the tables and the plots (ROC curves of all
versions, reliability diagram; matplotlib with the Agg backend, embedded as PNG data URIs, so
the page is one self-contained file); ``.json`` beside it holds the figures, the per-case scores
with the stored StudyInstanceUIDs, the criteria and their pass or fail, who ran it and when, each
model's version and weights' SHA-256, the labels file's SHA-256 and the case folder, and the
HTML's SHA-256. ``.sha256`` lists both files' SHA-256 in ``sha256sum`` format
(``sha256sum -c`` checks them).

Both say "research use only". The HTML holds no patient identifier beyond what the labels file
and the case store hold (study UIDs, the unmatched rows' keys): it is for the site.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarclym.model.training.evaluation import METRIC_NAMES, DeLongResult
from sarclym.node.acceptance.caseset import CaseSet, file_sha256
from sarclym.node.acceptance.scoring import VersionScores, per_case

__all__ = ["RESEARCH_USE", "ReportFiles", "build_report", "write_report"]

RESEARCH_USE = "Research use only - not for clinical use, not for diagnosis."


@dataclass(frozen=True)
class ReportFiles:
    """The files of one report and their SHA-256."""

    html: Path
    json: Path
    sha256_file: Path
    html_sha256: str
    json_sha256: str


def _finite(value: Any) -> Any:
    """JSON without NaN: ``nan`` and infinities become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_report(
    versions: Sequence[VersionScores],
    cases: CaseSet,
    comparison: DeLongResult | None,
    *,
    run_by: str,
    run_at: dt.datetime,
) -> dict[str, Any]:
    """The JSON report (without the HTML's SHA-256, added by :func:`write_report`)."""
    return _finite(
        {
            "research_use_only": True,
            "disclaimer": RESEARCH_USE,
            "run_by": run_by,
            "run_at": run_at.isoformat(timespec="seconds"),
            "cases": {
                "folder": str(cases.folder),
                "case_store": cases.case_store,
                "pseudonymised": cases.pseudonymised,
                "key_fingerprint": cases.key_fingerprint,
                "labels_matched_by_keyed_hash": cases.labels_hashed,
                "labels_file": str(cases.labels_path),
                "labels_sha256": cases.labels_sha256,
                "labels_keyed_by": cases.labels_kind.value,
                "labelled_rows": cases.n_rows,
                "matched": len(cases.labels),
                "unmatched": cases.unmatched,
            },
            "models": [
                {
                    "name": v.name,
                    "version": v.version,
                    "weights_sha256": v.weights_sha256,
                    **v.figures(),
                    "roc": {"fpr": v.roc[0], "tpr": v.roc[1]},
                    "reliability": [
                        {
                            "low": b.low,
                            "high": b.high,
                            "count": b.count,
                            "mean_predicted": b.mean_predicted,
                            "fraction_positive": b.fraction_positive,
                        }
                        for b in v.bins
                    ],
                    "refused": [
                        {"study_instance_uid": u, "reason": r} for u, r in v.refused.items()
                    ],
                }
                for v in versions
            ],
            "comparison": None
            if comparison is None
            else {
                "method": "DeLong et al. 1988, paired, two-sided",
                "a": versions[0].version,
                "b": versions[1].version,
                **comparison.as_dict(),
            },
            "per_case": per_case(versions, cases.labels),
            "passed": all(v.passed for v in versions),
        }
    )


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(versions: Sequence[VersionScores]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    roc = Figure(figsize=(5, 5))
    ax = roc.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", label="chance")
    for v in versions:
        auc = v.metrics.get("auc")
        tag = "" if auc is None or math.isnan(auc.estimate) else f" (AUC {auc.estimate:.3f})"
        ax.plot(v.roc[0], v.roc[1], drawstyle="default", label=f"{v.version}{tag}")
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (lymphoma)")
    ax.set_title("ROC curves - research use only")
    ax.legend(loc="lower right")
    rel = Figure(figsize=(5, 5))
    ax = rel.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", label="perfect calibration")
    for v in versions:
        pts = [(b.mean_predicted, b.fraction_positive) for b in v.bins if b.count]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{v.version} (ECE {v.ece:.3f})")
    ax.set_xlabel("mean predicted P(lymphoma) in bin")
    ax.set_ylabel("observed share of lymphoma")
    ax.set_title("Reliability diagram - research use only")
    ax.legend(loc="upper left")
    return _png(roc), _png(rel)


def _f(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _provenance(run_by: str, run_at: str, cases: Mapping[str, Any]) -> str:
    e = html.escape
    pseudo = "pseudonymised case store" if cases["pseudonymised"] else "not pseudonymised"
    return (
        f"<p>Run by {e(run_by)} at {e(run_at)} (UTC) on {e(cases['folder'])}; labels "
        f"{e(cases['labels_file'])} (SHA-256 <code>{e(cases['labels_sha256'])}</code>, keyed by "
        f"{e(cases['labels_keyed_by'])}); {pseudo}.</p>"
    )


def _html(report: Mapping[str, Any], versions: Sequence[VersionScores]) -> str:
    roc_png, rel_png = _plots(versions)
    e = html.escape
    verdict = "PASSED" if report["passed"] else "FAILED"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Local acceptance test {e(', '.join(v.version for v in versions))}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
        ".pass{color:#060}.fail{color:#a00;font-weight:bold}</style></head><body>",
        f"<p><strong>{e(RESEARCH_USE)}</strong></p>",
        f"<h1>Local acceptance test: {verdict}</h1>",
        _provenance(report["run_by"], report["run_at"], report["cases"]),
    ]
    for model in report["models"]:
        parts += [
            f"<h2>{e(model['name'])} {e(model['version'])}: "
            f"<span class='{'pass' if model['passed'] else 'fail'}'>"
            f"{'passed' if model['passed'] else 'failed'}</span></h2>",
            f"<p>Weights SHA-256 <code>{e(model['weights_sha256'])}</code>. "
            f"{model['n_cases']} cases analysed ({model['n_lymphoma']} lymphoma, "
            f"{model['n_sarcoidosis']} sarcoidosis), {model['n_refused']} refused, "
            f"{model['n_unmatched']} unmatched of {model['n_labelled_rows']} labelled rows; "
            f"threshold P(lymphoma) &ge; {model['threshold']}.</p>",
            "<table><tr><th>metric</th><th>estimate</th><th>95% CI (bootstrap)</th></tr>",
        ]
        for name in METRIC_NAMES:
            m = model["metrics"][name]
            parts.append(
                f"<tr><td>{name}</td><td>{_f(m['estimate'])}</td>"
                f"<td>{_f(m['low'])}-{_f(m['high'])}</td></tr>"
            )
        parts.append(f"<tr><td>ECE (10 bins)</td><td>{_f(model['ece'])}</td><td></td></tr>")
        parts.append(
            f"<tr><td>refusal rate</td><td>{_f(model['refusal_rate'])}</td><td></td></tr></table>"
        )
        if model.get("n_outside_training_data") is not None:
            parts.append(
                f"<p>Outside the model's training data (out-of-distribution score above "
                f"{_f(model['ood_threshold'])}): <b>{model['n_outside_training_data']}</b> of "
                f"{model['n_cases']} cases. A site whose scans are often outside is not the "
                "population the model was trained on.</p>"
            )
        parts.append(
            "<h3>Criteria</h3><table><tr><th>key</th><th>criterion</th><th>bound</th>"
            "<th>value</th><th>result</th></tr>"
        )
        for c in model["criteria"]:
            ok = c["passed"]
            parts.append(
                f"<tr><td>acceptance.{e(c['name'])}</td><td>{e(c['description'])}</td>"
                f"<td>{_f(c['bound'])}</td><td>{_f(c['value'])}</td>"
                f"<td class='{'pass' if ok else 'fail'}'>{'pass' if ok else 'FAIL'}</td></tr>"
            )
        parts.append("</table>")
        if model["refused"]:
            parts.append("<h3>Refused studies</h3><ul>")
            parts += [
                f"<li>{e(r['study_instance_uid'])}: {e(r['reason'])}</li>" for r in model["refused"]
            ]
            parts.append("</ul>")
    if report["cases"]["unmatched"]:
        parts.append("<h2>Labelled rows not matched</h2><ul>")
        parts += [f"<li>{e(u['row'])}: {e(u['reason'])}</li>" for u in report["cases"]["unmatched"]]
        parts.append("</ul>")
    cmp_ = report["comparison"]
    if cmp_ is not None:
        parts.append(
            f"<h2>Paired comparison (DeLong)</h2><p>AUC {e(cmp_['a'])} {_f(cmp_['auc_a'])} vs "
            f"{e(cmp_['b'])} {_f(cmp_['auc_b'])}: difference {_f(cmp_['difference'])} "
            f"(95% CI {_f(cmp_['ci95'][0])} to {_f(cmp_['ci95'][1])}), z {_f(cmp_['z'])}, "
            f"p {_f(cmp_['p_value'])}.</p>"
        )
    parts += [
        "<h2>Plots</h2>",
        f"<img alt='ROC curves' src='{roc_png}'> <img alt='Reliability diagram' src='{rel_png}'>",
        f"<p><strong>{e(RESEARCH_USE)}</strong></p></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(
    out: Path,
    versions: Sequence[VersionScores],
    cases: CaseSet,
    comparison: DeLongResult | None,
    *,
    run_by: str,
    run_at: dt.datetime,
) -> tuple[ReportFiles, dict[str, Any]]:
    """Write the HTML, the JSON and the ``.sha256`` file under ``out`` (created).

    Returns
    -------
    tuple
        The files with their SHA-256, and the JSON report as written.
    """
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        "evaluation-"
        + "+".join(v.version for v in versions)
        + "-"
        + run_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    )
    report = build_report(versions, cases, comparison, run_by=run_by, run_at=run_at)
    html_path, json_path = out / f"{stem}.html", out / f"{stem}.json"
    html_path.write_text(_html(report, versions), encoding="utf-8")
    html_sha = file_sha256(html_path)
    report["html_report"] = {"file": html_path.name, "sha256": html_sha}
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    json_sha = file_sha256(json_path)
    sums = out / f"{stem}.sha256"
    sums.write_text(
        f"{html_sha}  {html_path.name}\n{json_sha}  {json_path.name}\n", encoding="utf-8"
    )
    return ReportFiles(html_path, json_path, sums, html_sha, json_sha), report
