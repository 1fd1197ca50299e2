"""state.db keeps each slice's contribution with its instance row (store/partials.py).

Two connections stand for two listener processes sharing one state.db (or one process before
and after a restart): their rows merge; the same SOP with other bytes marks the series as
disagreeing; the rows stand for the series only when they match its recorded instances.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sarclym.node.store.partials import (
    discard_partials,
    load_partials,
    record_instance_with_partial,
)
from sarclym.node.store.records import ReceivedInstance
from sarclym.node.store.state import StateDB
from tests.pg import StateBackend

SERIES = "1.2.3.4"


def _instance(k: int, *, size: int = 1000) -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=f"1.2.3.4.{k}",
        series_uid=SERIES,
        study_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.128",
        transfer_syntax="1.2.840.10008.1.2.1",
        path=f"spool/{k}.dcm",
        size=size,
        modality="PT",
        image_index=k,
        expected_count=4,
        calling_ae="SCANNER",
    )


def test_two_processes_merge_and_the_last_slice_completes(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    with state_backend.open(tmp_path) as one, state_backend.open(tmp_path) as two:
        outcomes = [
            record_instance_with_partial(
                (one, two)[k % 2], _instance(k), contribution=b"c%d" % k, header=b"h%d" % k
            )
            for k in (1, 2, 3, 4)
        ]
        assert [o.series_complete_now for o in outcomes] == [False, False, False, True]
        rows = load_partials(one, SERIES)
        assert rows.mismatch is None
        assert rows.header == b"h1"  # the first instance's header stands
        assert rows.slices == {f"1.2.3.4.{k}": b"c%d" % k for k in (1, 2, 3, 4)}
        # A resend with the same bytes changes nothing; with others, the series disagrees.
        record_instance_with_partial(two, _instance(2), contribution=b"c2", header=None)
        assert load_partials(one, SERIES).mismatch is None
        record_instance_with_partial(two, _instance(2), contribution=b"X", header=None)
        assert load_partials(one, SERIES).mismatch == (
            "instance 1.2.3.4.2 was received again with other content"
        )
        assert discard_partials(one, SERIES) == 4
        assert load_partials(one, SERIES).mismatch == "no accumulated state"


def test_rows_that_do_not_match_the_instances_are_not_used(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    with state_backend.open(tmp_path) as state:
        record_instance_with_partial(state, _instance(1), contribution=b"c1", header=b"h")
        state.record_instance(_instance(2))  # e.g. re-indexed from the spool after a power cut
        assert load_partials(state, SERIES).mismatch == (
            "1 of 2 instances have no accumulated contribution"
        )


@pytest.mark.parametrize("header", [None, b"h"])
def test_no_series_header_is_a_mismatch(
    tmp_path: Path, header: bytes | None, state_backend: StateBackend
) -> None:
    with state_backend.open(tmp_path) as state:
        record_instance_with_partial(state, _instance(1), contribution=b"c1", header=header)
        expected = None if header else "no series header accumulated"
        assert load_partials(state, SERIES).mismatch == expected


@pytest.mark.parametrize("accumulate", [True, False])
def test_listener_accumulates_only_when_configured(tmp_path: Path, accumulate: bool) -> None:
    """listener.accumulate_projections: false leaves the C-STORE path as before issue 16 (no
    contribution computed; the worker reads the files)."""
    from pydicom import dcmread

    from sarclym.node.config import Config
    from sarclym.node.dicom.listener import Listener
    from sarclym.node.dicom.status import StoreStatus
    from sarclym.node.store.partials import load_partials

    real = Path(__file__).resolve().parents[1] / "data" / "realpet" / "tcia-sts-001-wholebody-fdg"
    path = sorted((real / "STS_001" / "FDG_PET" / "image").glob("*.dcm"))[0]
    config = Config.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "listener": {"accumulate_projections": accumulate},
        }
    )
    with StateDB.in_data_dir(config.storage.data_dir) as state:
        listener = Listener(config, state)
        ingested = listener.ingest_part10(path.read_bytes(), source="test")
        assert ingested.status is StoreStatus.SUCCESS
        series = str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        assert len(load_partials(state, series).slices) == (1 if accumulate else 0)
