"""The listener decides on a series' first instance whether it can be analysed (issue 16).

Real peers (DCMTK storescu, pynetdicom) on 127.0.0.1: a CT, NAC or derived MIP series is SKIPPED
the moment its first C-STORE is answered, with the reason the selection at completion would give,
is never queued nor completed by the quiet timer, and (``listener.keep_unanalysed`` false, the
default) leaves nothing in the spool; the AC series and the real GE series are analysed as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from sarclym.node.config import Config
from sarclym.node.dicom.listener import Listener, StoreStatus
from sarclym.node.store.audit import audit_events
from sarclym.node.store.state import ReceivedInstance, SeriesStatus, StateDB
from tests.conftest import free_port
from tests.integration.test_listener import (
    Node,
    associate,
    series_uid,
    start_node,  # noqa: F401 (fixture)
    store_all,
    storescu,
    study,  # noqa: F401 (fixture)
)

pytestmark = pytest.mark.integration

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
REALPET = Path(__file__).resolve().parents[1] / "data" / "realpet"


def _skipped_event(node: Node, uid: str) -> dict[str, object]:
    events = [e for e in audit_events(node.state, series_uid=uid) if e.event == "skipped"]
    assert len(events) == 1
    return events[0].detail


def _partial_rows(state: StateDB, uid: str) -> int:
    return int(
        state.query("SELECT COUNT(*) FROM partial_slices WHERE series_uid = ?", (uid,))[0][0]
    )


def test_ct_is_skipped_by_its_first_c_store(
    start_node: Callable[..., Node],  # noqa: F811
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    node = start_node()
    ct = series_uid(study["CT"][0])
    assoc = associate(node.port, sop_classes=(CT_SOP,))
    try:
        assert store_all(assoc, [dcmread(study["CT"][0])]) == [int(StoreStatus.SUCCESS)]
        # Right after the first response, before any quiet time: SKIPPED, with the reason.
        record = node.state.series(ct)
        assert record is not None
        assert record.status is SeriesStatus.SKIPPED
        assert record.status_reason == "skipped: Modality (0008,0060) is CT, not PT."
        detail = _skipped_event(node, ct)
        assert detail["decided"] == "first instance"
        assert detail["attributes"] == ["Modality"]
        assert detail["kept"] is False
        assert node.spool_files() == []
        assert store_all(assoc, [dcmread(p) for p in study["CT"][1:4]]) == [0, 0, 0]
    finally:
        assoc.release()
    record = node.state.series(ct)
    assert record is not None
    assert (record.status, record.instance_count) == (SeriesStatus.SKIPPED, 4)
    assert node.state.quiet_series(0.0, include_expected=True) == []
    assert node.spool_files() == []
    assert node.completed == []


def test_whole_study_only_the_ac_series_is_spooled_and_completed(
    start_node: Callable[..., Node],  # noqa: F811
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    node = start_node()
    order = [*study["CT"], *study["PT_NAC"], *study["PT_AC"], *study["PT_MIP"]]
    proc = storescu(node.port, order)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("Received Store Response (Success)") == len(order)
    assert node.instance_count() == len(order)
    ac = series_uid(study["PT_AC"][0])
    assert len(node.spool_files()) == len(study["PT_AC"])
    assert node.completions(ac) == [len(study["CT"]) + len(study["PT_NAC"]) + len(study["PT_AC"])]
    assert [uid for uid, _ in node.completed] == [ac]
    for role, attribute in (
        ("CT", "Modality"),
        ("PT_NAC", "CorrectedImage"),
        ("PT_MIP", "ImageType"),
    ):
        uid = series_uid(study[role][0])
        record = node.state.series(uid)
        assert record is not None
        assert record.status is SeriesStatus.SKIPPED, role
        assert record.instance_count == len(study[role])
        detail = _skipped_event(node, uid)
        assert attribute in detail["attributes"], (role, detail)
        assert _partial_rows(node.state, uid) == 0, role  # NAC: no contribution computed
        assert all(i.path == "" for i in node.state.series_instances(uid))
    assert _partial_rows(node.state, ac) == len(study["PT_AC"])
    assert node.state.quiet_series(0.0, include_expected=True) == []


def test_keep_unanalysed_spools_them_and_still_skips_at_once(
    start_node: Callable[..., Node],  # noqa: F811
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    node = start_node(keep_unanalysed=True)
    order = [*study["CT"], *study["PT_NAC"]]
    proc = storescu(node.port, order)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(node.spool_files()) == len(order)
    for role in ("CT", "PT_NAC"):
        uid = series_uid(study[role][0])
        record = node.state.series(uid)
        assert record is not None
        assert record.status is SeriesStatus.SKIPPED
        assert _skipped_event(node, uid)["kept"] is True
        assert _partial_rows(node.state, uid) == 0
    assert node.completed == []


def test_with_the_feature_off_ct_waits_for_completion_as_before(
    start_node: Callable[..., Node],  # noqa: F811
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    node = start_node(decide_at_first_instance=False)
    proc = storescu(node.port, study["CT"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ct = series_uid(study["CT"][0])
    record = node.state.series(ct)
    assert record is not None
    assert record.status is SeriesStatus.RECEIVING
    assert len(node.spool_files()) == len(study["CT"])
    assert [s.series_uid for s in node.state.quiet_series(0.0)] == [ct]


def test_a_series_opened_before_the_feature_keeps_todays_path(
    start_node: Callable[..., Node],  # noqa: F811
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    node = start_node()
    ct = series_uid(study["CT"][0])
    first = dcmread(study["CT"][0], stop_before_pixels=True)
    node.state.record_instance(  # as a node without the decision recorded it
        ReceivedInstance(
            sop_instance_uid=str(first.SOPInstanceUID),
            series_uid=ct,
            study_uid=str(first.StudyInstanceUID),
            sop_class_uid=CT_SOP,
            transfer_syntax="1.2.840.10008.1.2.1",
            path="spool/earlier.dcm",
            size=1,
            modality="CT",
        )
    )
    proc = storescu(node.port, study["CT"][1:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = node.state.series(ct)
    assert record is not None
    assert (record.status, record.instance_count) == (SeriesStatus.RECEIVING, len(study["CT"]))
    assert len(node.spool_files()) == len(study["CT"]) - 1


def test_stow_rs_instances_are_decided_the_same_way(
    start_node: Callable[..., Node],  # noqa: F811
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    node = start_node()
    ingested = node.listener.ingest_part10(study["PT_NAC"][0].read_bytes(), source="STOW-RS")
    assert ingested.status is StoreStatus.SUCCESS
    record = node.state.series(series_uid(study["PT_NAC"][0]))
    assert record is not None
    assert record.status is SeriesStatus.SKIPPED
    assert node.spool_files() == []


@pytest.fixture
def shared_listeners(tmp_path: Path) -> Iterator[list[tuple[Listener, StateDB]]]:
    """Two listeners with their own state.db connections on one data folder (as processes)."""
    made: list[tuple[Listener, StateDB]] = []
    for _ in range(2):
        config = Config.model_validate(
            {
                "listener": {"host": "127.0.0.1", "port": free_port()},
                "storage": {"data_dir": str(tmp_path / "node"), "min_free_mb": 1},
            }
        )
        state = StateDB.in_data_dir(tmp_path / "node")
        listener = Listener(config, state)
        listener.start()
        made.append((listener, state))
    try:
        yield made
    finally:
        for listener, state in made:
            listener.stop()
            state.close()


def test_two_listeners_on_one_state_db_decide_once(
    shared_listeners: list[tuple[Listener, StateDB]],
    study: dict[str, list[Path]],  # noqa: F811
) -> None:
    files = [*study["CT"], *study["PT_NAC"]]
    halves = [files[0::2], files[1::2]]
    results: list[int] = []

    def send(k: int) -> None:
        results.append(storescu(shared_listeners[k][0].port, halves[k]).returncode)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [0, 0]
    state = shared_listeners[0][1]
    for role in ("CT", "PT_NAC"):
        uid = series_uid(study[role][0])
        record = state.series(uid)
        assert record is not None
        assert (record.status, record.instance_count) == (SeriesStatus.SKIPPED, len(study[role]))
        events = [e.event for e in audit_events(state, series_uid=uid)]
        assert events == ["skipped", "received"]
    data_dir = shared_listeners[0][0].spool.data_dir
    assert not [p for p in (data_dir / "spool").rglob("*") if p.is_file()]


def test_real_ge_series_analysed_and_real_derived_series_skipped_at_once(
    start_node: Callable[..., Node],  # noqa: F811
) -> None:
    node = start_node()
    wholebody = sorted(p for p in (REALPET / "tcia-sts-001-wholebody-fdg").rglob("*.dcm"))
    derived = sorted(p for p in (REALPET / "tcia-sts-001-cropped-suv").rglob("*.dcm"))
    pet = [p for p in wholebody if dcmread(p, stop_before_pixels=True).Modality == "PT"]
    assert len(pet) == 267
    assert derived
    proc = storescu(node.port, [*derived, *pet])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ge = series_uid(pet[0])
    assert [uid for uid, _ in node.completed] == [ge]
    record = node.state.series(ge)
    assert record is not None
    assert record.status is SeriesStatus.COMPLETE
    cropped = node.state.series(series_uid(derived[0]))
    assert cropped is not None
    assert cropped.status is SeriesStatus.SKIPPED
    assert "(a derived series)" in (cropped.status_reason or "")
    assert len(node.spool_files()) == 267
