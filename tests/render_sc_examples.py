"""Render the example Secondary Captures in ``docs/`` from the synthetic test fixtures.

Run once from the repository root: ``python -m tests.render_sc_examples``. The images come from
the built DICOM objects' pixel data (what a viewer shows), on the phantom of
:mod:`tests.results_fixtures` (the lead replaces them with real-model renderings).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sarclym.model.prediction import Label
from sarclym.node.results import build_sc
from tests.results_fixtures import CREATED, LARGE_SHAPE, LARGE_SPACING, make_prediction

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    """Write ``docs/sc_example_sarcoidosis.png`` and ``docs/sc_example_lymphoma.png``."""
    DOCS.mkdir(exist_ok=True)
    labels: tuple[Label, ...] = ("sarcoidosis", "lymphoma")
    for label in labels:
        prediction, datasets = make_prediction(label, shape=LARGE_SHAPE, spacing_mm=LARGE_SPACING)
        sc = build_sc(prediction, datasets, created=CREATED)
        path = DOCS / f"sc_example_{label}.png"
        Image.fromarray(sc.pixel_array).save(path, optimize=True)
        print(path)


if __name__ == "__main__":
    main()
