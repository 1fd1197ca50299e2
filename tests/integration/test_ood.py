"""The shipped default model's out-of-distribution score on real and held-out synthetic studies.

The real whole-body FDG scan (TCIA STS_001, a sarcoma patient: neither disease; GE Discovery ST,
arms up, bladder and bowel uptake the phantom never had) must be flagged "outside the model's
training data"; held-out synthetic studies (a seed used neither in training nor in calibration)
must score inside, at least 95% of them. Run with ``-s`` to see the scores against the threshold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sarclym.model.imaging.prepare import PreparedStudy, scan_paths
from sarclym.model.inference.ood import REFERENCE_FILE, extract_features
from sarclym.model.inference.predictor import DEFAULT_REGISTRY, Predictor
from sarclym.model.inference.registry import CARD_FILE, CARD_MD_FILE, Registry
from sarclym.model.synth.inputs import synthetic_inputs
from sarclym.node.cli import main
from tests.realpet import WHOLEBODY

pytestmark = pytest.mark.integration

#: Held-out synthetic cohort of this test: not the training seed (2026) nor the calibration's.
HELD_OUT_SEED = 4242
HELD_OUT_CASES = 20


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(2)
    return Predictor.from_registry(device="cpu")


@pytest.fixture(scope="module")
def real_scan(predictor: Predictor) -> PreparedStudy:
    (study,) = scan_paths([WHOLEBODY]).studies.values()
    prepared = study.prepare(size=predictor.input_size, suv_window=predictor.suv_window)
    assert prepared.mips is not None
    return prepared


def test_the_shipped_default_has_a_reference_named_in_its_card(predictor: Predictor) -> None:
    card = predictor.loaded.card
    assert predictor.loaded.ood is not None
    named = card["ood_reference"]
    assert named["file"] == REFERENCE_FILE
    assert named["percentile"] == 99.0
    assert named["calibration_inside_fraction"] >= 0.95
    # How it was made, so that it can be made again: ood_calibrate's commands (a reference
    # added to a version after its training, as 1.0.0's), or retrain's own from the training
    # cases out-of-fold (the card's Reproduce command makes it with the weights).
    if "command" in named:
        assert any("ood_calibrate" in step for step in named["command"])
    else:
        assert named["source"].startswith("retrain:")
        assert "sarclym-node retrain " in str(card["reproduce"])


def test_the_real_whole_body_scan_is_outside_the_training_data(
    predictor: Predictor, real_scan: PreparedStudy
) -> None:
    first = predictor.predict(real_scan)
    second = predictor.predict(real_scan)
    assert first.ood_score is not None
    assert first.ood_threshold is not None
    print(
        f"\nreal scan (TCIA STS_001, model {first.model.version}): OOD score "
        f"{first.ood_score:.4f} vs threshold {first.ood_threshold:.4f} "
        f"({first.ood_score / first.ood_threshold:.2f}x); P(lymphoma) "
        f"{first.probability_lymphoma:.3f}"
    )
    assert first.outside_training_data is True
    assert first.ood_score > first.ood_threshold
    assert second.ood_score == first.ood_score  # deterministic


def test_held_out_synthetic_studies_are_inside(predictor: Predictor) -> None:
    reference = predictor.loaded.ood
    assert reference is not None
    x = synthetic_inputs(
        range(HELD_OUT_CASES),
        n=HELD_OUT_CASES,
        seed=HELD_OUT_SEED,
        size=predictor.input_size,
        window=predictor.suv_window,
        jobs=2,
    )
    scores = reference.scores(extract_features(predictor.net, x))
    inside = float(np.mean(scores <= reference.threshold))
    print(
        f"\nheld-out synthetic (seed {HELD_OUT_SEED}, {HELD_OUT_CASES} studies): {inside:.2f} "
        f"inside; scores {scores.min():.3f}-{scores.max():.3f}, threshold "
        f"{reference.threshold:.4f}"
    )
    assert inside >= 0.95


def test_a_version_without_a_reference_predicts_as_before(
    predictor: Predictor, real_scan: PreparedStudy, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    version = predictor.loaded.version
    shutil.copytree(DEFAULT_REGISTRY / version, root / version)
    card = json.loads((root / version / CARD_FILE).read_text())
    del card["ood_reference"]
    (root / version / CARD_FILE).write_text(json.dumps(card))
    (root / version / REFERENCE_FILE).unlink()
    (root / version / CARD_MD_FILE).unlink()
    old = Predictor(Registry(root).load(version), device="cpu").predict(real_scan)
    new = predictor.predict(real_scan)
    assert old.ood_score is None
    assert old.ood_threshold is None
    assert old.outside_training_data is None
    assert old.probability_lymphoma == new.probability_lymphoma
    assert old.label == new.label
    for view in ("frontal", "lateral"):
        np.testing.assert_array_equal(old.heatmaps[view], new.heatmaps[view])


def test_infer_json_shows_the_score_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SARCLYM__MODEL__DEVICE", "cpu")
    capsys.readouterr()
    assert main(["infer", "--json", str(WHOLEBODY)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outside_training_data"] is True
    assert result["ood_score"] > result["ood_threshold"] > 0
    assert result["research_use_only"] is True
    assert main(["infer", str(WHOLEBODY)]) == 0
    assert "outside the model's training data" in capsys.readouterr().out
