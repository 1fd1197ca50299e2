"""Labels for retraining: a CSV keyed by StudyInstanceUID, checked before any training starts.

The CSV needs the columns ``study_instance_uid`` and ``label`` (``sarcoidosis`` or
``lymphoma``); other columns are ignored, so a ``labels.csv`` written by ``sarclym-node synth``
works as is. Its separator is found on its header line: the first of ``,``, ``;`` and tab
(:data:`SEPARATORS`) that splits that line into fields naming both columns. A spreadsheet's
"CSV" export uses ``;`` where ``,`` is the decimal comma. Cells may hold the other separators
(synth's ``sites`` column is a ``;`` list inside a ``,`` file). The header is matched rather
than guessed from character counts (:class:`csv.Sniffer`), so that a file is read the same
way whatever its data rows hold.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from sarclym.model.classes import CLASSES
from sarclym.model.errors import LabelsError

__all__ = ["REQUIRED_COLUMNS", "SEPARATORS", "check_labels", "read_label_rows", "read_labels"]

#: Columns every labels file has (others are ignored).
REQUIRED_COLUMNS = ("study_instance_uid", "label")
#: Separators a labels file may use, in the order they are tried on its header line.
SEPARATORS = (",", ";", "\t")


def _separator(path: Path, header: str) -> tuple[str, list[str]]:
    """The separator whose fields on the header line name every required column."""
    for sep in SEPARATORS:
        columns = [c.strip() for c in next(csv.reader([header], delimiter=sep), [])]
        if set(REQUIRED_COLUMNS) <= set(columns):
            return sep, columns
    found = header.strip()
    raise LabelsError(
        f"{path}:1: the header {found!r} does not name the columns "
        f"{' and '.join(REQUIRED_COLUMNS)}; expected a header line with at least "
        f"{','.join(REQUIRED_COLUMNS)}, separated by ',', ';' or tab"
    )


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, column -> value) of each data row; a missing cell reads as ``""``."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = fh.readline()
            sep, columns = _separator(path, header)
            reader = csv.reader(fh, delimiter=sep)
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # a blank line
                row = dict(zip(columns, values, strict=False))
                yield reader.line_num + 1, {c: row.get(c, "") for c in columns}
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read the labels file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise LabelsError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the labels file as UTF-8 CSV"
        ) from exc


def read_label_rows(path: Path) -> list[dict[str, str]]:
    """Every data row of a labels file, as column name -> value (all columns, unchecked).

    Raises
    ------
    LabelsError
        The file is unreadable, not UTF-8, or its header line does not name the required
        columns with one of :data:`SEPARATORS`.
    """
    return [row for _, row in _rows(path)]


def read_labels(path: Path) -> dict[str, str]:
    """Read ``study_instance_uid -> label`` from a CSV file.

    Raises
    ------
    LabelsError
        The file is unreadable or not UTF-8, its header does not name the columns (with any
        of :data:`SEPARATORS`), a label is unknown (with its line number), a UID is empty, or
        one study is labelled twice, differently.
    """
    labels: dict[str, str] = {}
    for line, row in _rows(path):
        uid = row["study_instance_uid"].strip()
        label = row["label"].strip().lower()
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
