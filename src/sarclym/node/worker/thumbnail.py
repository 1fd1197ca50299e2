"""The dashboard's PNGs of a result's Secondary Capture, written by the worker.

Two files per result, kept under ``<storage.data_dir>/thumbnails/`` after the outbox is pruned
and served by the dashboard (:mod:`sarclym.node.http.dashboard`) behind its login:

- ``<SeriesInstanceUID>.png``: the thumbnail, :data:`THUMBNAIL_SIZE` pixels on its long side,
  twice the largest size a page shows it at, so that it stays sharp on high-density screens
  and is never upscaled;
- ``<SeriesInstanceUID>.sc.png``: the SC's pixels at full resolution, lossless, where the
  burned-in text can be read (:func:`full_size_path`).

A PNG holds pixels only: no DICOM attribute, no patient data.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from pydicom.dataset import Dataset

from sarclym.node.store.durable import write_durable

__all__ = ["THUMBNAIL_SIZE", "full_size_path", "sc_png", "write_thumbnail"]

#: Long side of a thumbnail, in pixels (pages show it at half that at most).
THUMBNAIL_SIZE = 512


def full_size_path(thumbnail: Path) -> Path:
    """The full-resolution PNG beside a thumbnail: ``<uid>.png`` -> ``<uid>.sc.png``."""
    return thumbnail.with_suffix(".sc.png")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sc_png(sc: Dataset) -> bytes:
    """The pixels of a Secondary Capture as a PNG, at full resolution and lossless.

    Parameters
    ----------
    sc
        The Secondary Capture (RGB or MONOCHROME2, 8 bits).

    Returns
    -------
    bytes
        The PNG file.
    """
    return _png(Image.fromarray(sc.pixel_array))


def write_thumbnail(sc: Dataset, path: Path, size: int = THUMBNAIL_SIZE) -> None:
    """Write the thumbnail of a Secondary Capture and its full-resolution PNG, durably.

    Parameters
    ----------
    sc
        The Secondary Capture (RGB or MONOCHROME2, 8 bits).
    path
        The thumbnail's PNG file; its folder is created. The full-resolution PNG goes to
        :func:`full_size_path` of it.
    size
        Long side of the thumbnail in pixels (a smaller SC is kept at its size).

    Raises
    ------
    OSError
        A file cannot be written (disk full...).
    """
    image = Image.fromarray(sc.pixel_array)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durable(full_size_path(path), [_png(image)])
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    write_durable(path, [_png(small)])
