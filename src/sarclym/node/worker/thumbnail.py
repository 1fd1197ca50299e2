"""The dashboard's PNG of a result's Secondary Capture, written by the worker.

Kept under ``<storage.data_dir>/thumbnails/<SeriesInstanceUID>.png`` after the outbox is pruned;
the dashboard (:mod:`sarclym.node.http.dashboard`) serves it.
"""

from __future__ import annotations

import io
from pathlib import Path

from pydicom.dataset import Dataset

from sarclym.node.store.durable import write_durable

__all__ = ["THUMBNAIL_SIZE", "write_thumbnail"]

#: Long side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256


def write_thumbnail(sc: Dataset, path: Path, size: int = THUMBNAIL_SIZE) -> None:
    """Write a PNG of a Secondary Capture, ``size`` pixels on its long side, durably.

    Parameters
    ----------
    sc
        The Secondary Capture (RGB or MONOCHROME2, 8 bits).
    path
        The PNG file; its folder is created.
    size
        Long side in pixels.

    Raises
    ------
    OSError
        The file cannot be written (disk full...).
    """
    from PIL import Image

    image = Image.fromarray(sc.pixel_array)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durable(path, [buffer.getvalue()])
