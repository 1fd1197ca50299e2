"""Local evaluations of model versions on this site's cases (``sarclym-node evaluate``): the
records activation checks. Tables: ``evaluations`` (migrations in :mod:`.schema`).

One row per version per ``evaluate`` run, written in the same transaction as its ``evaluated``
audit event (:mod:`.audit`), so the record and the log cannot disagree. Rows are never updated:
an evaluation is a fact about one set of weights (its SHA-256) on one set of cases (the
fingerprint of their study UIDs and labels) at one time.

Activation (:func:`passing_evaluation`) needs a passing row of the same version **and** the
same weights hash: a version folder whose weights were replaced is not the version evaluated.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sarclym.node.store.audit import SeriesEvent, model_subject, record_event

if TYPE_CHECKING:
    from sarclym.node.store.state import StateDB

__all__ = [
    "EvaluationRecord",
    "evaluations_of",
    "newest_evaluation",
    "passing_evaluation",
    "record_activation",
    "record_evaluation",
]


@dataclass(frozen=True)
class EvaluationRecord:
    """One local evaluation of one model version.

    Attributes
    ----------
    model_version, weights_sha256
        What was evaluated.
    case_set
        SHA-256 (hex) of the sorted ``study_uid<TAB>label`` lines of the analysed cases.
    n_cases, n_refused
        Cases analysed; labelled rows refused, not found or ambiguous.
    metrics
        The version's figures as the report's JSON has them (estimates and 95% CIs, ECE,
        refusal rate, per-criterion pass/fail).
    passed
        Every acceptance criterion met.
    report_path, report_sha256
        The JSON report and its SHA-256.
    run_by, run_at
        OS user; POSIX seconds.
    """

    model_version: str
    weights_sha256: str
    case_set: str
    n_cases: int
    n_refused: int
    metrics: Mapping[str, Any]
    passed: bool
    report_path: str
    report_sha256: str
    run_by: str
    run_at: float

    def change_record_entry(self) -> dict[str, Any]:
        """The ``evaluation.local`` entry of a card's change record (``model show``, the Model
        page): when (ISO 8601, UTC), who, cases, figures, pass or fail, the report and its hash.
        """
        return {
            "run_at": dt.datetime.fromtimestamp(self.run_at, dt.UTC).isoformat(),
            "run_by": self.run_by,
            "n_cases": self.n_cases,
            "metrics": self.metrics.get("metrics", {}),
            "passed": self.passed,
            "report": self.report_path,
            "report_sha256": self.report_sha256,
        }


_COLUMNS = (
    "model_version, weights_sha256, case_set, n_cases, n_refused, metrics, passed, "
    "report_path, report_sha256, run_by, run_at"
)


def record_evaluation(state: StateDB, record: EvaluationRecord) -> None:
    """Store ``record`` and its ``evaluated`` audit event in one transaction."""
    with state.transaction() as conn:
        conn.execute(
            f"INSERT INTO evaluations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.model_version,
                record.weights_sha256,
                record.case_set,
                record.n_cases,
                record.n_refused,
                json.dumps(dict(record.metrics), sort_keys=True, default=str),
                int(record.passed),
                record.report_path,
                record.report_sha256,
                record.run_by,
                record.run_at,
            ),
        )
        record_event(
            conn,
            model_subject(record.model_version),
            SeriesEvent.EVALUATED,
            actor=f"cli:{record.run_by}",
            detail={
                "model_version": record.model_version,
                "weights_sha256": record.weights_sha256,
                "case_set": record.case_set,
                "n_cases": record.n_cases,
                "n_refused": record.n_refused,
                "passed": record.passed,
                "report": record.report_path,
                "report_sha256": record.report_sha256,
            },
            now=record.run_at,
        )


def _record(row: Any) -> EvaluationRecord:
    return EvaluationRecord(
        model_version=row["model_version"],
        weights_sha256=row["weights_sha256"],
        case_set=row["case_set"],
        n_cases=int(row["n_cases"]),
        n_refused=int(row["n_refused"]),
        metrics=json.loads(row["metrics"]),
        passed=bool(row["passed"]),
        report_path=row["report_path"],
        report_sha256=row["report_sha256"],
        run_by=row["run_by"],
        run_at=float(row["run_at"]),
    )


def evaluations_of(state: StateDB, model_version: str) -> list[EvaluationRecord]:
    """Every evaluation of ``model_version``, newest first."""
    rows = state.query(
        f"SELECT {_COLUMNS} FROM evaluations WHERE model_version = ? ORDER BY run_at DESC, id DESC",
        (model_version,),
    )
    return [_record(row) for row in rows]


def newest_evaluation(
    state: StateDB, model_version: str, weights_sha256: str
) -> EvaluationRecord | None:
    """The newest evaluation of these very weights, passed or failed, or None.

    What ``model show`` and the dashboard's Model page report as a version's local evaluation:
    an evaluation of other weights under the same version name is not this version's.
    """
    rows = state.query(
        f"SELECT {_COLUMNS} FROM evaluations WHERE model_version = ? AND weights_sha256 = ? "
        "ORDER BY run_at DESC, id DESC LIMIT 1",
        (model_version, weights_sha256),
    )
    return _record(rows[0]) if rows else None


def passing_evaluation(
    state: StateDB, model_version: str, weights_sha256: str
) -> EvaluationRecord | None:
    """The newest passing evaluation of these very weights, or None."""
    rows = state.query(
        f"SELECT {_COLUMNS} FROM evaluations WHERE model_version = ? AND weights_sha256 = ? "
        "AND passed = 1 ORDER BY run_at DESC, id DESC LIMIT 1",
        (model_version, weights_sha256),
    )
    return _record(rows[0]) if rows else None


def record_activation(
    state: StateDB,
    model_version: str,
    weights_sha256: str,
    *,
    user: str,
    forced: bool,
    gates: Mapping[str, Any],
    now: float | None = None,
) -> None:
    """Audit an activation: who, when, which version, and which gates were passed or forced.

    Parameters
    ----------
    gates
        What each gate said, e.g. ``{"local_evaluation": "overridden (--force)", ...}``.
    """
    with state.transaction() as conn:
        record_event(
            conn,
            model_subject(model_version),
            SeriesEvent.ACTIVATED,
            actor=f"cli:{user}",
            detail={
                "model_version": model_version,
                "weights_sha256": weights_sha256,
                "forced": forced,
                **{f"gate_{k}": v for k, v in gates.items()},
            },
            now=time.time() if now is None else now,
        )
