"""MIP cache for training: each labelled study's network input, computed once.

Reading and projecting a whole-body PET series costs far more than a training epoch, so
``retrain`` computes every study's frontal/lateral network input once and keeps it in a cache
folder (one ``.npz`` per study, keyed by the analysed series, its instance count, the input size
and the SUV window). Re-running ``retrain`` with other settings reuses it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sarclym.model.classes import CLASSES
from sarclym.model.imaging.prepare import StudyFiles
from sarclym.model.imaging.selection import DEFAULT_RULES, SelectionRules

__all__ = ["TrainingSet", "build_training_set", "cache_key"]

_CACHE_VERSION = "1"


@dataclass(frozen=True)
class TrainingSet:
    """Network inputs and labels of the usable labelled studies.

    Attributes
    ----------
    x : numpy.ndarray
        float32 ``(N, 2, H, W)``: frontal and lateral network inputs.
    y : numpy.ndarray
        int64 ``(N,)``: 0 sarcoidosis, 1 lymphoma.
    study_instance_uids : list of str
    skipped : dict of str to str
        Labelled studies with no series to analyse, and why.
    """

    x: np.ndarray
    y: np.ndarray
    study_instance_uids: list[str]
    skipped: dict[str, str]


def cache_key(
    series_uid: str,
    n_instances: int,
    size: tuple[int, int],
    window: tuple[float, float],
    rules: SelectionRules = DEFAULT_RULES,
) -> str:
    """File name (without folder) of a study's cached input.

    The selection rules are part of the key: a study cached under looser rules is selected
    again, and refused, under stricter ones.
    """
    text = f"{_CACHE_VERSION}|{series_uid}|{n_instances}|{size}|{window}"
    if rules != DEFAULT_RULES:
        text += f"|{rules.min_axial_extent_mm}|{rules.min_patient_age_years}"
    return hashlib.sha256(text.encode()).hexdigest()[:32] + ".npz"


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _study_input(
    study: StudyFiles,
    cache_dir: Path,
    size: tuple[int, int],
    window: tuple[float, float],
    rules: SelectionRules,
) -> tuple[np.ndarray | None, str]:
    # Fast path: a cached input for any series of this study (keyed by its instance count).
    for uid, paths in study.series.items():
        cached = cache_dir / cache_key(uid, len(paths), size, window, rules)
        if cached.exists():
            with np.load(cached) as data:
                return data["x"].astype(np.float32), uid
    prepared = study.prepare(size=size, suv_window=window, rules=rules)
    if prepared.mips is None or prepared.series_instance_uid is None:
        reasons = "; ".join(s.reason for s in prepared.selection.skipped)
        return None, f"no series to analyse ({reasons})"
    x = np.stack([prepared.mips.frontal_net, prepared.mips.lateral_net]).astype(np.float32)
    uid = prepared.series_instance_uid
    _save_atomic(cache_dir / cache_key(uid, len(study.series[uid]), size, window, rules), x=x)
    return x, uid


def build_training_set(
    studies: Mapping[str, StudyFiles],
    labels: Mapping[str, str],
    cache_dir: Path,
    *,
    size: tuple[int, int],
    window: tuple[float, float],
    progress: Callable[[int, int], None] | None = None,
    rules: SelectionRules = DEFAULT_RULES,
) -> TrainingSet:
    """Compute (or read from the cache) the network input of every labelled study.

    Parameters
    ----------
    studies
        From :func:`~sarclym.model.imaging.prepare.scan_paths`.
    labels
        ``study_instance_uid -> label``, already checked against ``studies``.
    cache_dir
        Folder for the per-study ``.npz`` files (created).
    size, window
        Network input size and SUV window of the model being trained.
    progress
        Called with (done, total) after each study.
    rules
        Whole-body and population limits, as for the node (a refused study is excluded).

    Returns
    -------
    TrainingSet
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    uids: list[str] = []
    skipped: dict[str, str] = {}
    ordered = sorted(labels)
    for done, study_uid in enumerate(ordered, start=1):
        x, why = _study_input(studies[study_uid], cache_dir, size, window, rules)
        if x is None:
            skipped[study_uid] = why
        else:
            xs.append(x)
            ys.append(CLASSES.index(labels[study_uid]))
            uids.append(study_uid)
        if progress is not None:
            progress(done, len(ordered))
    h, w = size
    x_all = np.stack(xs) if xs else np.zeros((0, 2, h, w), np.float32)
    return TrainingSet(x_all, np.asarray(ys, dtype=np.int64), uids, skipped)
