"""Generate a synthetic FDG PET/CT cohort: latent draw -> phantom -> vendor DICOM -> labels.csv.

Each case k of a cohort depends only on (seed, k): the same seed gives the same pixel data and the
same UIDs whatever the cohort size, and a different seed gives different ones. All names, IDs and
dates are invented; nothing here comes from a patient.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from sarclym.model.synth.dicomwriter import StudyMeta, TransferSyntax, WrittenStudy, write_study
from sarclym.model.synth.latent import DEFAULT_PHANTOM, Case, bayes_auc, draw_cohort
from sarclym.model.synth.phantom import PetGrid, PetVolumes, render_ct, render_pet
from sarclym.model.synth.vendors import Vendor, draw_profile

__all__ = [
    "LABELS_COLUMNS",
    "CohortResult",
    "GeneratedStudy",
    "VendorChoice",
    "generate_cohort",
    "generate_study",
    "write_labels_csv",
]

#: Columns of ``labels.csv``, in order.
LABELS_COLUMNS = (
    "case_id",
    "study_instance_uid",
    "series_instance_uid",
    "label",
    "bayes_llr",
    "sites",
)

VendorChoice = Vendor | str  # "siemens" | "ge" | "philips" | "mixed"

_GIVEN = ("Alex", "Sam", "Robin", "Kim", "Jo", "Noa", "Eli", "Mika", "Yuki", "Ari", "Lou", "Sasha")
_FAMILY = ("Synth", "Phantom", "Testcase", "Modelle", "Exemplar", "Muster", "Sample", "Dummy")

_CT_SPACING_MM = 1.953125  # 500 mm field of view on a 256 matrix
_CT_MATRIX = 256
_CT_SLICE_MM = 5.0
_FDG_DOSE_BQ_PER_KG = 3.7e6


@dataclass(frozen=True)
class GeneratedStudy:
    """One study written to disk, with what the generator knows about it."""

    case: Case
    written: WrittenStudy
    frontal_mip: np.ndarray  # SUV, (nz, nx): head up, patient's right on the viewer's left
    mip_spacing_mm: tuple[float, float]  # (dz, dx)
    vendor: str

    def labels_row(self) -> dict[str, str]:
        """The ``labels.csv`` row of this study."""
        return {
            "case_id": self.case.case_id,
            "study_instance_uid": self.written.study_instance_uid,
            "series_instance_uid": self.written.ac_series_uid,
            "label": self.case.label,
            "bayes_llr": _format_llr(self.case.bayes_llr),
            "sites": ";".join(self.case.sites),
        }


@dataclass(frozen=True)
class CohortResult:
    """What :func:`generate_cohort` wrote."""

    studies: list[GeneratedStudy]
    labels_csv: Path
    bayes_auc: float


def _format_llr(llr: float) -> str:
    if math.isinf(llr):
        return "inf" if llr > 0 else "-inf"
    return f"{llr:.6f}"


def _case_rng(seed: int, index: int) -> np.random.Generator:
    # Rendering draws come from their own stream, apart from the latent draw of the case.
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0x5EED]))


def _study_meta(
    case: Case,
    rng: np.random.Generator,
    *,
    seed: int,
    vendor: Vendor,
    transfer_syntax: TransferSyntax,
    profile_rng: np.random.Generator,
) -> StudyMeta:
    profile = draw_profile(vendor, profile_rng)
    study_date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3 * 365)))
    age = int(rng.integers(25, 85))
    birth = study_date - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    if rng.random() < 0.03:
        # A late emergency scan whose uptake period crosses midnight (tests time-only handling).
        injection_clock = dt.time(23, int(rng.integers(5, 55)))
    else:
        injection_clock = dt.time(int(rng.integers(7, 16)), int(rng.integers(0, 60)))
    weight = float(case.body.weight_kg)
    name = f"{_FAMILY[rng.integers(len(_FAMILY))]}^{_GIVEN[rng.integers(len(_GIVEN))]}"
    patient_id = f"SYN{int(rng.integers(10**6, 10**7))}"
    sex = str(rng.choice(["F", "M"]))
    height = round(float(rng.normal(1.70, 0.09)), 2)
    if case.physiology is not None:
        # Version 2 draws sex and height with the body (same stream use as version 1 here).
        sex, height = case.physiology.sex, case.physiology.height_m
    return StudyMeta(
        patient_name=name,
        patient_id=patient_id,
        birth_date=birth,
        sex=sex,
        age=age,
        weight_kg=weight,
        height_m=height,
        study_date=study_date,
        injection_time=dt.datetime.combine(study_date, injection_clock),
        dose_bq=round(weight * _FDG_DOSE_BQ_PER_KG * float(rng.uniform(0.85, 1.15)), -5),
        uptake_min=float(rng.uniform(55.0, 75.0)),
        accession=f"A{int(rng.integers(10**7, 10**8))}",
        study_uid_seed=f"sarclym-synth:{seed}:{case.case_id}",
        profile=profile,
        transfer_syntax=transfer_syntax,
    )


def _pick_vendor(choice: VendorChoice, rng: np.random.Generator) -> Vendor:
    if str(choice) == "mixed":
        return Vendor(str(rng.choice([v.value for v in Vendor])))
    return Vendor(choice)


def generate_study(
    case: Case,
    out_dir: Path,
    *,
    seed: int,
    index: int,
    vendor: VendorChoice = "mixed",
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
    mip_series: bool | None = None,
) -> GeneratedStudy:
    """Render one case and write it as a PET/CT scanner would route it.

    Parameters
    ----------
    case
        The latent draw (label, sites, lesions, body).
    out_dir
        The study's folder; one sub-folder per series.
    seed, index
        Cohort seed and the case's index in it: together they fix every pixel and UID.
    vendor
        ``siemens``, ``ge``, ``philips`` or ``mixed`` (drawn per case).
    transfer_syntax
        ``explicit``, ``implicit`` or ``rle``.
    mip_series
        Add a derived rotating-MIP series; ``None`` draws it (half of the studies).

    Returns
    -------
    GeneratedStudy
    """
    rng = _case_rng(seed, index)
    chosen = _pick_vendor(vendor, rng)
    meta = _study_meta(
        case,
        rng,
        seed=seed,
        vendor=chosen,
        transfer_syntax=TransferSyntax(transfer_syntax),
        profile_rng=rng,
    )
    profile = meta.profile
    grid = PetGrid(
        pixel_spacing_mm=profile.pixel_spacing_mm,
        matrix=profile.matrix,
        slice_spacing_mm=profile.slice_spacing_mm,
        fwhm_mm=profile.fwhm_mm,
        noise_level=float(rng.uniform(0.8, 1.2)),
    )
    pet: PetVolumes = render_pet(case, grid, rng)
    dz = pet.spacing_mm[0]
    z_top = pet.origin_lps_mm[2]
    z_bottom = z_top - (pet.suv.shape[0] - 1) * dz
    ct_hu, ct_origin = render_ct(
        case,
        pixel_spacing_mm=_CT_SPACING_MM,
        matrix=_CT_MATRIX,
        slice_spacing_mm=_CT_SLICE_MM,
        z_range_mm=(z_bottom, z_top),
    )
    with_mip = bool(rng.random() < 0.5) if mip_series is None else mip_series
    written = write_study(
        out_dir,
        meta,
        suv=pet.suv,
        nac=pet.nac,
        pet_origin_lps_mm=pet.origin_lps_mm,
        pet_spacing_mm=pet.spacing_mm,
        ct_hu=ct_hu,
        ct_origin_lps_mm=ct_origin,
        ct_spacing_mm=(_CT_SLICE_MM, _CT_SPACING_MM, _CT_SPACING_MM),
        mip_series=with_mip,
    )
    return GeneratedStudy(
        case=case,
        written=written,
        frontal_mip=pet.suv.max(axis=1),
        mip_spacing_mm=(pet.spacing_mm[0], pet.spacing_mm[2]),
        vendor=chosen.value,
    )


def iter_cohort(
    out: Path,
    cases: Sequence[Case],
    *,
    seed: int,
    vendor: VendorChoice = "mixed",
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
    mip_series: bool | None = None,
    jobs: int = 1,
) -> Iterator[GeneratedStudy]:
    """Write the cases, yielding each study, in case order, as soon as it is on disk.

    With ``jobs > 1`` the studies are rendered and written by that many worker processes;
    every study is the same as with one process (each depends only on seed and index).
    """
    work = partial(
        _generate_indexed,
        out=out,
        seed=seed,
        vendor=str(vendor),
        transfer_syntax=str(TransferSyntax(transfer_syntax).value),
        mip_series=mip_series,
    )
    if jobs <= 1 or len(cases) <= 1:
        yield from map(work, enumerate(cases))
        return
    # Ctrl-C reaches the whole process group: the workers leave it to this process, which
    # stops them (Pool.terminate on leaving the block) instead of each printing a traceback.
    with multiprocessing.get_context("fork").Pool(jobs, initializer=_ignore_sigint) as pool:
        yield from pool.imap(work, enumerate(cases))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _generate_indexed(
    item: tuple[int, Case],
    *,
    out: Path,
    seed: int,
    vendor: str,
    transfer_syntax: str,
    mip_series: bool | None,
) -> GeneratedStudy:
    index, case = item
    return generate_study(
        case,
        out / case.case_id,
        seed=seed,
        index=index,
        vendor=vendor,
        transfer_syntax=transfer_syntax,
        mip_series=mip_series,
    )


def write_labels_csv(path: Path, studies: Sequence[GeneratedStudy]) -> None:
    """Write ``labels.csv`` (columns :data:`LABELS_COLUMNS`)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABELS_COLUMNS)
        writer.writeheader()
        for study in studies:
            writer.writerow(study.labels_row())


def generate_cohort(
    out: Path,
    n: int,
    *,
    seed: int,
    vendor: VendorChoice = "mixed",
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
    mip_series: bool | None = None,
    jobs: int = 1,
    on_study: Callable[[GeneratedStudy], None] | None = None,
    phantom: int = DEFAULT_PHANTOM,
) -> CohortResult:
    """Draw ``n`` cases, write them under ``out`` and write ``out/labels.csv``.

    ``labels.csv`` always lists exactly the studies that are whole on disk: when writing
    stops early (Ctrl-C, a failing ``on_study``, a full disk) it is written with the
    studies finished so far before the exception goes on; a study that was being written
    then has a folder but no label.

    Parameters
    ----------
    out
        Output folder (created).
    n
        Number of studies; labels in the paper's ratio (62 lymphoma : 56 sarcoidosis).
    seed
        Cohort seed.
    vendor, transfer_syntax, mip_series
        See :func:`generate_study`.
    jobs
        Worker processes (see :func:`iter_cohort`).
    on_study
        Called with each study once it is on disk (progress, sending).
    phantom
        Phantom (cohort) version, 1 or 2 (:func:`~sarclym.model.synth.latent.draw_case`);
        :data:`~sarclym.model.synth.latent.DEFAULT_PHANTOM` (2) unless given.

    Returns
    -------
    CohortResult

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C; ``labels.csv`` lists the studies finished until then.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases = draw_cohort(n, seed, phantom=phantom)
    labels = out / "labels.csv"
    studies: list[GeneratedStudy] = []
    try:
        for study in iter_cohort(
            out,
            cases,
            seed=seed,
            vendor=vendor,
            transfer_syntax=transfer_syntax,
            mip_series=mip_series,
            jobs=jobs,
        ):
            studies.append(study)
            if on_study is not None:
                on_study(study)
    except BaseException:
        write_labels_csv(labels, studies)
        raise
    write_labels_csv(labels, studies)
    return CohortResult(studies=studies, labels_csv=labels, bayes_auc=bayes_auc(cases))
