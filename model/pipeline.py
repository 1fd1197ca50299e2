"""From files on disk to prepared studies: group by study and series, select, volume, SUV, MIPs.

Headers are read first (without pixel data) for grouping and selection; only the chosen series is
read in full. Used by ``sarclym-node infer``, ``retrain`` (MIP cache) and the node's worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from sarclym.model.errors import SeriesRejected
from sarclym.model.mip import Mips, mips_for_volume
from sarclym.model.selection import Selection, Skipped, select_series
from sarclym.model.suv import SuvConversion, suv_factor
from sarclym.model.volume import build_volume

__all__ = [
    "PreparedStudy",
    "ScanResult",
    "StudyFiles",
    "UnreadableFile",
    "prepare_study",
    "scan_paths",
]


@dataclass(frozen=True)
class UnreadableFile:
    """A file that was passed over, and why."""

    path: Path
    reason: str


@dataclass
class StudyFiles:
    """The files of one study, grouped by series, with their headers (no pixel data)."""

    study_instance_uid: str
    series: dict[str, list[tuple[Path, Dataset]]] = field(default_factory=dict)

    def headers(self) -> dict[str, list[Dataset]]:
        """SeriesInstanceUID -> header datasets, for ``select_series``."""
        return {uid: [ds for _, ds in items] for uid, items in self.series.items()}


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan_paths` found."""

    studies: dict[str, StudyFiles]
    unreadable: list[UnreadableFile]


def _iter_files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def scan_paths(paths: Iterable[str | Path]) -> ScanResult:
    """Read the headers of every DICOM file under ``paths`` and group them.

    Parameters
    ----------
    paths
        Files and folders (searched recursively). Files that are not DICOM, or lack
        (0020,000D) *Study Instance UID* / (0020,000E) *Series Instance UID*, are reported in
        ``unreadable`` and otherwise ignored (a folder may hold a labels.csv or a DICOMDIR).

    Returns
    -------
    ScanResult

    Raises
    ------
    FileNotFoundError
        A path given does not exist.
    """
    given = [Path(p) for p in paths]
    for path in given:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    studies: dict[str, StudyFiles] = {}
    unreadable: list[UnreadableFile] = []
    for path in _iter_files(given):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            unreadable.append(UnreadableFile(path, f"not a readable DICOM file ({exc})"))
            continue
        study_uid = ds.get("StudyInstanceUID")
        series_uid = ds.get("SeriesInstanceUID")
        if not study_uid or not series_uid:
            unreadable.append(
                UnreadableFile(path, "no StudyInstanceUID (0020,000D) or SeriesInstanceUID")
            )
            continue
        study = studies.setdefault(str(study_uid), StudyFiles(str(study_uid)))
        study.series.setdefault(str(series_uid), []).append((path, ds))
    return ScanResult(studies=studies, unreadable=unreadable)


@dataclass(frozen=True)
class PreparedStudy:
    """A study after selection; ``mips`` is ``None`` when no series qualified.

    Attributes
    ----------
    study_instance_uid : str
    selection : Selection
        The chosen series (or none) and every skipped series with its reason.
    datasets : list of Dataset
        The analysed series' instances, in full (empty when none qualified).
    conversion : SuvConversion or None
        How values became SUVbw.
    mips : Mips or None
        Frontal and lateral SUV MIPs and the network inputs.
    """

    study_instance_uid: str
    selection: Selection
    datasets: list[Dataset]
    conversion: SuvConversion | None
    mips: Mips | None

    @property
    def series_instance_uid(self) -> str | None:
        """The analysed series, or ``None``."""
        return self.selection.series_instance_uid


def prepare_study(
    study_instance_uid: str,
    headers: Mapping[str, Sequence[Dataset]],
    load: Mapping[str, Sequence[Path]] | None = None,
    *,
    size: tuple[int, int] = (256, 256),
    suv_window: tuple[float, float] = (0.0, 10.0),
) -> PreparedStudy:
    """Select the series to analyse and make its SUV MIPs.

    Parameters
    ----------
    study_instance_uid
        (0020,000D) of the study.
    headers
        SeriesInstanceUID -> datasets. They may be headers only when ``load`` gives the files.
    load
        SeriesInstanceUID -> file paths, to read the chosen series in full. ``None``: the
        datasets in ``headers`` already hold their pixel data.
    size, suv_window
        Network input size and SUV window, as for :func:`~sarclym.model.mip.make_mips`.

    Returns
    -------
    PreparedStudy
        With ``mips`` ``None`` and readable reasons when no series qualifies, or when the
        chosen series fails while its pixels are read (the reason names what failed).
    """
    remaining = dict(headers)
    extra: list[Skipped] = []
    while True:
        selection = select_series(remaining)
        chosen = selection.series_instance_uid
        if chosen is None:
            break
        try:
            datasets: list[Dataset] = (
                [dcmread(p) for p in load[chosen]] if load is not None else list(headers[chosen])
            )
            volume = build_volume(datasets)
            conversion = suv_factor(datasets[0], datasets)
            mips = mips_for_volume(volume, conversion, size=size, suv_window=suv_window)
        except SeriesRejected as exc:
            extra.append(Skipped(chosen, f"skipped: {exc.reason}"))
            del remaining[chosen]
            continue
        except (InvalidDicomError, OSError, ValueError) as exc:
            extra.append(Skipped(chosen, f"skipped: pixel data not readable ({exc})"))
            del remaining[chosen]
            continue
        selection = Selection(chosen, selection.reason, [*extra, *selection.skipped])
        return PreparedStudy(study_instance_uid, selection, datasets, conversion, mips)
    selection = Selection(None, selection.reason, [*extra, *selection.skipped])
    return PreparedStudy(study_instance_uid, selection, [], None, None)
