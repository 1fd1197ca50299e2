"""Input drift: what the node is sent now, against what its model was trained on.

Per analysed series the worker records its input facts (:func:`input_facts_of`, table
``input_facts``): (0008,0070) *Manufacturer*, (0008,1090) *Manufacturer's Model Name*, the
reconstruction ((0054,1103) *Reconstruction Method*, else (0008,103E) *Series Description*),
the injected dose ((0018,1074) *Radionuclide Total Dose*, MBq), the uptake time (injection to
scan start, minutes, as the SUV conversion decays it: :mod:`sarclym.model.imaging.suv`),
(0010,1030) *Patient's Weight* (kg) and the SUVmax of the volume. Refusals are counted by study
from the series table (a study whose PET series are all finished and none was scored or kept
from scoring by the stop rule), since the worker judges each series alone and a study's NAC
series is skipped by design.

**Liver and blood-pool SUV are not available**: the imaging code keeps only the whole-body MIPs
and SUVmax, it segments no organ, and a value read off a MIP would not be a reference-region
SUV. They are left out rather than estimated.

The reference is the training cases' profile (:func:`profile_inputs`, stored by ``retrain`` in
the model card under ``input_profile``); for a version without one, the first
``monitoring.reference_results`` series it analysed (:func:`profile_facts`, stored once, and
said so on the dashboard). :func:`compare` reads the latest ``monitoring.drift_window`` series
against it: the share of scanner models and of reconstructions the reference never saw, the
shift of the median dose, uptake time and weight, and the share of refusals.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sarclym.node.store.feedback import InputFacts

__all__ = [
    "DriftReport",
    "compare",
    "input_facts_of",
    "profile_facts",
    "profile_inputs",
]

#: The numeric facts drift compares by their medians.
NUMERIC = ("injected_dose_mbq", "uptake_min", "weight_kg")


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _header_facts(ds: Any) -> dict[str, Any]:
    model = _text(ds, "ManufacturerModelName")
    return {
        "manufacturer": _text(ds, "Manufacturer") or None,
        "scanner_model": " ".join(filter(None, (_text(ds, "Manufacturer"), model))) or None,
        "reconstruction": _text(ds, "ReconstructionMethod")
        or _text(ds, "SeriesDescription")
        or None,
    }


def input_facts_of(ds: Any, conversion: Any = None, suv_max: float | None = None) -> dict[str, Any]:
    """The input facts of one analysed series.

    Parameters
    ----------
    ds
        Any instance of the series (pydicom Dataset; pixel data not needed).
    conversion
        Its :class:`~sarclym.model.imaging.suv.SuvConversion` when the series was converted
        (dose, decay time, weight as the SUV used them); None: read from the header alone.
    suv_max
        SUVmax of the volume, when computed.
    """
    facts = _header_facts(ds)
    if conversion is None:
        conversion = _conversion(ds)
    dose = getattr(conversion, "injected_dose_bq", None)
    decay = getattr(conversion, "decay_seconds", None)
    weight = getattr(conversion, "patient_weight_kg", None)
    facts["injected_dose_mbq"] = None if dose is None else round(float(dose) / 1e6, 1)
    facts["uptake_min"] = None if decay is None else round(float(decay) / 60.0, 1)
    facts["weight_kg"] = None if weight is None else round(float(weight), 1)
    facts["suv_max"] = None if suv_max is None else round(float(suv_max), 2)
    return facts


def _conversion(ds: Any) -> Any:
    """The SUV conversion of one header, or None when it has not what SUV needs."""
    from sarclym.model.errors import SarclymModelError
    from sarclym.model.imaging.suv import suv_factor

    try:
        return suv_factor(ds, [ds])
    except (SarclymModelError, ValueError, TypeError):  # no SUV facts: they stay None
        return None


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=20) if len(ordered) > 1 else [ordered[0]] * 19
    return {
        "median": round(statistics.median(ordered), 2),
        "p05": round(q[0], 2),
        "p95": round(q[-1], 2),
        "n": len(ordered),
    }


def _profile(facts: Sequence[Mapping[str, Any]], source: str) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "source": source,
        "n": len(facts),
        "scanner_models": dict(Counter(f.get("scanner_model") or "unknown" for f in facts)),
        "reconstructions": dict(Counter(f.get("reconstruction") or "unknown" for f in facts)),
    }
    for name in NUMERIC:
        profile[name] = _summary([float(f[name]) for f in facts if f.get(name) is not None])
    return profile


def profile_inputs(headers: Iterable[Any]) -> dict[str, Any]:
    """The input profile of a set of studies (one header each): the reference of drift.

    ``retrain`` stores it in the model card under ``input_profile``. Keys: ``source``
    (``"training cases"``), ``n``, ``scanner_models`` and ``reconstructions`` (counts),
    ``injected_dose_mbq``, ``uptake_min``, ``weight_kg`` (median, p05, p95, n; None without
    values). JSON-serialisable; no identifier of any study.
    """
    return _profile([input_facts_of(ds) for ds in headers], "training cases")


def profile_facts(facts: Sequence[InputFacts], source: str) -> dict[str, Any]:
    """The profile (as :func:`profile_inputs`) of recorded input facts of scored series."""
    return _profile([f.facts for f in facts if f.outcome == "scored"], source)


@dataclass(frozen=True)
class DriftReport:
    """The latest window of analysed series against the reference profile."""

    reference_source: str  # "training cases", "first 50 results of version X"
    reference_n: int
    window_n: int  # series in the window (refusals included)
    refusal_share: float | None  # of the latest PET studies: none of its series analysed
    unseen_scanner_share: float | None  # of scored series whose scanner model the ref lacks
    unseen_reconstruction_share: float | None
    shifts: dict[str, dict[str, float | None]]  # fact -> reference, recent median, difference

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


def compare(
    reference: Mapping[str, Any],
    window: Sequence[InputFacts],
    *,
    studies: tuple[int, int] = (0, 0),
) -> DriftReport:
    """The drift of ``window`` (latest analysed series, oldest first) against ``reference``;
    ``studies``: (latest PET studies finished, of which refused) for the refusal share."""
    scored = [f.facts for f in window if f.outcome == "scored"]
    analysed, refused = studies

    def unseen(key: str, known: Mapping[str, Any]) -> float | None:
        if not scored:
            return None
        return round(
            sum(1 for f in scored if (f.get(key) or "unknown") not in known) / len(scored), 3
        )

    shifts: dict[str, dict[str, float | None]] = {}
    for name in NUMERIC:
        ref = (reference.get(name) or {}).get("median")
        values = [float(f[name]) for f in scored if f.get(name) is not None]
        now = round(statistics.median(values), 2) if values else None
        diff = None if ref is None or now is None else round(now - float(ref), 2)
        shifts[name] = {"reference": ref, "recent": now, "shift": diff}
    return DriftReport(
        reference_source=str(reference.get("source", "unknown")),
        reference_n=int(reference.get("n", 0)),
        window_n=len(window),
        refusal_share=round(refused / analysed, 3) if analysed else None,
        unseen_scanner_share=unseen("scanner_model", reference.get("scanner_models") or {}),
        unseen_reconstruction_share=unseen(
            "reconstruction", reference.get("reconstructions") or {}
        ),
        shifts=shifts,
    )
