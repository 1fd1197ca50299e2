"""``retrain --synthetic-cohort N``: the default model's recipe, the cohort never on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sarclym.model.inference.registry import CARD_FILE, WEIGHTS_FILE, Registry
from sarclym.model.synth.inputs import synthetic_inputs
from sarclym.model.synth.latent import bayes_auc, draw_cohort
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.cli.retrain_synthetic import paper_size_indices

N, SEED, PHANTOM = 24, 5, 2


def _retrain(base: Path, version: str, *extra: str) -> int:
    return main(
        [
            "retrain", "--synthetic-cohort", str(N), "--cohort-seed", str(SEED),
            "--phantom", str(PHANTOM),
            "--folds", "2", "--epochs", "1", "--input-size", "32", "--jobs", "2",
            "--registry", str(base / "models"), "--inputs-cache", str(base / "inputs.npz"),
            "--version", version, *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("synthetic-retrain")
    assert _retrain(base, "0.2.0") == EXIT_OK
    return base


def test_version_registered_with_the_cohorts_labels_ceiling_and_recipe(trained: Path) -> None:
    folder = trained / "models" / "0.2.0"
    card = json.loads((folder / CARD_FILE).read_text())
    cases = draw_cohort(N, SEED, phantom=PHANTOM)
    assert card["synthetic_data"] is True
    assert card["training_data"]["n"] == N
    assert card["training_data"]["n_lymphoma"] == sum(c.label == "lymphoma" for c in cases)
    assert card["bayes_auc"] == pytest.approx(bayes_auc(cases))
    assert card["reproduce"].startswith(
        f"sarclym-node retrain --synthetic-cohort {N} --cohort-seed {SEED} --phantom 2 "
    )
    assert card["training_data"]["phantom"] == PHANTOM
    assert "--input-size 32x32" in card["reproduce"]
    assert card["ood_reference"]["n_fit"] == N  # its own reference, from its own cases
    assert (
        card["weights_sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    )
    assert Registry(trained / "models").active() is None
    md = (folder / "model_card.md").read_text()
    assert "not for clinical use" in md
    assert f"--synthetic-cohort {N}" in md


def test_inputs_are_the_nodes_own_and_the_cache_gives_the_same_model(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = trained / "inputs.npz"
    with np.load(cache) as data:
        x = data["x"]
    assert x.shape == (N, 2, 32, 32)
    # Case 3 made again, alone, through the same path: the same input.
    again = synthetic_inputs(
        [3], n=N, seed=SEED, size=(32, 32), window=(0.0, 10.0), phantom=PHANTOM
    )
    np.testing.assert_array_equal(x[3], again[0])
    stamp = cache.stat().st_mtime_ns
    capsys.readouterr()
    assert _retrain(trained, "0.3.0") == EXIT_OK
    assert f"inputs of the cohort read from {cache}" in capsys.readouterr().out
    assert cache.stat().st_mtime_ns == stamp
    registry = Registry(trained / "models")
    assert registry.card("0.3.0")["cv_metrics"] == registry.card("0.2.0")["cv_metrics"]
    first, second = registry.load("0.2.0").net.state_dict(), registry.load("0.3.0").net.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_options_that_do_not_go_with_a_synthetic_cohort_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _retrain(tmp_path, "0.4.0", "--labels", str(tmp_path / "labels.csv"))
    assert code == EXIT_BAD_INPUT
    assert "--labels does not go with --synthetic-cohort" in capsys.readouterr().err
    assert _retrain(tmp_path, "0.4.0", "--paper-size") == EXIT_BAD_INPUT
    assert "--synthetic-cohort 24 is too small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["retrain", "--synthetic-cohort", "30", "--data", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "inputs.npz").exists()


def test_paper_size_takes_62_lymphoma_and_56_sarcoidosis_in_cohort_order() -> None:
    y = np.array([c.label == "lymphoma" for c in draw_cohort(200, 1)], dtype=np.int64)
    take = paper_size_indices(y)
    assert take.size == 118
    assert int(y[take].sum()) == 62
    assert list(take) == sorted(take)
    assert list(np.flatnonzero(y[: take[-1] + 1] == 1)[:62]) == list(take[y[take] == 1])
