"""The monitoring, evaluation and retention tables' named reads and writes, on both back-ends.

Their statements were SQLite's own (JSON functions, ``LIMIT -1``, ``? IS NULL OR``, a boolean
summed); these tests pin what each returns, the same on the embedded file and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sarclym.node.store.evaluations import (
    EvaluationRecord,
    evaluations_of,
    newest_evaluation,
    passing_evaluation,
    record_evaluation,
)
from sarclym.node.store.feedback import (
    analysed_accessions,
    feedback_counts,
    feedback_for,
    feedback_history,
    figures,
    input_facts,
    labelled_results,
    lift_review,
    model_reviews,
    pet_study_outcomes,
    put_under_review,
    record_analysed_study,
    record_input_facts,
    review_history,
    save_figures,
    set_feedback,
    weights_of_versions,
)
from sarclym.node.store.records import SeriesResult, SeriesStatus
from sarclym.node.store.retention import prune_candidates
from sarclym.node.store.state import StateDB
from tests.pg import StateBackend
from tests.unit.test_state import ct, pet


@pytest.fixture
def db(tmp_path: Path, state_backend: StateBackend) -> Iterator[StateDB]:
    with state_backend.open(tmp_path) as state:
        yield state


def _done(db: StateDB, series: str, study: str, label: str | None, version: str, at: float) -> None:
    for i in (1, 2):
        db.record_instance(pet(i, series=series, study=study, expected=2), now=at - 10)
    detail = {"reason": "x"}
    if label is not None:
        result = SeriesResult(label, 0.8, version, weights_sha256=f"sha-{version}")
        detail = result.detail()
    db.mark_series(series, SeriesStatus.DONE, "done", now=at, detail=detail)


def test_labelled_results_and_weights_read_the_done_events(db: StateDB) -> None:
    _done(db, "1.1", "9.1", "lymphoma", "1.0.0", 100.0)
    _done(db, "1.2", "9.1", "sarcoidosis", "1.0.0", 200.0)  # the study's latest for 1.0.0
    _done(db, "1.3", "9.2", "lymphoma", "2.0.0", 150.0)
    _done(db, "1.4", "9.3", None, "1.0.0", 160.0)  # a done event naming no label
    _done(db, "1.5", "9.4", "lymphoma", "1.0.0", 170.0)  # no diagnosis for its study
    for study in ("9.1", "9.2", "9.3"):
        assert set_feedback(db, study, "lymphoma", actor="cli", source="import", now=300.0)
    results = labelled_results(db)
    assert [(r.study_uid, r.series_uid, r.model_version, r.label) for r in results] == [
        ("9.2", "1.3", "2.0.0", "lymphoma"),
        ("9.1", "1.2", "1.0.0", "sarcoidosis"),
    ]
    assert results[0].probability_lymphoma == 0.8
    assert results[0].diagnosis == "lymphoma"
    assert weights_of_versions(db) == {"1.0.0": ["sha-1.0.0"], "2.0.0": ["sha-2.0.0"]}


def test_feedback_history_counts_and_filters(db: StateDB) -> None:
    assert set_feedback(db, "9.1", "lymphoma", actor="alice", source="dashboard", now=1.0)
    assert not set_feedback(db, "9.1", "lymphoma", actor="alice", source="dashboard", now=2.0)
    assert set_feedback(db, "9.1", "sarcoidosis", actor="bob", source="import", now=3.0)
    assert set_feedback(db, "9.2", "other", actor="bob", source="import", now=4.0)
    current = feedback_for(db, "9.1")
    assert current is not None
    assert (current.diagnosis, current.actor, current.at) == ("sarcoidosis", "bob", 3.0)
    assert feedback_for(db, "0.0") is None
    assert [(c.study_uid, c.previous) for c in feedback_history(db)] == [
        ("9.1", None),
        ("9.1", "lymphoma"),
        ("9.2", None),
    ]
    assert [c.diagnosis for c in feedback_history(db, "9.2")] == ["other"]
    assert feedback_counts(db) == {"sarcoidosis": 1, "other": 1}


def test_input_facts_latest_and_per_version(db: StateDB) -> None:
    for k, (outcome, version) in enumerate(
        [("scored", "1.0.0"), ("refused", None), ("scored", "2.0.0"), ("not_scored", "1.0.0")]
    ):
        record_input_facts(
            db, f"1.{k}", "9.1", outcome=outcome, model_version=version, facts={"k": k}, now=k
        )
    record_input_facts(db, "1.0", "9.1", outcome="scored", model_version="1.0.0", facts={}, now=9)
    assert [f.series_uid for f in input_facts(db)] == ["1.1", "1.2", "1.3", "1.0"]
    assert [f.series_uid for f in input_facts(db, latest=2)] == ["1.3", "1.0"]
    assert [f.series_uid for f in input_facts(db, model_version="1.0.0")] == ["1.1", "1.3", "1.0"]
    assert [f.facts for f in input_facts(db, model_version="1.0.0", latest=1)] == [{}]


def test_pet_study_outcomes_counts_finished_studies_and_refusals(db: StateDB) -> None:
    _done(db, "1.1", "9.1", "lymphoma", "1.0.0", 100.0)  # scored
    for i in (1, 2):
        db.record_instance(pet(i, series="2.1", study="9.2", expected=2), now=90.0)
    db.mark_series("2.1", SeriesStatus.SKIPPED, "NAC", now=110.0)  # refused
    for i in (1, 2):
        db.record_instance(pet(i, series="3.1", study="9.3", expected=2), now=90.0)
    db.mark_series("3.1", SeriesStatus.SKIPPED, "under review", now=120.0)
    record_input_facts(db, "3.1", "9.3", outcome="not_scored", model_version="1.0.0", facts={})
    for i in (1,):
        db.record_instance(pet(i, series="4.1", study="9.4", expected=2), now=90.0)  # unfinished
    db.record_instance(ct(1, series="5.1"), now=90.0)  # not PET
    assert pet_study_outcomes(db, latest=10) == (3, 1)
    assert pet_study_outcomes(db, latest=1) == (1, 0)  # the latest: study 9.3
    assert pet_study_outcomes(db, latest=2) == (2, 1)


def test_analysed_studies_keep_a_known_accession_hash(db: StateDB) -> None:
    record_analysed_study(db, "9.1", "h1", now=1.0)
    record_analysed_study(db, "9.1", None, now=2.0)  # a later run without it keeps it
    record_analysed_study(db, "9.2", None, now=3.0)
    record_analysed_study(db, "9.2", "h2", now=4.0)
    assert analysed_accessions(db) == {"9.1": "h1", "9.2": "h2"}


def test_reviews_figures_and_evaluations(db: StateDB) -> None:
    assert put_under_review(db, "1.0.0", reason="AUC", actor="stop rule", figures={"auc": 0.6})
    assert not put_under_review(db, "1.0.0", reason="AUC", actor="stop rule", figures={})
    assert lift_review(db, "1.0.0", reason="checked", actor="admin")
    assert not lift_review(db, "2.0.0", reason="never", actor="admin")
    assert not model_reviews(db)["1.0.0"].under_review
    assert [h["event"] for h in review_history(db)] == ["under_review", "lifted"]
    assert review_history(db, "2.0.0") == []
    save_figures(db, "1.0.0", "concordance", {"n": 1}, now=1.0)
    save_figures(db, "1.0.0", "concordance", {"n": 2}, now=2.0)
    assert figures(db, "concordance") == {"1.0.0": {"n": 2}}

    def evaluation(passed: bool, at: float, sha: str = "w1") -> EvaluationRecord:
        return EvaluationRecord(
            "1.0.0", sha, "cases", 10, 1, {"auc": 0.9}, passed, "r.json", "rs", "me", at
        )

    record_evaluation(db, evaluation(True, 10.0))
    record_evaluation(db, evaluation(False, 20.0))
    record_evaluation(db, evaluation(True, 30.0, sha="w2"))
    assert [e.run_at for e in evaluations_of(db, "1.0.0")] == [30.0, 20.0, 10.0]
    newest = newest_evaluation(db, "1.0.0", "w1")
    assert newest is not None
    assert (newest.run_at, newest.passed) == (20.0, False)
    passing = passing_evaluation(db, "1.0.0", "w1")
    assert passing is not None
    assert passing.run_at == 10.0
    assert passing_evaluation(db, "1.0.0", "w3") is None


def test_prune_candidates_are_finished_and_old_enough(db: StateDB) -> None:
    _done(db, "1.1", "9.1", "lymphoma", "1.0.0", 100.0)
    _done(db, "1.2", "9.1", "lymphoma", "1.0.0", 300.0)
    db.record_instance(ct(1, series="1.3"), now=50.0)
    db.mark_series("1.3", SeriesStatus.FAILED, "boom", now=60.0)
    assert prune_candidates(db, 200.0) == ["1.1"]
