"""`cases pull` serves its C-STOREs with the store lane (issue 16): C-MOVE and C-GET.

A real pynetdicom SCU sends small PET instances to the pull's Storage SCP
(:class:`~sarclym.node.cases.dimse._MoveReceiver`) on 127.0.0.1: each is served on the
association's DUL thread (the lane, below pynetdicom's DIMSE layer), the sink gets the instance
in the file format byte for byte as pynetdicom's path gave it (preamble, pynetdicom's file meta,
the data set as sent), and a series no retrieve waits for is answered 0xC001.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from io import BytesIO

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from pynetdicom.dul import DULServiceProvider

from sarclym.model.imaging.selection import PET_SOP_CLASSES
from sarclym.node.cases.dimse import DimseSource
from sarclym.node.config.sources import DimseSource as DimseConfig
from sarclym.node.dicom.part10 import part10_prefix
from tests.conftest import free_port

PET = next(iter(PET_SOP_CLASSES))  # PET Image Storage (or the first PET class)
_PREAMBLE = b"\x00" * 128 + b"DICM"


class _Sink:
    """A retrieve's sink: what arrived, its bytes, and the thread that delivered it."""

    def __init__(self) -> None:
        self.taken: list[tuple[Dataset, bytes]] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, ds: Dataset) -> None:  # pragma: no cover - take_encoded is used
        raise AssertionError("the receiver should hand the encoded instance")

    def take_encoded(self, ds: Dataset, encoded: bytes) -> None:
        self.taken.append((ds, encoded))
        self.threads.append(threading.current_thread())


class _PlainSink:
    """A sink without ``take_encoded``: gets the decoded instance with its file meta."""

    def __init__(self) -> None:
        self.got: list[Dataset] = []

    def __call__(self, ds: Dataset) -> None:
        self.got.append(ds)


def _instance(study: str, series: str, n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = PET
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "PT"
    ds.InstanceNumber = n
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(n, n + 32))
    return ds


@pytest.fixture
def source() -> Iterator[DimseSource]:
    config = DimseConfig(
        kind="dimse",
        name="pacs",
        host="127.0.0.1",
        port=free_port(),  # never reached: only the C-MOVE receiver is used
        called_aet="PACS",
        retrieve="move",
        move_port=free_port(),
        move_host="127.0.0.1",
        timeout=20,
    )
    src = DimseSource(config, calling_aet="SARCLYM")
    try:
        yield src
    finally:
        src.close()


def _send(port: int, instances: list[Dataset], syntax: str) -> list[int]:
    """C-STORE each instance on one association; the statuses."""
    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(PET, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="SARCLYM")
    assert assoc.is_established
    try:
        statuses = []
        for ds in instances:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = UID(syntax)
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status))
        return statuses
    finally:
        assoc.release()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_move_receiver_serves_c_stores_on_the_lane_with_the_same_bytes(
    source: DimseSource, syntax: str
) -> None:
    receiver = source._move_receiver()
    port = source.config.move_port
    assert port is not None
    study, series = generate_uid(), generate_uid()
    instances = [_instance(study, series, n) for n in range(1, 4)]
    sink = _Sink()
    with receiver.expecting(series, sink):
        statuses = _send(port, instances, syntax)
    assert statuses == [0x0000] * 3
    assert len(sink.taken) == 3
    # Served where its PDUs are read (the lane), not on pynetdicom's association thread.
    assert all(isinstance(t, DULServiceProvider) for t in sink.threads), sink.threads
    implicit = syntax == ImplicitVRLittleEndian
    for sent, (ds, encoded) in zip(instances, sink.taken, strict=True):
        meta = create_file_meta(
            sop_class_uid=UID(PET),
            sop_instance_uid=sent.SOPInstanceUID,
            transfer_syntax=UID(syntax),
        )
        data = encode(sent, implicit, True)
        assert data is not None
        assert encoded == _PREAMBLE + encode_file_meta(meta) + data
        assert ds.SOPInstanceUID == sent.SOPInstanceUID
        assert ds.SeriesInstanceUID == series
        assert ds.StudyInstanceUID == study
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID


def test_series_no_retrieve_waits_for_is_refused_0xc001_and_the_association_goes_on(
    source: DimseSource,
) -> None:
    receiver = source._move_receiver()
    port = source.config.move_port
    assert port is not None
    study, wanted, other = generate_uid(), generate_uid(), generate_uid()
    sink = _Sink()
    with receiver.expecting(wanted, sink):
        statuses = _send(
            port,
            [_instance(study, other, 1), _instance(study, wanted, 2), _instance(study, other, 3)],
            ExplicitVRLittleEndian,
        )
    assert statuses == [0xC001, 0x0000, 0xC001]
    assert [ds.InstanceNumber for ds, _ in sink.taken] == [2]
    assert all(isinstance(t, DULServiceProvider) for t in sink.threads)
    # Outside any retrieve: every series is refused.
    assert _send(port, [_instance(study, wanted, 4)], ExplicitVRLittleEndian) == [0xC001]
    assert len(sink.taken) == 1


def test_a_sink_without_take_encoded_gets_the_whole_decoded_instance(
    source: DimseSource,
) -> None:
    receiver = source._move_receiver()
    port = source.config.move_port
    assert port is not None
    study, series = generate_uid(), generate_uid()
    sent = _instance(study, series, 7)
    sink = _PlainSink()
    with receiver.expecting(series, sink):
        assert _send(port, [sent], ExplicitVRLittleEndian) == [0x0000]
    (ds,) = sink.got
    assert ds.PixelData == sent.PixelData  # the pixels too: a pseudonymised pull re-encodes
    assert ds.file_meta.MediaStorageSOPClassUID == PET
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert buffer.getvalue().startswith(_PREAMBLE)


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "1." + "2" * 62])
@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.50"]
)
def test_file_meta_bytes_are_pynetdicoms(instance: str, syntax: str) -> None:
    expected = encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(PET), sop_instance_uid=UID(instance), transfer_syntax=UID(syntax)
        )
    )
    assert part10_prefix(PET, instance, syntax, None) == _PREAMBLE + expected


def test_c_get_sub_operations_are_served_on_the_lane_with_the_same_bytes() -> None:
    """C-GET: the PACS sends the instances back on the pull's own association (requestor); the
    lane, installed once the association is up, serves them on its DUL thread."""
    from pynetdicom import evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
    )

    study, series = generate_uid(), generate_uid()
    instances = [_instance(study, series, n) for n in range(1, 4)]
    for ds in instances:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    def on_get(event: object) -> Iterator[object]:
        yield len(instances)
        for ds in instances:
            yield 0xFF00, ds

    scp = AE(ae_title="PACS")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    scp.add_supported_context(PET, [ExplicitVRLittleEndian], scu_role=False, scp_role=True)
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)]
    )
    config = DimseConfig(
        kind="dimse",
        name="pacs",
        host="127.0.0.1",
        port=port,
        called_aet="PACS",
        retrieve="get",
        timeout=20,
    )
    source = DimseSource(config, calling_aet="SARCLYM")
    sink = _Sink()
    try:
        with source.session() as session:
            session.retrieve(study, series, None, sink)
    finally:
        source.close()
        server.shutdown()
    assert len(sink.taken) == 3
    assert all(isinstance(t, DULServiceProvider) for t in sink.threads), sink.threads
    for sent, (ds, encoded) in zip(instances, sink.taken, strict=True):
        meta = create_file_meta(
            sop_class_uid=UID(PET),
            sop_instance_uid=sent.SOPInstanceUID,
            transfer_syntax=UID(ExplicitVRLittleEndian),
        )
        data = encode(sent, False, True)
        assert data is not None
        assert encoded == _PREAMBLE + encode_file_meta(meta) + data
        assert ds.SeriesInstanceUID == series
