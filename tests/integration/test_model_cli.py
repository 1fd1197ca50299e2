"""``sarclym-node infer``, ``retrain`` and ``model`` end to end on a small generated cohort.

Training settings are tiny (2 folds, 1 epoch, 32x32 inputs): these tests check the plumbing,
the registry, the JSON contract and the errors, not model quality (see tests/bench).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from pydicom import dcmread

from sarclym.model.inference.net import build_net
from sarclym.model.inference.registry import CARD_FILE, WEIGHTS_FILE, Registry
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_NO_SERIES, EXIT_OK, main
from tests.conftest import require_tool

INFER_KEYS = {
    "study_instance_uid",
    "analysed_series_instance_uid",
    "skipped",
    "suv_max",
    "probability_lymphoma",
    "label",
    "model_version",
    "weights_sha256",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "c"
    code = main(["synth", "--out", str(out), "--cases", "8", "--seed", "21", "--mip-series", "yes"])
    assert code == EXIT_OK
    return out


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding version 0.1.0, retrained on the cohort (not active)."""
    base = tmp_path_factory.mktemp("trained")
    code = main(
        [
            "retrain",
            "--data", str(cohort),
            "--labels", str(cohort / "labels.csv"),
            "--folds", "2",
            "--epochs", "1",
            "--input-size", "32",
            "--registry", str(base / "models"),
            "--cache", str(base / "cache"),
            "--version", "0.1.0",
        ]
    )  # fmt: skip
    assert code == EXIT_OK
    return base / "models"


def _labels(cohort: Path) -> list[dict[str, str]]:
    with (cohort / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _infer(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(["infer", "--json", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_retrain_registers_an_inactive_version_with_a_card(cohort: Path, trained: Path) -> None:
    folder = trained / "0.1.0"
    card = json.loads((folder / CARD_FILE).read_text())
    assert (
        card["weights_sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    )
    assert card["synthetic_data"] is True  # the labels.csv of synth says so
    assert card["positive_class"] == "lymphoma"
    assert card["training_data"]["n"] == 8
    assert card["cv_metrics"]["folds"] == 2
    assert card["input_size"] == [32, 32]
    assert 0.5 <= card["bayes_auc"] <= 1.0
    assert card["reproduce"].startswith("sarclym-node retrain --data ")
    assert "--input-size 32x32" in card["reproduce"]
    md = (folder / "model_card.md").read_text()
    assert "not for clinical use" in md
    assert "synthetic" in md
    assert Registry(trained).active() is None


def test_retrain_reuses_the_mip_cache(cohort: Path, trained: Path) -> None:
    cache = trained.parent / "cache"
    cached = sorted(cache.glob("*.npz"))
    assert len(cached) == 8
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    code = main(
        [
            "retrain", "--data", str(cohort), "--labels", str(cohort / "labels.csv"),
            "--folds", "2", "--epochs", "1", "--input-size", "32",
            "--registry", str(trained), "--cache", str(cache),
        ]
    )  # fmt: skip
    assert code == EXIT_OK
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    assert len(Registry(trained).versions()) == 2  # a dated version next to 0.1.0


def test_model_list_activate_gate_force_rollback(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))  # its state.db
    reg_dir = tmp_path / "models"
    shutil.copytree(trained, reg_dir)
    torch.manual_seed(0)
    weak = Registry(reg_dir).register(
        build_net("two_branch", input_size=(32, 32)),
        {
            "suv_window": [0.0, 10.0],
            "training_data": "test",
            "cv_metrics": {"folds": 2, "auc": {"mean": 0.5, "ci95": [0.4, 0.6]}},
        },
        version="0.2.0",
    )
    r = ["--registry", str(reg_dir)]
    capsys.readouterr()

    assert main(["model", "list", "--json", *r]) == EXIT_OK
    listed = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"0.1.0", "0.2.0"} <= set(listed)
    assert not any(row["active"] for row in listed.values())

    assert main(["model", "activate", weak, *r]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "0.500" in err
    assert "--force" in err
    assert Registry(reg_dir).active() is None

    assert main(["model", "activate", "0.1.0", "--force", *r]) == EXIT_OK
    assert main(["model", "activate", weak, "--force", *r]) == EXIT_OK
    assert Registry(reg_dir).active() == weak
    assert main(["model", "rollback", *r]) == EXIT_OK
    assert Registry(reg_dir).active() == "0.1.0"
    capsys.readouterr()

    assert main(["model", "show", *r]) == EXIT_OK
    assert "Model card: sarclym-mip-cnn 0.1.0" in capsys.readouterr().out
    assert main(["model", "show", "9.9.9", *r]) == EXIT_BAD_INPUT
    assert "no model version '9.9.9'" in capsys.readouterr().err
    assert main(["model", "activate", *r]) == EXIT_BAD_INPUT


@pytest.fixture
def active(trained: Path, tmp_path: Path) -> Path:
    reg_dir = tmp_path / "models"
    shutil.copytree(trained, reg_dir)
    Registry(reg_dir).activate("0.1.0", min_auc=0.0)
    return reg_dir


def test_infer_json_for_one_study(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = _infer(capsys, str(cohort / "case0001"), "--registry", str(active))
    assert code == EXIT_OK
    assert isinstance(result, dict)
    assert set(result) >= INFER_KEYS
    assert result["study_instance_uid"] == _labels(cohort)[0]["study_instance_uid"]
    pet = dcmread(next((cohort / "case0001" / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    assert result["analysed_series_instance_uid"] == pet.SeriesInstanceUID
    reasons = " | ".join(s["reason"] for s in result["skipped"])
    assert "Modality (0008,0060) is CT, not PT." in reasons
    assert "NAC" in reasons
    assert "REPROJECTION" in reasons
    assert len(result["skipped"]) == 3
    assert result["label"] in ("sarcoidosis", "lymphoma")
    assert 0.0 <= result["probability_lymphoma"] <= 1.0
    assert (result["label"] == "lymphoma") == (result["probability_lymphoma"] >= 0.5)
    assert result["suv_max"] > 1.0
    card = json.loads((active / "0.1.0" / CARD_FILE).read_text())
    assert result["model_version"] == "0.1.0"
    assert result["weights_sha256"] == card["weights_sha256"]


def test_infer_several_studies_prints_a_list_and_the_text_form(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(cohort / "case0002"), str(cohort / "case0003" / "PT_AC")]
    code, result, _ = _infer(capsys, *paths, "--registry", str(active))
    assert code == EXIT_OK
    assert isinstance(result, list)
    assert len(result) == 2
    assert all(r["label"] is not None for r in result)
    assert [r["folder"] for r in result] == paths  # where each study came from
    assert main(["infer", *paths, "--registry", str(active)]) == EXIT_OK
    text = capsys.readouterr().out
    assert text.startswith("RESEARCH USE ONLY")
    assert "model 0.1.0" in text
    for path, r in zip(paths, result, strict=True):
        assert f"{path}: study {r['study_instance_uid']}: {r['label']}" in text


def test_infer_a_folder_of_studies_names_the_folder_of_each(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Many studies under one folder: each result says which sub-folder it came from."""
    code, result, _ = _infer(capsys, str(cohort), "--registry", str(active))
    assert code == EXIT_OK
    case_of = {row["study_instance_uid"]: row["case_id"] for row in _labels(cohort)}
    assert len(result) == len(case_of)
    for r in result:
        assert r["folder"] == str(cohort / case_of[r["study_instance_uid"]])


def test_infer_exit_3_when_no_series_qualifies(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = _infer(
        capsys, str(cohort / "case0004" / "CT"), str(cohort / "case0004" / "PT_NAC"),
        "--registry", str(active),
    )  # fmt: skip
    assert code == EXIT_NO_SERIES
    assert result["analysed_series_instance_uid"] is None
    assert result["label"] is None
    assert result["probability_lymphoma"] is None
    assert len(result["skipped"]) == 2


def test_infer_bad_paths_exit_2(
    active: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["infer", str(tmp_path / "nowhere"), "--registry", str(active)]) == EXIT_BAD_INPUT
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert main(["infer", str(tmp_path / "notes.txt"), "--registry", str(active)]) == 2
    assert "no DICOM study found" in capsys.readouterr().err


def test_infer_refuses_weights_whose_hash_does_not_match(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = active / "0.1.0" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, result, err = _infer(capsys, str(cohort / "case0001"), "--registry", str(active))
    assert code == EXIT_BAD_INPUT
    assert result is None
    assert WEIGHTS_FILE in err
    assert "SHA-256" in err


def test_infer_with_no_model_at_all_names_the_registry(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-registry"
    empty.mkdir()
    (empty / "README").write_text("not a model")  # not empty: no seeding from the package
    code, _, err = _infer(capsys, str(cohort / "case0001"), "--registry", str(empty))
    assert code == EXIT_BAD_INPUT
    assert str(empty) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_infer_device_cuda_without_cuda_is_a_clear_error(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _infer(
        capsys, str(cohort / "case0001"), "--registry", str(active), "--device", "cuda"
    )
    assert code == EXIT_BAD_INPUT
    assert "no CUDA device" in err


def test_infer_out_writes_valid_sc_and_sr(
    cohort: Path, active: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code, result, _ = _infer(
        capsys, str(cohort / "case0005"), "--registry", str(active), "--out", str(out)
    )
    assert code == EXIT_OK
    files = [Path(p) for p in result["files"]]
    assert len(files) == 2
    modalities = {dcmread(p).Modality for p in files}
    assert modalities == {"OT", "SR"} or modalities == {"SC", "SR"}
    for path in files:
        ds = dcmread(path)
        assert ds.StudyInstanceUID == result["study_instance_uid"]
        assert "RESEARCH" in str(ds.get("SeriesDescription", "")).upper()
    dciodvfy = require_tool("dciodvfy")
    for path in files:
        proc = subprocess.run(
            [dciodvfy, "-new", str(path)], capture_output=True, text=True, timeout=120
        )
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_infer_logs_no_patient_identifiers(
    cohort: Path, active: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = dcmread(next((cohort / "case0006" / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    code = main(
        ["--log-level", "DEBUG", "infer", str(cohort / "case0006"), "--registry", str(active)]
    )
    assert code == EXIT_OK
    out, err = capsys.readouterr()
    for value in (str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)):
        assert value
        assert value not in err
        assert value not in out


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda rows: [*rows, ["1.2.3.4.5", "lymphoma"]], "not found in the data"),
        (lambda rows: [rows[0], [rows[1][0], "sarcoma"], *rows[2:]], "unknown label 'sarcoma'"),
        (lambda rows: [[uid, "lymphoma"] for uid, _ in rows], "only one class"),
    ],
    ids=["unknown-study", "unknown-label", "one-class"],
)
def test_retrain_bad_labels_fail_before_training(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, expected: str
) -> None:
    rows = [[r["study_instance_uid"], r["label"]] for r in _labels(cohort)]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["study_instance_uid", "label"])
        writer.writerows(edit(rows))
    registry = tmp_path / "models"
    code = main(
        [
            "retrain", "--data", str(cohort), "--labels", str(labels), "--folds", "2",
            "--registry", str(registry),
        ]
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert expected in err
    assert str(labels) in err
    assert not (tmp_path / "models").exists() or not list(registry.iterdir())
    assert not (tmp_path / "cache").exists()


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("work started before every argument was checked")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--version", "tty-test"], "--version 'tty-test' must look like '1.0.0' or "),
        (["--version", "0.1.0"], "--version 0.1.0 exists in "),
        (["--cache", "{file}"], "--cache {file}: not a folder"),
        (["--data", "{file}"], "--data {file}: not a folder"),
        (["--data", "{missing}"], "--data {missing}: no such folder"),
        (["--registry", "{file}"], "--registry {file}: not a folder"),
        (["--arch", "unet"], "--arch unet: expected one of two_channel, two_branch"),
        (["--notes", "{missing}"], "--notes {missing}: cannot read"),
        (["--folds", "7"], "too few cases for 7-fold cross-validation"),
        (["--folds", "1"], "--folds 1: at least 2 folds are needed"),
        (["--input-size", "16"], "--input-size 16x16: input_size (16, 16) must be"),
    ],
    ids=["version-syntax", "version-exists", "cache", "data-file", "data-missing", "registry",
         "arch", "notes", "folds-7", "folds-1", "input-size"],
)  # fmt: skip
def test_retrain_checks_every_argument_before_any_work(
    argv: list[str],
    expected: str,
    cohort: Path,
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad argument fails before the data is scanned, a MIP cached or an epoch trained
    (on a real 5-fold, 40-epoch run the version was checked hours too late)."""
    from sarclym.model.imaging import prepare
    from sarclym.model.training import cache, train

    for module, name in (
        (prepare, "scan_paths"),
        (cache, "build_training_set"),
        (train, "cross_validate"),
        (train, "train_final"),
    ):
        monkeypatch.setattr(module, name, _no_work)
    registry = tmp_path / "models"
    shutil.copytree(trained, registry)
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    names = {"file": str(file), "missing": str(tmp_path / "missing")}
    argv = [a.format(**names) for a in argv]
    base = {
        "--data": str(cohort),
        "--labels": str(cohort / "labels.csv"),
        "--registry": str(registry),
        "--cache": str(tmp_path / "cache"),
        "--folds": "2",
    }
    base.update(zip(argv[::2], argv[1::2], strict=True))
    code = main(["retrain", *(x for kv in base.items() for x in kv)])
    assert code == EXIT_BAD_INPUT
    assert expected.format(**names) in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in registry.iterdir()) == sorted(p.name for p in trained.iterdir())


def test_retrain_lists_and_counts_studies_without_a_label(
    cohort: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Studies in --data that the labels file does not name: listed on stdout and counted
    in the card. The labels file here is separated by ';' (a spreadsheet's CSV export)."""
    rows = _labels(cohort)
    dropped = [
        next(r for r in rows if r["label"] == "lymphoma"),
        next(r for r in rows if r["label"] == "sarcoidosis"),
    ]
    kept = [r for r in rows if r not in dropped]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["study_instance_uid", "label"])
        writer.writerows([r["study_instance_uid"], r["label"]] for r in kept)
    registry = tmp_path / "models"
    code = main(
        [
            "retrain", "--data", str(cohort), "--labels", str(labels),
            "--folds", "2", "--epochs", "1", "--input-size", "32",
            "--registry", str(registry), "--cache", str(trained.parent / "cache"),
            "--version", "0.3.0",
        ]
    )  # fmt: skip
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert f"2 studies in --data {cohort} have no label in {labels} and are not used:" in out
    for r in dropped:
        assert r["study_instance_uid"] in out
    card = json.loads((registry / "0.3.0" / CARD_FILE).read_text())
    data = card["training_data"]
    assert (data["n"], data["excluded"], data["excluded_no_label"]) == (6, 2, 2)
    assert data["excluded_no_series"] == 0
    md = (registry / "0.3.0" / "model_card.md").read_text()
    assert "- excluded: 2" in md
    assert "- excluded_no_label: 2" in md


def test_retrain_too_few_cases_for_the_folds(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "retrain", "--data", str(cohort), "--labels", str(cohort / "labels.csv"),
            "--folds", "7", "--registry", str(tmp_path / "models"),
        ]
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert "too few cases for 7-fold cross-validation" in capsys.readouterr().err


def test_retrain_missing_labels_file(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.csv"
    code = main(["retrain", "--data", str(cohort), "--labels", str(missing)])
    assert code == EXIT_BAD_INPUT
    assert str(missing) in capsys.readouterr().err


def test_infer_uses_the_shipped_default_model(
    cohort: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No registry configured: <data_dir>/models is seeded with the packaged default, active."""
    from sarclym.model.inference.predictor import DEFAULT_REGISTRY

    monkeypatch.setenv("SARCLYM__STORAGE__DATA_DIR", str(tmp_path / "var"))
    code, result, _ = _infer(capsys, str(cohort / "case0007"))
    assert code == EXIT_OK
    shipped = Registry(DEFAULT_REGISTRY)
    active = shipped.active()
    assert active is not None
    card = json.loads((DEFAULT_REGISTRY / active / CARD_FILE).read_text())
    assert card["synthetic_data"] is True
    assert result["model_version"] == active
    assert result["weights_sha256"] == card["weights_sha256"]
    assert (tmp_path / "var" / "models" / active / WEIGHTS_FILE).exists()
    assert main(["model", "list"]) == EXIT_OK
    assert f"* {active}" in capsys.readouterr().out
