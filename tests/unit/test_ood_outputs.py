"""The out-of-distribution flag in every output of a prediction (issue 17): the SC banner, the
SR's measurement groups, the audit's ``done`` detail and the dashboard; none of them changes for
a prediction inside the training data or from a version without a reference."""

from __future__ import annotations

import dataclasses

from sarclym.model.inference.prediction import OUTSIDE_TEXT, Prediction, outside_words
from sarclym.node.http.views import ResultView, result_text
from sarclym.node.results import build_sc, build_sr
from sarclym.node.results.render import BANNER_TEXT, banner_text
from sarclym.node.results.sr import group_texts
from sarclym.node.store.records import SeriesResult
from tests.results_fixtures import CREATED, make_prediction

FLAG = f"{OUTSIDE_TEXT} (OOD score 32.45 > 5.03)"


def _flagged(outside: bool | None) -> Prediction:
    prediction, _ = make_prediction("lymphoma")
    if outside is None:
        return prediction
    return dataclasses.replace(
        prediction,
        ood_score=32.45 if outside else 1.2,
        ood_threshold=5.03,
        outside_training_data=outside,
    )


def test_the_words_name_the_score_and_the_threshold() -> None:
    assert outside_words(_flagged(True)) == FLAG
    assert outside_words(_flagged(False)) is None
    assert outside_words(_flagged(None)) is None


def test_the_sc_banner_says_it_first() -> None:
    assert banner_text(_flagged(True)) == f"{OUTSIDE_TEXT} - {BANNER_TEXT}"
    assert banner_text(_flagged(False)) == BANNER_TEXT
    assert banner_text(_flagged(True), review=True).startswith(OUTSIDE_TEXT)


def test_each_sr_group_says_it_after_the_class_name() -> None:
    flagged = _flagged(True)
    assert group_texts(flagged, "lymphoma") == ("Malignant lymphoma", FLAG)
    assert group_texts(flagged, "sarcoidosis") == ("Sarcoidosis", FLAG)
    assert group_texts(_flagged(False), "lymphoma") == ("Malignant lymphoma",)


def test_sc_and_sr_inside_the_training_data_are_those_of_a_version_without_a_reference() -> None:
    prediction, datasets = make_prediction("lymphoma")
    inside = _flagged(False)
    for p in (prediction, inside):
        sc = build_sc(p, datasets, created=CREATED)
        sr = build_sr(p, datasets, sc, created=CREATED)
        if p is prediction:
            reference = (sc.PixelData, sr.ContentSequence)
        else:
            assert sc.PixelData == reference[0]
            assert sr.ContentSequence == reference[1]


def test_the_audit_detail_round_trips_and_stays_as_it_was_without_a_reference() -> None:
    result = SeriesResult("lymphoma", 0.6, "1.0.0", "ab", True, 32.45, 5.03)
    detail = result.detail()
    assert detail["outside_training_data"] is True
    assert SeriesResult.from_detail(detail) == result
    plain = SeriesResult("lymphoma", 0.6, "1.0.0", "ab")
    assert set(plain.detail()) == {
        "label",
        "probability_lymphoma",
        "model_version",
        "weights_sha256",
    }
    assert SeriesResult.from_detail(plain.detail()) == plain


def test_the_dashboard_shows_it_beside_the_probability() -> None:
    shown = result_text(ResultView("lymphoma", 0.6, "1.0.0", "ab", True, 32.45, 5.03))
    assert 'class="ood"' in shown
    assert "outside the model&#x27;s training data" in shown
    assert "32.45 &gt; 5.03" in shown
    assert 'class="ood"' not in result_text(ResultView("lymphoma", 0.6, "1.0.0", "ab", False))
