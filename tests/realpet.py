"""Where the vendored real PET scans lie (``tests/data/realpet/README.md``: sources, licences)."""

from __future__ import annotations

from pathlib import Path

#: The vendored real scans.
REALPET = Path(__file__).resolve().parent / "data" / "realpet"
#: TCIA Soft-tissue-Sarcoma STS_001, GE Discovery ST: the whole study folder (PET and CT).
WHOLEBODY_STUDY = REALPET / "tcia-sts-001-wholebody-fdg"
#: Its whole-body FDG PET series.
WHOLEBODY = WHOLEBODY_STUDY / "STS_001" / "FDG_PET"
#: The PET series' image files.
WHOLEBODY_IMAGES = WHOLEBODY / "image"
