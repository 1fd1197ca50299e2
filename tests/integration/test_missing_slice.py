"""The real whole-body series with one slice without pixel data, through the node's worker.

The listener refuses such an instance on the wire now (0xC210: the data set is not whole), so
it reaches the worker only from a spool written before that check, or a file put there; and
``infer`` reads folders as they are. The series completes (every ImageIndex is there), and the
worker marks it SKIPPED with a reason that names (7FE0,0010) PixelData and the instance, never
FAILED with a traceback: a whole-body MIP without that slice is a different image
(docs/pet-input.md).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread

from sarclym.node.config import load_config
from sarclym.node.service import Node
from sarclym.node.store.records import SeriesStatus
from sarclym.node.store.state import ReceivedInstance
from tests.phi import REAL_SERIES

pytestmark = pytest.mark.integration


def test_a_slice_without_pixel_data_skips_the_real_series_naming_it(
    tmp_path: Path, json_log: io.StringIO
) -> None:
    config = load_config(
        environ={
            "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
            "SARCLYM__STORAGE__MIN_FREE_MB": "0",
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            "SARCLYM__SERVICE__HTTP_PORT": "0",
        }
    )
    node = Node(config)
    completed: list[str] = []
    node.listener.on_series_complete = completed.append
    broken = ""
    try:
        for n, path in enumerate(sorted(REAL_SERIES.glob("*.dcm"))):
            if n != 100:
                result = node.listener.ingest_part10(path.read_bytes(), source="TEST")
                assert result.status == 0, result.reason
                continue
            ds = dcmread(path)
            del ds.PixelData
            broken = str(ds.SOPInstanceUID)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            # Into the spool as an instance stored before the listener checked pixel data.
            spooled = node.listener.spool.write(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), broken, [buffer.getvalue()]
            )
            outcome = node.state.record_instance(
                ReceivedInstance(
                    sop_instance_uid=broken,
                    series_uid=str(ds.SeriesInstanceUID),
                    study_uid=str(ds.StudyInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                    path=str(spooled.relative_to(config.storage.data_dir)),
                    size=spooled.stat().st_size,
                    modality="PT",
                    image_index=int(ds.ImageIndex),
                    expected_count=int(ds.NumberOfSlices),
                )
            )
            if outcome.series_complete_now:
                completed.append(outcome.series_uid)
        (series_uid,) = completed  # every ImageIndex arrived: complete
        assert node.state.mark_series(
            series_uid, SeriesStatus.QUEUED, expected_status=SeriesStatus.COMPLETE
        )
        assert node.processor.process(series_uid) is SeriesStatus.SKIPPED
        record = node.state.series(series_uid)
    finally:
        node.ledger.close()
        node.state.close()
    assert record is not None
    assert record.status_reason is not None
    assert record.status_reason.startswith(
        f"skipped: PixelData (7FE0,0010) is missing in instance {broken} (slice "
    )
    assert "of 267 along the slice normal" in record.status_reason
    assert "Traceback" not in json_log.getvalue()
    assert "series processing failed" not in json_log.getvalue()
