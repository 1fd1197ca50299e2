"""Benchmark: ``evaluate`` of 500 cached cases against the bare forward pass (issue 15 must-show).

The shipped default version (:data:`tests.shipped.SHIPPED`, at its card's input size) is
evaluated on 500 labelled studies whose network inputs are in the MIP cache
(:mod:`sarclym.model.training.cache`), through the code the command runs
(:func:`sarclym.node.acceptance.run.run_evaluation`: cache reads, forward pass, bootstrap CIs,
ECE, ROC, criteria, HTML with plots and JSON). The reference, measured in the same run, is the
bare forward pass (``predict_proba``) over the same 500 inputs; the ratio says what the
acceptance test costs over scoring alone. The statistics alone (``acceptance.bootstrap_samples``
resamples) and the report writing alone are timed too, so a reader sees where time goes.

The cache is filled cheaply and in its exact format: 40 tiny synthetic DICOM studies (16x16,
8 slices: :mod:`tests.integration.cases_fixtures`) go through the real MIP maker once (timed
as a reference: what a study costs when it is not cached), and their inputs are replicated under
500 distinct series keys. The 500 studies' files are never read (a cached study is not opened);
scanning a case folder's headers, which ``evaluate`` does before it scores, is timed on the 40
tiny studies and printed per study and per file. Two CPU threads; nothing asserted on time.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sarclym.model.imaging.prepare import StudyFiles
from sarclym.model.imaging.selection import SelectionRules
from sarclym.model.inference.predictor import DEFAULT_REGISTRY
from sarclym.model.inference.registry import Registry
from sarclym.model.training.cache import build_training_set, cache_key
from sarclym.model.training.train import predict_proba
from sarclym.node.acceptance.caseset import CaseSet, file_sha256, load_case_set
from sarclym.node.acceptance.report import write_report
from sarclym.node.acceptance.run import run_evaluation
from sarclym.node.acceptance.scoring import VersionScores, evaluate_scores
from sarclym.node.cases.labels import KeyKind
from sarclym.node.config import load_config
from tests.integration.cases_fixtures import write_tiny_cohort
from tests.shipped import SHIPPED

pytestmark = pytest.mark.bench

VERSION = SHIPPED
N_CASES = 500
N_SOURCES = 40
#: Instances of each cached study's analysed series (part of the cache key; a typical PET series).
N_INSTANCES = 400
ROUNDS = 3
#: Files of one ``synth`` study (CT 183, AC PET 305, NAC PET 305, sometimes a MIP series).
SYNTH_FILES = 800


def _source_inputs(
    folder: Path,
    cache: Path,
    size: tuple[int, int],
    window: tuple[float, float],
    rules: SelectionRules,
) -> tuple[list[np.ndarray], list[str], float, float, int]:
    """Real network inputs of the tiny studies: (inputs, labels, scan s, MIP s, files)."""
    studies = write_tiny_cohort(folder, N_SOURCES)
    labels = folder / "labels.csv"
    labels.write_text(
        "study_instance_uid,label\n"
        + "".join(f"{s.written.study_instance_uid},{s.label}\n" for s in studies)
    )
    t0 = time.perf_counter()
    small = load_case_set(folder, labels)
    scan_s = time.perf_counter() - t0
    n_files = sum(len(p) for s in small.studies.values() for p in s.series.values())
    t0 = time.perf_counter()
    data = build_training_set(
        small.studies, small.labels, cache, size=size, window=window, rules=rules
    )
    mips_s = time.perf_counter() - t0
    assert not data.skipped, data.skipped
    names = [small.labels[u] for u in data.study_instance_uids]
    return list(data.x), names, scan_s, mips_s, n_files


def _cached_case_set(
    tmp: Path,
    cache: Path,
    inputs: list[np.ndarray],
    names: list[str],
    size: tuple[int, int],
    window: tuple[float, float],
    rules: SelectionRules,
) -> CaseSet:
    """500 labelled studies whose inputs are in the cache under their own series keys."""
    studies: dict[str, StudyFiles] = {}
    labels: dict[str, str] = {}
    for i in range(N_CASES):
        study_uid, series_uid = f"2.25.1{i:05d}", f"2.25.2{i:05d}"
        paths = [tmp / "absent" / f"{i}-{j}.dcm" for j in range(N_INSTANCES)]  # never opened
        studies[study_uid] = StudyFiles(study_uid, {series_uid: paths})
        labels[study_uid] = names[i % len(names)]
        key = cache_key(series_uid, N_INSTANCES, size, window, rules)
        np.savez(cache / key, x=inputs[i % len(inputs)])
    labels_path = tmp / "labels-500.csv"
    labels_path.write_text(
        "study_instance_uid,label\n" + "".join(f"{u},{v}\n" for u, v in labels.items())
    )
    return CaseSet(
        folder=tmp,
        labels_path=labels_path,
        labels_sha256=file_sha256(labels_path),
        labels_kind=KeyKind.STUDY_UID,
        n_rows=N_CASES,
        studies=studies,
        labels=labels,
    )


def test_bench_evaluate_500_cached_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = load_config(
            environ={
                "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
                "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            }
        )
        rules = config.selection.rules()
        acceptance = config.acceptance
        loaded = Registry(DEFAULT_REGISTRY).load(VERSION)
        size = (int(loaded.card["input_size"][0]), int(loaded.card["input_size"][1]))
        window = (float(loaded.card["suv_window"][0]), float(loaded.card["suv_window"][1]))
        cache = tmp_path / "mip-cache"
        cache.mkdir()
        inputs, names, scan_s, mips_s, n_files = _source_inputs(
            tmp_path / "tiny", cache, size, window, rules
        )
        cases = _cached_case_set(tmp_path, cache, inputs, names, size, window, rules)

        # Its parts one by one on the same inputs, then the command's path whole (cache reads,
        # forward pass, statistics, criteria, report); ROUNDS rounds, medians (the first round
        # also pays torch's and matplotlib's first-call costs).
        times: dict[str, list[float]] = {k: [] for k in ("read", "forward", "stats", "report")}
        totals: list[float] = []
        for k in range(ROUNDS):
            t0 = time.perf_counter()
            data = build_training_set(
                cases.studies, cases.labels, cache, size=size, window=window, rules=rules
            )
            times["read"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            p_ref = predict_proba(loaded.net, data.x)
            times["forward"].append(time.perf_counter() - t0)
            parts = VersionScores(
                loaded.version, loaded.sha256, "sarclym-mip-cnn", data.study_instance_uids,
                data.y, p_ref, dict(data.skipped), 0, N_CASES,
            )  # fmt: skip
            t0 = time.perf_counter()
            evaluate_scores(parts, acceptance)
            times["stats"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            write_report(
                tmp_path / f"parts-{k}",
                [parts],
                cases,
                None,
                run_by="bench",
                run_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
            )
            times["report"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = run_evaluation(
                [loaded],
                cases,
                cache_dir=cache,
                out=tmp_path / f"reports-{k}",
                acceptance=acceptance,
                rules=rules,
                state=None,
                run_by="bench",
            )
            totals.append(time.perf_counter() - t0)
        (scores,) = result.versions
        total_s = statistics.median(totals)
        read_s, forward_s, stats_s, report_s = (statistics.median(times[k]) for k in times)

        auc = scores.metrics["auc"]
        rest_s = total_s - read_s - forward_s - stats_s - report_s
        with capsys.disabled():
            print(
                f"\n[bench evaluate] {N_CASES} cached cases, model {VERSION} "
                f"({size[0]}x{size[1]}, weights SHA-256 {loaded.sha256[:16]}...), 2 threads: "
                f"evaluate {total_s:.2f} s, {total_s / N_CASES * 1000:.1f} ms per case (medians of "
                f"{ROUNDS} rounds); "
                f"{total_s / forward_s:.2f}x the bare forward pass (predict_proba over the same "
                f"{N_CASES} inputs: {forward_s:.2f} s, {forward_s / N_CASES * 1000:.1f} ms per "
                "case)"
            )
            print(
                f"[bench evaluate] where time goes: cache reads {read_s:.2f} s, forward pass "
                f"{forward_s:.2f} s, statistics {stats_s:.2f} s (bootstrap "
                f"{acceptance.bootstrap_samples} resamples, ECE, ROC, criteria), report "
                f"{report_s:.2f} s (HTML with plots, JSON, SHA-256), rest {rest_s:.2f} s"
            )
            print(
                "[bench evaluate] not cached (reference): MIP making "
                f"{mips_s / N_SOURCES * 1000:.0f} ms per tiny study (16x16x8); scanning a case "
                "folder "
                f"{scan_s / N_SOURCES * 1000:.1f} ms per study, {scan_s / n_files * 1000:.2f} ms "
                f"per file ({n_files} files of {N_SOURCES} studies); extrapolated to {N_CASES} "
                f"studies of {SYNTH_FILES} files (a synth study's count): "
                f"{scan_s / n_files * SYNTH_FILES * N_CASES:.0f} s of header scan before scoring"
            )
            print(
                f"[bench evaluate] AUC {auc.estimate:.3f} (95% CI {auc.low:.3f}-{auc.high:.3f}) "
                f"on replicated inputs of {N_SOURCES} studies (research use only): a timing, not "
                "a figure of merit"
            )
        assert len(scores.study_uids) == N_CASES
        assert not scores.refused
        np.testing.assert_allclose(scores.p, p_ref, atol=1e-6)
        assert result.files.html.is_file()
        assert result.files.json.is_file()
    finally:
        torch.set_num_threads(threads)
