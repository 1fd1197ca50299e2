"""Labels for retraining: a CSV keyed by StudyInstanceUID, checked before any training starts.

The CSV needs the columns ``study_instance_uid`` and ``label`` (``sarcoidosis`` or
``lymphoma``); other columns are ignored, so a ``labels.csv`` written by ``sarclym-node synth``
works as is.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Mapping
from pathlib import Path

from sarclym.model.classes import CLASSES
from sarclym.model.errors import LabelsError

__all__ = ["check_labels", "read_labels"]


def read_labels(path: Path) -> dict[str, str]:
    """Read ``study_instance_uid -> label`` from a CSV file.

    Raises
    ------
    LabelsError
        The file is unreadable, lacks a column, has an unknown label (with its line number), an
        empty UID, or one study twice with different labels.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            missing = {"study_instance_uid", "label"} - columns
            if missing:
                raise LabelsError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                    "expected at least study_instance_uid,label"
                )
            labels: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                uid = (row["study_instance_uid"] or "").strip()
                label = (row["label"] or "").strip().lower()
                if not uid:
                    raise LabelsError(f"{path}:{line}: empty study_instance_uid")
                if label not in CLASSES:
                    raise LabelsError(
                        f"{path}:{line}: unknown label {row['label']!r}; "
                        f"expected one of {', '.join(CLASSES)}"
                    )
                if labels.get(uid, label) != label:
                    raise LabelsError(f"{path}:{line}: study {uid} labelled twice, differently")
                labels[uid] = label
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read the labels file ({exc.strerror})") from exc
    if not labels:
        raise LabelsError(f"{path}: no labelled study")
    return labels


def check_labels(labels: Mapping[str, str], found: Collection[str], *, folds: int) -> None:
    """Check labels against the studies found, before any training.

    Parameters
    ----------
    labels
        ``study_instance_uid -> label`` (from :func:`read_labels`).
    found
        StudyInstanceUIDs present in the data folder.
    folds
        Number of cross-validation folds.

    Raises
    ------
    LabelsError
        A labelled study is not in the data; one class only; fewer cases of a class than folds.
    """
    unknown = sorted(set(labels) - set(found))
    if unknown:
        shown = ", ".join(unknown[:3]) + (
            f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        )
        raise LabelsError(f"{len(unknown)} labelled stud(ies) not found in the data: {shown}")
    counts = {c: sum(1 for v in labels.values() if v == c) for c in CLASSES}
    if min(counts.values()) == 0:
        present = next(c for c, n in counts.items() if n)
        raise LabelsError(f"only one class is labelled ({present}): both classes are needed")
    if folds < 2:
        raise LabelsError(f"--folds {folds}: at least 2 folds are needed")
    small = {c: n for c, n in counts.items() if n < folds}
    if small:
        detail = ", ".join(f"{n} {c}" for c, n in small.items())
        raise LabelsError(f"too few cases for {folds}-fold cross-validation: {detail}")
