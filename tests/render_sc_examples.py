"""Render the example Secondary Captures in ``docs/`` with the shipped default model.

Run from the repository root: ``python -m tests.render_sc_examples [--out DIR]`` (``docs/``
unless ``--out``: a folder to look at them before replacing the README's). It generates a few
synthetic studies (seed 9090, not in the training cohort's seed), runs the default model on each
exactly as ``sarclym-node infer --out`` does, and saves the pixel data of the first SC of each
true class whose prediction is right (what a viewer shows) as a PNG. It also renders the SC of the
real TCIA STS_001 whole-body scan (``tests/data/realpet``, CC BY 3.0): a soft-tissue sarcoma
patient, neither disease.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from PIL import Image

from sarclym.model.imaging.prepare import scan_paths
from sarclym.model.inference.predictor import DEFAULT_REGISTRY, Predictor
from sarclym.model.inference.registry import Registry
from sarclym.node.cli import main as cli
from sarclym.node.results import build_sc

DOCS = Path(__file__).resolve().parents[1] / "docs"
REAL = Path(__file__).resolve().parent / "data" / "realpet" / "tcia-sts-001-wholebody-fdg"
CREATED = datetime(2026, 11, 27, 9, 0, 0)


def main(argv: Sequence[str] | None = None) -> None:
    """Write ``sc_example_sarcoidosis.png``, ``sc_example_lymphoma.png`` and
    ``sc_example_real_tcia_sts001.png`` into ``docs/`` (or ``--out``)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.render_sc_examples",
        description="Render the README's example Secondary Captures with the shipped default "
        "model (the package's ACTIVE version).",
    )
    parser.add_argument(
        "--out", type=Path, default=DOCS, help=f"folder for the PNGs (default {DOCS})"
    )
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(Registry(DEFAULT_REGISTRY).load())
    print(f"model {predictor.loaded.version}")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        assert cli(["synth", "--out", str(cohort), "--cases", "8", "--seed", "9090"]) == 0
        with (cohort / "labels.csv").open(newline="") as fh:
            truth = {r["study_instance_uid"]: r["label"] for r in csv.DictReader(fh)}
        scan = scan_paths([cohort])
        done: set[str] = set()
        for uid, study in sorted(scan.studies.items()):
            label = truth[uid]
            if label in done:
                continue
            prepared = study.prepare(size=predictor.input_size, suv_window=predictor.suv_window)
            prediction = predictor.predict(prepared)
            print(f"{label}: P(lymphoma) {prediction.probability_lymphoma:.3f}")
            if prediction.label != label:
                continue
            sc = build_sc(prediction, prepared.datasets, created=CREATED)
            path = out / f"sc_example_{label}.png"
            Image.fromarray(sc.pixel_array).save(path, optimize=True)
            print(path)
            done.add(label)
    missing = {"sarcoidosis", "lymphoma"} - done
    if missing:
        raise SystemExit(f"no correctly predicted example for {missing}")
    (study,) = scan_paths([REAL]).studies.values()
    prepared = study.prepare(size=predictor.input_size, suv_window=predictor.suv_window)
    prediction = predictor.predict(prepared)
    print(f"TCIA STS_001 (sarcoma): P(lymphoma) {prediction.probability_lymphoma:.3f}")
    sc = build_sc(prediction, prepared.datasets, created=CREATED)
    path = out / "sc_example_real_tcia_sts001.png"
    Image.fromarray(sc.pixel_array).save(path, optimize=True)
    print(path)


if __name__ == "__main__":
    main()
