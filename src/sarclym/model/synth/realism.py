"""Realism of the phantom, measured: organ SUVs against published ranges, and MIP statistics
against a real whole-body FDG scan.

For a sample of synthetic cases of a phantom version this module renders the PET on a clinical
grid (4 mm pixels, 3.27 mm slices, 6.5 mm FWHM, as the real scan's GE Discovery ST) and
reports

* per organ, the mean over cases of the organ's mean SUV in the noisy, blurred image (voxels
  labelled with the organ, eroded by one voxel against partial volume; version 2 only, the
  version-1 renderer has no label map), beside the published range;
* of the frontal SUV MIP: the histogram of body pixels (MIP > 0.25), their 50/95/99th
  percentiles and maximum, the body's head-to-foot extent and its widest mid-body width;

and the same MIP statistics of a real scan read through the node's own path (scan, select,
SUV, MIPs: :mod:`sarclym.model.imaging`). Reproduce the table of ``docs/phantom.md`` with::

    python -m sarclym.model.synth.realism --cases 12 --seed 7 \\
        --real tests/data/realpet/tcia-sts-001-wholebody-fdg --out docs/phantom.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion

from sarclym.model.imaging.prepare import scan_paths
from sarclym.model.synth.latent import Case, draw_cohort
from sarclym.model.synth.phantom import PetGrid, render_pet

__all__ = [
    "HIST_EDGES",
    "ORGAN_RANGES",
    "MipStats",
    "main",
    "mip_stats",
    "organ_means",
    "real_mip",
    "synthetic_mips",
]

#: Grid of the real scan's scanner class (GE Discovery ST: 4.69 mm, 3.27 mm slices).
GRID = PetGrid(pixel_spacing_mm=4.0, matrix=150, slice_spacing_mm=3.27, fwhm_mm=6.5)
#: SUV bin edges of the MIP histogram (body pixels: MIP above the first edge).
HIST_EDGES = (0.25, 1.0, 2.0, 3.0, 5.0, 10.0, np.inf)
#: Published SUVmean ranges (module docstring of :mod:`._physiology` for the sources).
ORGAN_RANGES: dict[str, tuple[float, float, str]] = {
    "grey_matter": (7.0, 10.0, "Wang 2007 (cerebellum 8.0 +- 2.2); cortex 7-10"),
    "cerebellum": (5.8, 10.2, "Wang 2007: 8.0 +- 2.2"),
    "tonsil": (2.0, 4.9, "Wang 2007: palatine 3.45 +- 1.4"),
    "blood": (1.5, 2.0, "Zincirkeser 2007, EANM 2015: mediastinal blood pool"),
    "liver": (1.4, 2.5, "Liu 2019: 1.85 +- 0.43; Zincirkeser 2007 ~2-2.5"),
    "spleen": (1.4, 2.2, "Zincirkeser 2007: ~1.8"),
    "vertebra": (1.0, 2.2, "Zincirkeser 2007: bone marrow"),
    "kidney": (2.0, 4.5, "Wang 2007: renal cortex"),
    "stomach": (1.5, 3.5, "Kostakoglu 2004; Zincirkeser 2007"),
    "testis": (2.0, 3.1, "Wang 2007: 2.57 +- 0.56"),
    "lung": (0.4, 0.7, "Zincirkeser 2007"),
    "muscle": (0.5, 0.9, "Zincirkeser 2007: skeletal muscle"),
}


@dataclass(frozen=True)
class MipStats:
    """Statistics of one frontal SUV MIP.

    Attributes
    ----------
    histogram : tuple of float
        Fraction of body pixels per bin of :data:`HIST_EDGES`.
    p50, p95, p99, suv_max : float
        Percentiles and maximum of the body pixels.
    extent_mm : float
        Head-to-foot extent of the body in the MIP.
    width_mm : float
        Widest body row between 30 % and 70 % of the extent (trunk, with arms when down).
    """

    histogram: tuple[float, ...]
    p50: float
    p95: float
    p99: float
    suv_max: float
    extent_mm: float
    width_mm: float


def mip_stats(frontal: np.ndarray, spacing_mm: tuple[float, float]) -> MipStats:
    """Statistics of a frontal SUV MIP (rows head to feet).

    Parameters
    ----------
    frontal : numpy.ndarray
        SUV, ``(rows, columns)``.
    spacing_mm : tuple of float
        ``(row, column)`` spacing.

    Returns
    -------
    MipStats

    Raises
    ------
    ValueError
        When no pixel is above the body threshold.
    """
    body = frontal > HIST_EDGES[0]
    values = frontal[body]
    if values.size == 0:
        raise ValueError("frontal MIP: no pixel above SUV 0.25 (no body)")
    hist, _ = np.histogram(values, bins=np.asarray(HIST_EDGES))
    rows = np.flatnonzero(body.sum(axis=1) >= 3)
    extent = (rows[-1] - rows[0] + 1) * spacing_mm[0]
    lo, hi = rows[0] + int(0.3 * rows.size), rows[0] + int(0.7 * rows.size)
    widths = []
    for r in range(lo, max(hi, lo + 1)):
        cols = np.flatnonzero(body[r])
        widths.append((cols[-1] - cols[0] + 1) if cols.size else 0)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return MipStats(
        histogram=tuple(float(h) / values.size for h in hist),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        suv_max=float(values.max()),
        extent_mm=float(extent),
        width_mm=float(max(widths) * spacing_mm[1]),
    )


def real_mip(folder: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """The frontal SUV MIP of the whole-body PET under ``folder``, read as the node reads it.

    Parameters
    ----------
    folder : pathlib.Path
        A folder of DICOM files holding one study with a whole-body FDG PET series.

    Returns
    -------
    tuple
        ``(frontal SUV MIP, (row, column) spacing in mm)``.

    Raises
    ------
    ValueError
        When the folder holds no study, or no series the node would analyse.
    """
    studies = scan_paths([folder]).studies
    if len(studies) != 1:
        raise ValueError(f"{folder}: expected one study, found {len(studies)}")
    (study,) = studies.values()
    prepared = study.prepare(size=(256, 128), suv_window=(0.0, 10.0))
    if prepared.mips is None:
        reasons = "; ".join(str(s) for s in prepared.selection.skipped)
        raise ValueError(f"{folder}: no series the node would analyse ({reasons})")
    return prepared.mips.frontal, prepared.mips.pixel_spacing_mm


def _render(case: Case, seed: int, labels: bool) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    vol = render_pet(case, GRID, np.random.default_rng([seed, 0xA1]), keep_labels=labels)
    return vol.suv, vol.labels, vol.label_names


def synthetic_mips(
    cases: Sequence[Case], seed: int
) -> tuple[list[MipStats], dict[str, list[float]], list[tuple[Case, np.ndarray]]]:
    """Render ``cases``; their MIP statistics, per-organ mean SUVs and frontal MIPs.

    Parameters
    ----------
    cases : sequence of Case
        Cases of one phantom version.
    seed : int
        Noise seed.

    Returns
    -------
    tuple
        ``(MIP statistics per case, organ -> mean SUV per case, (case, frontal MIP) pairs)``;
        the MIP spacing is ``(GRID.slice_spacing_mm, GRID.pixel_spacing_mm)``.
    """
    stats: list[MipStats] = []
    organs: dict[str, list[float]] = {}
    mips: list[tuple[Case, np.ndarray]] = []
    for case in cases:
        suv, labels, names = _render(case, seed, labels=case.physiology is not None)
        frontal = suv.max(axis=1)
        stats.append(mip_stats(frontal, (GRID.slice_spacing_mm, GRID.pixel_spacing_mm)))
        mips.append((case, frontal))
        if labels is not None:
            for organ, value in organ_means(suv, labels, names).items():
                organs.setdefault(organ, []).append(value)
    return stats, organs, mips


def organ_means(suv: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Mean SUV of each organ of :data:`ORGAN_RANGES` in ``suv``, inside its eroded label.

    Parameters
    ----------
    suv : numpy.ndarray
        The (noisy, blurred) SUV volume.
    labels : numpy.ndarray
        The label map of the same grid.
    names : sequence of str
        Label names.

    Returns
    -------
    dict
        Organ -> mean SUV, for organs with at least 4 voxels left after erosion.
    """
    out = {}
    for organ in ORGAN_RANGES:
        if organ not in names:
            continue
        mask = binary_erosion(labels == names.index(organ))
        if mask.sum() >= 4:
            out[organ] = float(suv[mask].mean())
    return out


def _row(name: str, stats: Sequence[MipStats]) -> str:
    h = np.mean([s.histogram for s in stats], axis=0)
    hist = " / ".join(f"{100 * v:.0f}" for v in h)
    mean = {k: float(np.mean([getattr(s, k) for s in stats])) for k in MipStats.__annotations__}
    return (
        f"| {name} | {hist} | {mean['p50']:.2f} | {mean['p95']:.2f} | {mean['p99']:.1f} | "
        f"{mean['suv_max']:.1f} | {mean['extent_mm']:.0f} | {mean['width_mm']:.0f} |"
    )


def report(
    real: MipStats | None, by_version: dict[int, tuple[list[MipStats], dict[str, list[float]]]]
) -> str:
    """The Markdown tables: organ SUVs (version 2) and MIP statistics (real, v1, v2)."""
    lines = [
        "| organ | synthetic v2: mean SUV (sd over cases) | published SUVmean | source |",
        "| --- | --- | --- | --- |",
    ]
    organs = by_version.get(2, ([], {}))[1]
    for organ, (lo, hi, source) in ORGAN_RANGES.items():
        values = organs.get(organ)
        got = f"{np.mean(values):.2f} ({np.std(values):.2f})" if values else "n/a"
        lines.append(f"| {organ} | {got} | {lo:g}-{hi:g} | {source} |")
    bins = " / ".join(
        f"{a:g}-{b:g}" if np.isfinite(b) else f">{a:g}" for a, b in itertools.pairwise(HIST_EDGES)
    )
    lines += [
        "",
        f"| frontal MIP | % of body pixels in SUV {bins} | p50 | p95 | p99 | max | "
        "extent mm | width mm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if real is not None:
        lines.append(_row("real (TCIA STS_001)", [real]))
    for version, (stats, _) in sorted(by_version.items()):
        lines.append(_row(f"synthetic v{version} (mean of {len(stats)})", stats))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and optionally write) the realism tables."""
    parser = argparse.ArgumentParser(prog="python -m sarclym.model.synth.realism")
    parser.add_argument("--cases", type=int, default=12, help="cases per phantom version")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--real", type=Path, help="folder of a real whole-body FDG PET study")
    parser.add_argument("--out", type=Path, help="Markdown file to write the tables into")
    parser.add_argument("--sheet", type=Path, help="also write a contact sheet PNG")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    real = None
    real_frontal = None
    if args.real is not None:
        real_frontal = real_mip(args.real)
        real = mip_stats(*real_frontal)
    by_version = {}
    examples = {}
    for version in (1, 2):
        cases = draw_cohort(args.cases, args.seed, phantom=version)
        stats, organs, mips = synthetic_mips(cases, args.seed)
        by_version[version] = (stats, organs)
        examples[version] = mips
    text = report(real, by_version)
    print(text)
    if args.out is not None:
        _write_markdown(args.out, text, argv)
    if args.sheet is not None:
        from sarclym.model.synth.contact import write_comparison_sheet

        spacing = (GRID.slice_spacing_mm, GRID.pixel_spacing_mm)
        write_comparison_sheet(
            args.sheet,
            real_frontal,
            {v: [(c.label, c.case_id, m, spacing) for c, m in ex] for v, ex in examples.items()},
        )
        print(f"contact sheet: {args.sheet}")
    return 0


def _write_markdown(path: Path, text: str, argv: Sequence[str]) -> None:
    command = "python -m sarclym.model.synth.realism " + " ".join(argv)
    marker = "<!-- realism table: generated -->"
    body = f"{marker}\n\nReproduce with:\n\n    {command.strip()}\n\n{text}\n\n{marker}\n"
    if path.exists() and path.read_text(encoding="utf-8").count(marker) == 2:
        head, _, rest = path.read_text(encoding="utf-8").partition(marker)
        _, _, tail = rest.partition(marker)
        path.write_text(head + body.rstrip("\n") + tail, encoding="utf-8")
    else:
        path.write_text(body, encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - command line
    raise SystemExit(main())
