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
from pydicom.tag import Tag

from sarclym.model.errors import SeriesRejected
from sarclym.model.imaging.mip import Mips, mips_for_volume
from sarclym.model.imaging.selection import (
    Selection,
    SelectionRules,
    Skipped,
    select_series,
    skipped_because,
)
from sarclym.model.imaging.suv import SuvConversion, suv_factor
from sarclym.model.imaging.volume import build_volume

__all__ = [
    "PreparedStudy",
    "ScanResult",
    "StudyFiles",
    "UnreadableFile",
    "prepare_study",
    "read_deferred",
    "scan_paths",
]


@dataclass(frozen=True)
class UnreadableFile:
    """A file that was passed over, and why."""

    path: Path
    reason: str


@dataclass
class StudyFiles:
    """The files of one study, grouped by series.

    Only paths are kept: headers are read again when the study is prepared, so that scanning
    a folder of hundreds of studies holds no more than one study's headers in memory.
    """

    study_instance_uid: str
    series: dict[str, list[Path]] = field(default_factory=dict)

    def headers(self) -> dict[str, list[Dataset]]:
        """SeriesInstanceUID -> datasets with deferred pixel data (see :func:`read_deferred`)."""
        return {uid: [read_deferred(p) for p in paths] for uid, paths in self.series.items()}

    def prepare(
        self,
        *,
        size: tuple[int, int],
        suv_window: tuple[float, float],
        rules: SelectionRules | None = None,
    ) -> PreparedStudy:
        """Read the headers, select the series and make its MIPs (:func:`prepare_study`).

        Each file is parsed once: pixel data is read from disk only for the chosen series.
        """
        return prepare_study(
            self.study_instance_uid,
            self.headers(),
            None,
            size=size,
            suv_window=suv_window,
            rules=rules,
        )


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan_paths` found."""

    studies: dict[str, StudyFiles]
    unreadable: list[UnreadableFile]


#: Values larger than this are read from disk only when used.
_DEFER_BYTES = 4096


def read_deferred(path: Path) -> Dataset:
    """A dataset whose large values (pixel data) stay on disk until first accessed.

    Selection reads only the headers; the chosen series' pixel data is then read through the
    same datasets, so no file is parsed twice (pydicom's ``defer_size``).
    """
    return dcmread(path, defer_size=_DEFER_BYTES)


_SCAN_TAGS = [Tag("StudyInstanceUID"), Tag("SeriesInstanceUID")]


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
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
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
        study.series.setdefault(str(series_uid), []).append(path)
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


def _transfer_syntax(datasets: Sequence[Dataset]) -> str:
    meta = getattr(datasets[0], "file_meta", None) if datasets else None
    uid = None if meta is None else meta.get("TransferSyntaxUID")
    return "transfer syntax unknown" if uid is None else f"transfer syntax {uid.name} ({uid})"


def prepare_study(
    study_instance_uid: str,
    headers: Mapping[str, Sequence[Dataset]],
    load: Mapping[str, Sequence[Path]] | None = None,
    *,
    size: tuple[int, int] = (256, 256),
    suv_window: tuple[float, float] = (0.0, 10.0),
    rules: SelectionRules | None = None,
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
        Network input size and SUV window, as for :func:`~sarclym.model.imaging.mip.make_mips`.
    rules
        Whole-body and population limits (:class:`~sarclym.model.imaging.selection.SelectionRules`).

    Returns
    -------
    PreparedStudy
        With ``mips`` ``None`` and readable reasons when no series qualifies, or when the
        chosen series fails while its pixels are read (the reason names what failed).
    """
    remaining = dict(headers)
    extra: list[Skipped] = []
    while True:
        selection = select_series(remaining, rules)
        chosen = selection.series_instance_uid
        if chosen is None:
            break
        try:
            # Headers were parsed (and checked) during selection: reuse that geometry and SUV
            # metadata; the full read only supplies the pixel data.
            series_headers = list(remaining[chosen])
            geometry = selection.geometry
            if geometry is None:  # select_series sets it whenever it chooses a series
                raise RuntimeError("selection chose a series without its geometry")
            if load is None:
                datasets: list[Dataset] = list(geometry.datasets)
            else:
                path_of = {id(h): p for h, p in zip(series_headers, load[chosen], strict=True)}
                datasets = [dcmread(path_of[id(h)]) for h in geometry.datasets]
            volume = build_volume(datasets, geometry=geometry)
            conversion = suv_factor(series_headers[0], series_headers)
            mips = mips_for_volume(volume, conversion, size=size, suv_window=suv_window)
        except SeriesRejected as exc:
            extra.append(skipped_because(chosen, exc))
            del remaining[chosen]
            continue
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            syntax = _transfer_syntax(remaining[chosen])
            extra.append(
                skipped_because(
                    chosen,
                    SeriesRejected(
                        f"The pixel data ({syntax}) could not be read: {type(exc).__name__}: {exc}",
                        attribute="PixelData",
                        also=("TransferSyntaxUID",),
                    ),
                )
            )
            del remaining[chosen]
            continue
        selection = Selection(chosen, selection.reason, [*extra, *selection.skipped])
        return PreparedStudy(study_instance_uid, selection, datasets, conversion, mips)
    selection = Selection(None, selection.reason, [*extra, *selection.skipped])
    return PreparedStudy(study_instance_uid, selection, [], None, None)
