"""Final diagnoses that come back for results, and what monitoring keeps beside them.

Tables (component ``feedback``, migrations in :mod:`.schema`):

======================== ========================================================================
``analysed_studies``     each study the worker analysed: its (0008,0050) *Accession Number* as a
                         keyed hash (HMAC-SHA256 with the node's key, :func:`ensure_node_key`),
                         never in clear, so that ``feedback import`` can match accession numbers
``input_facts``          per analysed series: scored / refused / not scored, the model version and
                         the input facts drift compares (scanner, reconstruction, dose, uptake...)
``feedback``             the current final diagnosis of a study (:data:`DIAGNOSES`), who, when,
                         from where (``dashboard`` or ``import``)
``feedback_history``     every change of a diagnosis with the value it replaced: the audit trail
``model_reviews``        whether a model version is under review (the stop rule), since when, why
``model_review_history`` every review and every lifting, who and why: the audit trail
``monitoring_figures``   the last concordance and the drift reference of each version (JSON)
======================== ========================================================================

Feedback is per study: the diagnosis belongs to the patient's study, and every analysed series
of it (and every model version that scored it) is compared with it. No PHI is stored: study
UIDs, keyed hashes, scanner facts, dose and weight.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sarclym.model.classes import CLASSES
from sarclym.node.store.audit import SeriesEvent, model_subject, record_event, study_subject
from sarclym.node.store.durable import create_durable
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.records import SeriesStatus
from sarclym.node.store.state import StateDB

__all__ = [
    "DIAGNOSES",
    "FEEDBACK_SOURCES",
    "Feedback",
    "FeedbackChange",
    "InputFacts",
    "LabelledResult",
    "ModelReview",
    "accession_hasher",
    "analysed_accessions",
    "ensure_node_key",
    "feedback_counts",
    "feedback_for",
    "feedback_history",
    "figures",
    "input_facts",
    "labelled_results",
    "lift_review",
    "model_reviews",
    "node_key_path",
    "pet_study_outcomes",
    "put_under_review",
    "record_analysed_study",
    "record_input_facts",
    "review_history",
    "save_figures",
    "set_feedback",
    "weights_of_versions",
]

#: What a final diagnosis fed back after go-live may be (the two classes, then the rest).
DIAGNOSES: tuple[str, ...] = (*CLASSES, "other", "unknown")

#: Where a diagnosis came from.
FEEDBACK_SOURCES: tuple[str, ...] = ("dashboard", "import")

# -- the node's key ------------------------------------------------------------------------------


def node_key_path(data_dir: Path) -> Path:
    """``<data_dir>/monitoring-hmac.key``: the key of :func:`accession_hasher`."""
    return DataLayout(Path(data_dir)).monitoring_key


def ensure_node_key(path: Path) -> bytes:
    """Read the node's 256-bit HMAC key, creating it (mode 0600) when the file does not exist.

    Created with :func:`~sarclym.node.store.durable.create_durable`: two processes starting at
    once agree on one key, and a crash never leaves half a key. A file readable by others is
    made 0600. The key is never logged.

    Raises
    ------
    OSError
        The file cannot be read or written, or it holds no key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        create_durable(path, (secrets.token_hex(32) + "\n").encode("ascii"))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise OSError(f"{path}: not a hex key (delete it to get a new one)") from exc
    if len(key) < 16:
        raise OSError(f"{path}: key shorter than 128 bits (delete it to get a new one)")
    return key


def accession_hasher(key: bytes) -> Any:
    """``hasher(keyword, value)`` for :func:`sarclym.node.cases.labels.match_labels`.

    HMAC-SHA256 of ``"<keyword>=<value stripped>"`` with the node's key, as hex: the value
    :func:`record_analysed_study` stores for (0008,0050) *Accession Number*.
    """

    def hasher(keyword: str, value: str) -> str:
        message = f"{keyword}={value.strip()}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    return hasher


# -- what the worker saw ------------------------------------------------------------------------


def record_analysed_study(
    state: StateDB, study_uid: str, accession_hmac: str | None, *, now: float | None = None
) -> None:
    """Remember an analysed study and the keyed hash of its accession number (or None)."""
    with state.transaction() as conn:
        conn.execute(
            "INSERT INTO analysed_studies (study_uid, accession_hmac, recorded_at) "
            "VALUES (?, ?, ?) ON CONFLICT (study_uid) DO UPDATE SET "
            "accession_hmac = COALESCE(excluded.accession_hmac, analysed_studies.accession_hmac)",
            (study_uid, accession_hmac, time.time() if now is None else now),
        )


def analysed_accessions(state: StateDB) -> dict[str, str | None]:
    """StudyInstanceUID -> keyed hash of its accession number (None when it had none)."""
    rows = state.query("SELECT study_uid, accession_hmac FROM analysed_studies")
    return {row["study_uid"]: row["accession_hmac"] for row in rows}


@dataclass(frozen=True)
class InputFacts:
    """What the worker recorded of one analysed series (see ``monitoring.drift``)."""

    series_uid: str
    study_uid: str
    at: float
    outcome: str  # scored, refused, not_scored
    model_version: str | None
    facts: dict[str, Any] = field(default_factory=dict)


def record_input_facts(
    state: StateDB,
    series_uid: str,
    study_uid: str,
    *,
    outcome: str,
    model_version: str | None,
    facts: Mapping[str, Any],
    now: float | None = None,
) -> None:
    """Record (or replace, for a series analysed again) the input facts of a series."""
    with state.transaction() as conn:
        conn.execute(
            "INSERT INTO input_facts (series_uid, study_uid, at, outcome, model_version, facts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (series_uid) DO UPDATE SET "
            "at = excluded.at, outcome = excluded.outcome, "
            "model_version = excluded.model_version, facts = excluded.facts",
            (
                series_uid,
                study_uid,
                time.time() if now is None else now,
                outcome,
                model_version,
                json.dumps(dict(facts), sort_keys=True, default=str),
            ),
        )


def input_facts(
    state: StateDB, *, model_version: str | None = None, latest: int | None = None
) -> list[InputFacts]:
    """Recorded input facts, oldest first: all, or the ``latest`` N; of one version if given
    (refusals have no version and are always included)."""
    sql = "SELECT * FROM input_facts"
    params: list[Any] = []
    if model_version is not None:
        sql += " WHERE model_version = ? OR outcome = 'refused'"
        params.append(model_version)
    sql += " ORDER BY at DESC"
    if latest is not None:
        sql += " LIMIT ?"
        params.append(latest)
    rows = state.query(f"SELECT * FROM ({sql}) AS chosen ORDER BY at", params)
    return [
        InputFacts(
            series_uid=row["series_uid"],
            study_uid=row["study_uid"],
            at=row["at"],
            outcome=row["outcome"],
            model_version=row["model_version"],
            facts=json.loads(row["facts"]),
        )
        for row in rows
    ]


def pet_study_outcomes(state: StateDB, *, latest: int) -> tuple[int, int]:
    """Of the latest ``latest`` studies whose PET series are all finished: how many, and how many
    the node refused (no series of it DONE, none kept from scoring by the stop rule)."""
    rows = state.query(
        "SELECT COUNT(*) AS studies, COALESCE(SUM(refused), 0) AS refused FROM ("
        " SELECT s.study_uid, CASE WHEN MAX(CASE WHEN s.status = 'done' THEN 1 ELSE 0 END) = 0"
        " AND COUNT(f.series_uid) = 0 THEN 1 ELSE 0 END AS refused,"
        " MAX(s.status_changed) AS t FROM series s LEFT JOIN input_facts f"
        " ON f.series_uid = s.series_uid AND f.outcome = 'not_scored'"
        " WHERE s.modality = 'PT' GROUP BY s.study_uid"
        " HAVING SUM(CASE WHEN s.status NOT IN ('done', 'skipped', 'failed') THEN 1 ELSE 0 END)"
        " = 0 ORDER BY t DESC LIMIT ?) AS finished",
        (latest,),
    )
    return int(rows[0]["studies"]), int(rows[0]["refused"])


# -- final diagnoses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Feedback:
    """The current final diagnosis of a study."""

    study_uid: str
    diagnosis: str
    actor: str
    source: str
    at: float


@dataclass(frozen=True)
class FeedbackChange:
    """One line of ``feedback_history``."""

    study_uid: str
    diagnosis: str
    previous: str | None
    actor: str
    source: str
    at: float
    detail: dict[str, Any]


def set_feedback(
    state: StateDB,
    study_uid: str,
    diagnosis: str,
    *,
    actor: str,
    source: str,
    detail: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> bool:
    """Set a study's final diagnosis; return whether it changed (same value: nothing written).

    The change and the value it replaced go to ``feedback_history`` in the same transaction.

    Raises
    ------
    ValueError
        ``diagnosis`` not in :data:`DIAGNOSES`, or ``source`` not in :data:`FEEDBACK_SOURCES`.
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"diagnosis must be one of {', '.join(DIAGNOSES)}, not {diagnosis!r}")
    if source not in FEEDBACK_SOURCES:
        raise ValueError(f"source must be one of {', '.join(FEEDBACK_SOURCES)}, not {source!r}")
    now = time.time() if now is None else now
    with state.transaction() as conn:
        conn.lock("feedback", study_uid)  # PostgreSQL: the row may not exist yet
        row = conn.execute(
            "SELECT diagnosis FROM feedback WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        previous = None if row is None else str(row["diagnosis"])
        if previous == diagnosis:
            return False
        conn.execute(
            "INSERT INTO feedback (study_uid, diagnosis, actor, source, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (study_uid) DO UPDATE SET diagnosis = excluded.diagnosis, "
            "actor = excluded.actor, source = excluded.source, at = excluded.at",
            (study_uid, diagnosis, actor, source, now),
        )
        conn.execute(
            "INSERT INTO feedback_history (study_uid, diagnosis, previous, actor, source, at, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                study_uid,
                diagnosis,
                previous,
                actor,
                source,
                now,
                json.dumps(dict(detail or {}), sort_keys=True),
            ),
        )
        record_event(
            conn,
            study_subject(study_uid),
            SeriesEvent.FEEDBACK,
            actor=actor,
            detail={"diagnosis": diagnosis, "previous": previous, "source": source},
            now=now,
        )
    return True


def feedback_for(state: StateDB, study_uid: str) -> Feedback | None:
    """The study's current final diagnosis, or None."""
    rows = state.query("SELECT * FROM feedback WHERE study_uid = ?", (study_uid,))
    return Feedback(**dict(rows[0])) if rows else None


def feedback_history(state: StateDB, study_uid: str | None = None) -> list[FeedbackChange]:
    """Changes of final diagnoses, oldest first (of one study if given)."""
    where, params = ("", []) if study_uid is None else (" WHERE study_uid = ?", [study_uid])
    rows = state.query(f"SELECT * FROM feedback_history{where} ORDER BY at, id", params)
    return [
        FeedbackChange(
            study_uid=row["study_uid"],
            diagnosis=row["diagnosis"],
            previous=row["previous"],
            actor=row["actor"],
            source=row["source"],
            at=row["at"],
            detail=json.loads(row["detail"]),
        )
        for row in rows
    ]


def feedback_counts(state: StateDB) -> dict[str, int]:
    """Studies with a final diagnosis, per diagnosis."""
    rows = state.query("SELECT diagnosis, COUNT(*) AS n FROM feedback GROUP BY diagnosis")
    return {row["diagnosis"]: int(row["n"]) for row in rows}


@dataclass(frozen=True)
class LabelledResult:
    """A result (the latest of its study for its model version) and the study's diagnosis."""

    study_uid: str
    series_uid: str
    model_version: str
    label: str
    probability_lymphoma: float | None
    diagnosis: str
    at: float


def labelled_results(state: StateDB) -> list[LabelledResult]:
    """Every model version's latest result of each study that has a final diagnosis.

    Results are the audit log's ``done`` events that name a label (the worker's
    :class:`~sarclym.node.store.records.SeriesResult`); a study analysed twice by one version
    (two series, or a re-run) counts once, with its latest result. Oldest first.
    """
    # The detail is read here, not with the dialects' different JSON functions.
    rows = state.query(
        "SELECT s.study_uid, a.series_uid, a.at, f.diagnosis, a.detail "
        "FROM audit a JOIN series s ON s.series_uid = a.series_uid "
        "JOIN feedback f ON f.study_uid = s.study_uid "
        "WHERE a.event = ? ORDER BY a.at, a.id",
        (SeriesStatus.DONE.value,),
    )
    latest: dict[tuple[str, str], LabelledResult] = {}
    for row in rows:
        detail = json.loads(row["detail"])
        if detail.get("label") is None:
            continue
        version = str(detail.get("model_version") or "")
        p = detail.get("probability_lymphoma")
        latest[(row["study_uid"], version)] = LabelledResult(
            study_uid=row["study_uid"],
            series_uid=row["series_uid"],
            model_version=version,
            label=str(detail["label"]),
            probability_lymphoma=None if p is None else float(p),
            diagnosis=row["diagnosis"],
            at=float(row["at"]),
        )
    return sorted(latest.values(), key=lambda r: r.at)


def weights_of_versions(state: StateDB) -> dict[str, list[str]]:
    """Model version -> the weights' SHA-256 its results were made with (audit ``done`` events).

    One hash per version unless a registry was replaced under the same version name; every
    figure of the Monitoring page names the weights it is about.
    """
    rows = state.query("SELECT detail FROM audit WHERE event = ?", (SeriesStatus.DONE.value,))
    out: dict[str, set[str]] = {}
    for row in rows:
        detail = json.loads(row["detail"])
        if detail.get("weights_sha256") is not None:
            version = str(detail.get("model_version") or "")
            out.setdefault(version, set()).add(str(detail["weights_sha256"]))
    return {version: sorted(shas) for version, shas in out.items()}


# -- the stop rule's reviews ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReview:
    """Whether a model version is under review, since when, why, and the figures that said so."""

    model_version: str
    under_review: bool
    since: float
    reason: str
    actor: str
    figures: dict[str, Any]


def _review(row: Any) -> ModelReview:
    return ModelReview(
        model_version=row["model_version"],
        under_review=bool(row["under_review"]),
        since=float(row["since"]),
        reason=row["reason"],
        actor=row["actor"],
        figures=json.loads(row["figures"]),
    )


def model_reviews(state: StateDB) -> dict[str, ModelReview]:
    """Model version -> its review state (versions never reviewed are absent)."""
    return {r["model_version"]: _review(r) for r in state.query("SELECT * FROM model_reviews")}


def _set_review(
    state: StateDB,
    version: str,
    under_review: bool,
    *,
    reason: str,
    actor: str,
    figures: Mapping[str, Any],
    now: float | None,
) -> bool:
    now = time.time() if now is None else now
    text = json.dumps(dict(figures), sort_keys=True, default=str)
    with state.transaction() as conn:
        conn.lock("review", version)  # PostgreSQL: the row may not exist yet
        row = conn.execute(
            "SELECT under_review FROM model_reviews WHERE model_version = ?", (version,)
        ).fetchone()
        if (row is None and not under_review) or (
            row is not None and bool(row["under_review"]) == under_review
        ):
            return False
        conn.execute(
            "INSERT INTO model_reviews (model_version, under_review, since, reason, actor, "
            "figures) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model_version) DO UPDATE SET "
            "under_review = excluded.under_review, since = excluded.since, "
            "reason = excluded.reason, actor = excluded.actor, figures = excluded.figures",
            (version, int(under_review), now, reason, actor, text),
        )
        conn.execute(
            "INSERT INTO model_review_history (model_version, event, at, actor, reason, figures) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (version, "under_review" if under_review else "lifted", now, actor, reason, text),
        )
        record_event(
            conn,
            model_subject(version),
            SeriesEvent.REVIEW,
            actor=actor,
            detail={
                "model_version": version,
                "under_review": under_review,
                "reason": reason,
                "figures": json.loads(text),
            },
            now=now,
        )
    return True


def put_under_review(
    state: StateDB,
    version: str,
    *,
    reason: str,
    actor: str,
    figures: Mapping[str, Any],
    now: float | None = None,
) -> bool:
    """Put a version under review (audited); False when it already was."""
    return _set_review(state, version, True, reason=reason, actor=actor, figures=figures, now=now)


def lift_review(
    state: StateDB,
    version: str,
    *,
    reason: str,
    actor: str,
    figures: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> bool:
    """Lift a version's review (audited); False when it was not under review."""
    return _set_review(
        state, version, False, reason=reason, actor=actor, figures=figures or {}, now=now
    )


def review_history(state: StateDB, version: str | None = None) -> list[dict[str, Any]]:
    """Reviews and liftings, oldest first (of one version if given)."""
    where, params = ("", []) if version is None else (" WHERE model_version = ?", [version])
    rows = state.query(f"SELECT * FROM model_review_history{where} ORDER BY at, id", params)
    return [{**dict(row), "figures": json.loads(row["figures"])} for row in rows]


# -- monitoring figures --------------------------------------------------------------------------


def save_figures(
    state: StateDB, version: str, kind: str, data: Mapping[str, Any], *, now: float | None = None
) -> None:
    """Store the latest figures of one kind (``concordance``, ``reference``) of a version."""
    with state.transaction() as conn:
        conn.execute(
            "INSERT INTO monitoring_figures (model_version, kind, computed_at, data) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (model_version, kind) DO UPDATE SET "
            "computed_at = excluded.computed_at, data = excluded.data",
            (
                version,
                kind,
                time.time() if now is None else now,
                json.dumps(dict(data), sort_keys=True, default=str),
            ),
        )


def figures(state: StateDB, kind: str) -> dict[str, dict[str, Any]]:
    """Model version -> its latest figures of ``kind``."""
    rows = state.query("SELECT model_version, data FROM monitoring_figures WHERE kind = ?", (kind,))
    return {row["model_version"]: json.loads(row["data"]) for row in rows}
