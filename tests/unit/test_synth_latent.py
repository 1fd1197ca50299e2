"""Latent case draw: site prevalences, exact LLR, cohort ratio, determinism, Bayes AUC.

Of phantom version 1 (Table 1 drawn as is, sites independent: some cases have none); version 2,
the default, has its own tests (:mod:`tests.unit.test_phantom_physiology`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import cast

import numpy as np
import pytest

from sarclym.model.synth.latent import (
    LABELS,
    Case,
    Label,
    bayes_auc,
    draw_body,
    draw_case,
    draw_cohort,
    presence_llr,
    site_table,
)

V1 = 1  # the phantom version these tests are about


def _draws(label: Label, n: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [draw_case(rng, label, f"c{i}", phantom=V1) for i in range(n)]


@pytest.fixture(scope="module")
def by_class() -> dict[str, list[Case]]:
    return {label: _draws(label, 2000, 20230917 + k) for k, label in enumerate(LABELS)}


def test_site_table_is_table1_as_fractions() -> None:
    table = site_table()
    assert list(table)[:2] == ["salivary_gland", "cervical_lymph_node"]
    assert len(table) == 11
    assert table["mediastinal_lymph_node"] == {"sarcoidosis": 0.929, "lymphoma": 0.403}
    assert table["adrenal_gland"]["sarcoidosis"] == 0.0


def test_site_prevalence_within_3pp_of_table(by_class: dict[str, list[Case]]) -> None:
    table = site_table()
    for label, cases in by_class.items():
        for site, row in table.items():
            seen = np.mean([site in c.sites for c in cases])
            assert abs(seen - row[label]) <= 0.03, (label, site, seen, row[label])


def test_sites_in_table_order_and_lesions_match(by_class: dict[str, list[Case]]) -> None:
    order = list(site_table())
    for case in by_class["lymphoma"][:200]:
        assert list(case.sites) == sorted(case.sites, key=order.index)
        assert {lesion.site for lesion in case.lesions} == set(case.sites)
        for lesion in case.lesions:
            assert lesion.suv_max > 0
            assert min(lesion.radii_mm) > 0


def test_presence_llr_is_sum_of_log_ratios(by_class: dict[str, list[Case]]) -> None:
    table = site_table()
    for case in by_class["sarcoidosis"][:50]:
        expected = sum(
            math.log(row["lymphoma"] / row["sarcoidosis"])
            if site in case.sites
            else math.log((1 - row["lymphoma"]) / (1 - row["sarcoidosis"]))
            for site, row in table.items()
        )
        assert case.presence_llr == pytest.approx(expected, abs=1e-12)
        assert presence_llr(case.sites) == pytest.approx(expected, abs=1e-12)


def test_case_without_sites_has_only_presence_factors(by_class: dict[str, list[Case]]) -> None:
    empty = [c for cases in by_class.values() for c in cases if not c.sites]
    assert empty, "expected some cases without any site"
    for case in empty:
        assert case.lesions == ()
        assert case.bayes_llr == case.presence_llr == pytest.approx(presence_llr(()))


def test_adrenal_lesion_gives_plus_inf(by_class: dict[str, list[Case]]) -> None:
    adrenal = [c for c in by_class["lymphoma"] if "adrenal_gland" in c.sites]
    assert adrenal
    assert all(c.bayes_llr == math.inf for c in adrenal)
    assert all("adrenal_gland" not in c.sites for c in by_class["sarcoidosis"])
    assert presence_llr(["adrenal_gland"]) == math.inf
    with pytest.raises(ValueError, match="unknown sites"):
        presence_llr(["elbow"])


def test_llr_is_calibrated(by_class: dict[str, list[Case]]) -> None:
    # An exact LLR with equal priors gives P(lymphoma | llr) = sigmoid(llr) in every bin.
    llr = np.array([c.bayes_llr for cases in by_class.values() for c in cases])
    y = np.array([c.label == "lymphoma" for cases in by_class.values() for c in cases])
    p = 1.0 / (1.0 + np.exp(-np.clip(llr, -50, 50)))
    edges = [-np.inf, -5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 5.0, np.inf]
    for lo, hi in itertools.pairwise(edges):
        m = (llr >= lo) & (llr < hi)
        if m.sum() < 50:
            continue
        sd = math.sqrt(max(float(np.mean(p[m] * (1 - p[m]))), 1e-3) / m.sum())
        assert abs(y[m].mean() - p[m].mean()) < 4 * sd + 0.01, (lo, hi, y[m].mean(), p[m].mean())


def test_class_independent_body() -> None:
    a = draw_case(np.random.default_rng(5), "lymphoma", "a", phantom=V1)
    b = draw_case(np.random.default_rng(5), "sarcoidosis", "b", phantom=V1)
    assert a.body == b.body == draw_body(np.random.default_rng(5))
    assert 45.0 <= a.body.weight_kg <= 110.0
    assert 900.0 <= a.body.coverage_mm <= 1100.0
    with pytest.raises(ValueError, match="label"):
        draw_case(np.random.default_rng(0), cast(Label, "sarcoma"), "x", phantom=V1)


def test_bayes_auc_known_values() -> None:
    def case(label: Label, llr: float) -> Case:
        body = draw_body(np.random.default_rng(0))
        return Case("c", label, (), (), body, llr, 0.0)

    cases = [case("lymphoma", v) for v in (math.inf, 2.0, 0.0)]
    cases += [case("sarcoidosis", v) for v in (-math.inf, 0.0, 1.0, 3.0)]
    # pairs (pos > neg): inf beats 4; 2 beats 3; 0 beats -inf and ties 0 (0.5): 8.5 of 12
    assert bayes_auc(cases) == pytest.approx(8.5 / 12)
    both_inf = [case("lymphoma", math.inf), case("sarcoidosis", math.inf)]
    assert bayes_auc(both_inf) == 0.5
    assert math.isnan(bayes_auc(cases[:3]))
    assert math.isnan(bayes_auc([]))


def test_cohort_ratio_ids_and_determinism() -> None:
    cohort = draw_cohort(118, seed=3, phantom=V1)
    assert sum(c.label == "lymphoma" for c in cohort) == 62
    assert [c.case_id for c in cohort[:2]] == ["case0001", "case0002"]
    assert cohort == draw_cohort(118, seed=3, phantom=V1)
    other = draw_cohort(118, seed=4, phantom=V1)
    assert [c.bayes_llr for c in cohort] != [c.bayes_llr for c in other]
    assert sum(c.label == "lymphoma" for c in draw_cohort(10, seed=3, phantom=V1)) == 5


def test_case_k_same_whatever_n() -> None:
    small, large = draw_cohort(12, seed=9, phantom=V1), draw_cohort(40, seed=9, phantom=V1)
    for k in range(12):
        if small[k].label == large[k].label:
            assert small[k] == large[k]
        else:
            child = np.random.SeedSequence(9).spawn(k + 1)[k]
            again = draw_case(
                np.random.default_rng(child), small[k].label, small[k].case_id, phantom=V1
            )
            assert again == small[k]
            assert again.body == large[k].body


def test_bayes_ceiling() -> None:
    cohort = draw_cohort(2000, seed=11, phantom=V1)
    full = bayes_auc(cohort)
    presence = bayes_auc([replace(c, bayes_llr=c.presence_llr) for c in cohort])
    assert 0.86 < presence < 0.92
    assert 0.97 <= full <= 0.995
