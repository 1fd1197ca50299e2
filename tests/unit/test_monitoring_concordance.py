"""Running concordance, the stop rule's bounds, the feedback store and its history."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sarclym.model.training.evaluation import bootstrap_metrics
from sarclym.node.config import load_config
from sarclym.node.monitoring.concordance import Estimate, concordance
from sarclym.node.monitoring.drift import compare, profile_facts
from sarclym.node.monitoring.review import breaches
from sarclym.node.store import feedback as store
from sarclym.node.store.feedback import InputFacts, LabelledResult
from tests.pg import StateBackend


def _results(n: int, *, wrong: bool = False) -> list[LabelledResult]:
    out = []
    for k in range(n):
        truth = "lymphoma" if k % 2 else "sarcoidosis"
        p = 0.9 if (truth == "lymphoma") != wrong else 0.1
        label = "lymphoma" if p >= 0.5 else "sarcoidosis"
        out.append(LabelledResult(f"1.{k}", f"1.{k}.1", "v1", label, p, truth, float(k)))
    return out


def test_perfect_results_have_auc_one_and_narrow_intervals() -> None:
    c = concordance("v1", _results(20), bootstrap_samples=200)
    assert (c.n, c.positives, c.negatives) == (20, 10, 10)
    assert c.auc.value == c.auc.lower == 1.0
    assert c.sensitivity.value == c.specificity.value == 1.0


def test_one_class_only_leaves_auc_undefined_and_no_breach() -> None:
    only = [r for r in _results(40) if r.diagnosis == "lymphoma"]
    c = concordance("v1", only, bootstrap_samples=100)
    # As in evaluate: without both classes no figure has an interval (no stratified bootstrap).
    for estimate in (c.auc, c.sensitivity, c.specificity):
        assert math.isnan(estimate.value), estimate
        assert math.isnan(estimate.lower), estimate
    assert c.sensitivity.text() == "n/a"
    assert breaches(c, load_config(None).model_copy()) == []


def _noisy(n: int) -> list[LabelledResult]:
    """Overlapping scores as the worker stores them (4 decimals), the label at p >= 0.5."""
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        truth = "lymphoma" if k % 3 else "sarcoidosis"
        p = round(float(np.clip(rng.normal(0.65 if k % 3 else 0.35, 0.2), 0, 1)), 4)
        label = "lymphoma" if p >= 0.5 else "sarcoidosis"
        out.append(LabelledResult(f"1.{k}", f"1.{k}.1", "v1", label, p, truth, float(k)))
    return out


def test_figures_and_intervals_are_those_of_evaluate() -> None:
    """The same cases give what ``evaluate`` reports: its bootstrap (stratified, seed 0, the
    acceptance section's resamples) of AUC, sensitivity and specificity, to the last digit."""
    results = _noisy(30)
    c = concordance("v1", results, bootstrap_samples=300)
    y = np.array([r.diagnosis == "lymphoma" for r in results], dtype=np.int64)
    p = np.array([r.probability_lymphoma for r in results])
    expected = bootstrap_metrics(y, p, threshold=0.5, n_resamples=300, seed=0)
    for name in ("auc", "sensitivity", "specificity"):
        ci = expected[name]
        assert getattr(c, name) == Estimate(ci.estimate, ci.low, ci.high), name


def test_the_label_the_node_reported_counts_and_unscored_results_are_out_of_the_auc() -> None:
    """Sensitivity and specificity are of the label the SC and SR said (a stored probability is
    rounded: 0.5 can be a reported sarcoidosis); a result without a probability counts for them
    but not for the AUC."""
    results = _noisy(30)
    rounded = LabelledResult("2.1", "2.1.1", "v1", "sarcoidosis", 0.5, "lymphoma", 31.0)
    unscored = LabelledResult("2.2", "2.2.1", "v1", "lymphoma", None, "lymphoma", 32.0)
    c = concordance("v1", [*results, rounded, unscored], bootstrap_samples=300)
    assert (c.n, c.positives) == (32, 22)
    y = np.array([r.diagnosis == "lymphoma" for r in results], dtype=np.int64)
    p = np.array([r.probability_lymphoma for r in results])
    said = np.array([r.label == "lymphoma" for r in results], dtype=np.float64)
    auc = bootstrap_metrics(np.r_[y, 1], np.r_[p, 0.5], n_resamples=300, seed=0)["auc"]
    assert c.auc == Estimate(auc.estimate, auc.low, auc.high)
    rates = bootstrap_metrics(np.r_[y, 1, 1], np.r_[said, 0.0, 1.0], n_resamples=300, seed=0)
    for name in ("sensitivity", "specificity"):
        ci = rates[name]
        assert getattr(c, name) == Estimate(ci.estimate, ci.low, ci.high), name


def test_wrong_results_breach_the_auc_bound_once_enough_are_labelled() -> None:
    config = load_config(None)
    few = concordance("v1", _results(10, wrong=True), bootstrap_samples=100)
    assert breaches(few, config) == []  # fewer than monitoring.min_labelled (20)
    many = concordance("v1", _results(20, wrong=True), bootstrap_samples=100)
    (breach,) = breaches(many, config)
    assert breach.figure == "auc"
    assert "acceptance.min_auc 0.80" in breach.text()


def test_feedback_changes_are_kept_with_the_value_they_replaced(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    with state_backend.open(tmp_path) as state:
        assert store.set_feedback(state, "1.2", "lymphoma", actor="cli:x", source="import")
        assert not store.set_feedback(state, "1.2", "lymphoma", actor="cli:x", source="import")
        assert store.set_feedback(state, "1.2", "other", actor="dashboard:a", source="dashboard")
        history = store.feedback_history(state, "1.2")
        assert [(h.diagnosis, h.previous) for h in history] == [
            ("lymphoma", None),
            ("other", "lymphoma"),
        ]
        current = store.feedback_for(state, "1.2")
        assert current is not None
        assert (current.diagnosis, current.source) == ("other", "dashboard")
        with pytest.raises(ValueError, match="diagnosis must be one of"):
            store.set_feedback(state, "1.2", "benign", actor="x", source="import")


def test_reviews_are_audited_and_lifted_once(tmp_path: Path, state_backend: StateBackend) -> None:
    with state_backend.open(tmp_path) as state:
        assert store.put_under_review(state, "v1", reason="r", actor="w", figures={})
        assert not store.put_under_review(state, "v1", reason="r", actor="w", figures={})
        assert store.lift_review(state, "v1", reason="ok", actor="cli:admin")
        assert not store.lift_review(state, "v1", reason="ok", actor="cli:admin")
        assert [h["event"] for h in store.review_history(state)] == ["under_review", "lifted"]


def test_node_key_is_private_and_stable(tmp_path: Path) -> None:
    path = store.node_key_path(tmp_path)
    key = store.ensure_node_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert store.ensure_node_key(path) == key
    hasher = store.accession_hasher(key)
    assert hasher("AccessionNumber", " A1 ") == hasher("AccessionNumber", "A1") != "A1"


def test_drift_counts_unseen_scanners_and_median_shifts() -> None:
    def facts(model: str, dose: float) -> InputFacts:
        values = {"scanner_model": model, "reconstruction": "OSEM", "injected_dose_mbq": dose}
        return InputFacts("1", "1", 0.0, "scored", "v1", values)

    reference = profile_facts([facts("GE D710", 300.0), facts("GE D710", 320.0)], "first 2")
    report = compare(reference, [facts("GE D710", 400.0), facts("Siemens Vision", 420.0)],
                     studies=(4, 1))  # fmt: skip
    assert report.unseen_scanner_share == 0.5
    assert report.refusal_share == 0.25
    assert report.shifts["injected_dose_mbq"]["shift"] == 100.0
