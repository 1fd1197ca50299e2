"""Issue 13, "Data the node says it stored": what Success means, per data set, on the wire.

A running listener on 127.0.0.1 and a free port; pynetdicom as the SCU, sending data sets as a
broken sender or an attacker would (cut short, on the wrong presentation context, of an unknown
SOP class, deflate bombs, too large); STOW-RS through :meth:`Listener.ingest_part10`. Each
refusal: the right status, a log line naming the reason (no PHI), nothing in the spool or in
state.db, and the association still usable for the next instance.
"""

from __future__ import annotations

import io
import logging
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from sarclym.node.dicom.contexts import PRIVATE_STORAGE_CLASSES
from sarclym.node.dicom.listener import StoreStatus, part10_prefix
from sarclym.node.dicom.send import guard_responses, set_nodelay
from sarclym.node.log import configure_logging
from tests.integration.test_listener import (  # noqa: F401 (start_node: a fixture)
    Node,
    small_series,
    start_node,
    storescu,
)
from tests.phi import assert_no_phi, phi_dataset
from tests.unit.petfactory import CT_SOP, PET_SOP, make_series

pytestmark = pytest.mark.integration

MR_SOP = "1.2.840.10008.5.1.4.1.1.4"  # known to pynetdicom, not proposed below
UNKNOWN_SOP = "1.2.826.0.1.3680043.8.498.4712"  # registered nowhere
SIEMENS_CSA = next(iter(PRIVATE_STORAGE_CLASSES))
PROPOSED = [
    (PET_SOP, ExplicitVRLittleEndian),
    (PET_SOP, DeflatedExplicitVRLittleEndian),
    (PET_SOP, RLELossless),
    (CT_SOP, ExplicitVRLittleEndian),
    (SecondaryCaptureImageStorage, ExplicitVRLittleEndian),
    (SIEMENS_CSA, ExplicitVRLittleEndian),
]


# -- helpers -----------------------------------------------------------------------------------


class Sender:
    """A pynetdicom association with one context per (SOP class, transfer syntax) of PROPOSED."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="STORESCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class, syntax in PROPOSED:
            ae.add_requested_context(sop_class, syntax)
        self.assoc: Association = ae.associate("127.0.0.1", port, ae_title="SARCLYM")
        assert self.assoc.is_established
        set_nodelay(self.assoc)
        guard_responses(self.assoc)
        self.ids = iter(range(1, 10_000))

    def context(self, sop_class: str, syntax: str = ExplicitVRLittleEndian) -> int:
        return next(
            int(cx.context_id)  # type: ignore[arg-type]
            for cx in self.assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
        )

    def store(self, data: bytes, *, sop_class: str, sop_instance: str, context: int) -> int | None:
        """One C-STORE of ``data`` as it is; the status, None without a response."""
        request = C_STORE()
        request.MessageID = next(self.ids)
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_instance
        request.Priority = 2
        request.DataSet = io.BytesIO(data)
        self.assoc.dimse.send_msg(request, context)
        _, rsp = self.assoc.dimse.get_msg(block=True)
        return None if rsp is None or rsp.Status is None else int(rsp.Status)

    def store_ds(
        self, ds: Dataset, data: bytes | None = None, *, context: int | None = None
    ) -> int | None:
        return self.store(
            encode(ds) if data is None else data,
            sop_class=str(ds.SOPClassUID),
            sop_instance=str(ds.SOPInstanceUID),
            context=self.context(str(ds.SOPClassUID)) if context is None else context,
        )

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def sender() -> Iterator[Callable[[Node], Sender]]:
    opened: list[Sender] = []

    def open_(node: Node) -> Sender:
        opened.append(Sender(node.port))
        return opened[-1]

    yield open_
    for each in opened:
        each.close()


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return data


def part10(ds: Dataset) -> bytes:
    fp = io.BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return fp.getvalue()


def assert_nothing_kept(node: Node) -> None:
    assert node.instance_count() == 0
    assert node.spool_files() == []  # no file, no temporary file


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


# -- truncated data sets ------------------------------------------------------------------------


def _cut_pixels(ds: Dataset) -> tuple[bytes, int | None]:
    return encode(ds)[:-100], None


def _cut_before_pixels(ds: Dataset) -> tuple[bytes, int | None]:
    data = encode(ds)
    return data[: data.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")], None


def _cut_deflated(ds: Dataset) -> tuple[bytes, int | None]:
    return encode(ds, DeflatedExplicitVRLittleEndian)[:-20], 1


def _rle_without_delimiter(ds: Dataset) -> tuple[bytes, int | None]:
    ds.compress(RLELossless)
    return encode(ds)[:-8], 2


@pytest.mark.parametrize(
    "cut", [_cut_pixels, _cut_before_pixels, _cut_deflated, _rle_without_delimiter]
)
def test_a_truncated_data_set_is_refused_and_nothing_kept(
    start_node: Callable[..., Node],  # noqa: F811
    sender: Callable[[Node], Sender],
    json_log: io.StringIO,
    cut: Callable[[Dataset], tuple[bytes, int | None]],
) -> None:
    node = start_node()
    scu = sender(node)
    ds = phi_dataset()
    ds.update(small_series(1)[0])  # PET pixels, the patient module of PHI markers
    data, syntax_index = cut(ds)
    syntax = [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless][
        syntax_index or 0
    ]
    context = scu.context(PET_SOP, syntax)
    assert scu.store_ds(ds, data, context=context) == StoreStatus.CANNOT_DECODE
    assert_nothing_kept(node)
    good = small_series(1)[0]
    assert scu.store_ds(good) == StoreStatus.SUCCESS  # the association goes on
    assert node.instance_count() == 1
    text = json_log.getvalue()
    assert '"c-store refused"' in text
    assert "data set not whole" in text
    assert_no_phi(text)


# -- the SOP class against the presentation context ---------------------------------------------


def _secondary_capture() -> Dataset:
    ds = small_series(1)[0]
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    return ds


def test_sop_class_must_be_the_presentation_contexts(
    start_node: Callable[..., Node],  # noqa: F811
    sender: Callable[[Node], Sender],
) -> None:
    node = start_node()
    scu = sender(node)
    pet = small_series(1)[0]
    assert scu.store_ds(pet, context=scu.context(CT_SOP)) == StoreStatus.SOP_CLASS_MISMATCH
    sc = _secondary_capture()
    assert scu.store_ds(sc, context=scu.context(PET_SOP)) == StoreStatus.SOP_CLASS_MISMATCH
    assert_nothing_kept(node)
    mr = small_series(1)[0]
    mr.SOPClassUID = MR_SOP
    assert scu.store_ds(mr, context=scu.context(PET_SOP)) == StoreStatus.SOP_CLASS_NOT_SUPPORTED
    assert_nothing_kept(node)
    assert scu.store_ds(pet) == StoreStatus.SUCCESS
    assert scu.store_ds(sc) == StoreStatus.SUCCESS
    assert node.instance_count() == 2


def test_private_storage_classes_are_stored(
    start_node: Callable[..., Node],  # noqa: F811
    sender: Callable[[Node], Sender],
) -> None:
    """The listener accepts the Siemens CSA class; pynetdicom aborted every C-STORE of it."""
    node = start_node()
    scu = sender(node)
    csa = small_series(1)[0]
    csa.SOPClassUID = SIEMENS_CSA
    assert scu.store_ds(csa) == StoreStatus.SUCCESS
    assert node.instance_count() == 1


def test_an_unknown_sop_class_is_answered_0122_and_the_association_stays(
    start_node: Callable[..., Node],  # noqa: F811
    sender: Callable[[Node], Sender],
) -> None:
    node = start_node()
    scu = sender(node)
    unknown = small_series(1)[0]
    unknown.SOPClassUID = UNKNOWN_SOP
    status = scu.store_ds(unknown, context=scu.context(PET_SOP))
    assert status == StoreStatus.SOP_CLASS_NOT_SUPPORTED  # pynetdicom alone: abort, no status
    assert scu.assoc.is_established
    assert scu.store_ds(small_series(1)[0]) == StoreStatus.SUCCESS
    assert node.instance_count() == 1


# -- deflate bombs and large data sets ----------------------------------------------------------


def deflate_bomb(inflated_mib: int) -> tuple[Dataset, bytes]:
    """A PET data set whose private OB element of ``inflated_mib`` MiB of zeros deflates to
    about a thousandth of that."""
    ds = small_series(1)[0]
    del ds.PixelData
    head = encode(ds)
    size = inflated_mib * 2**20
    element = struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, size)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\0" * 2**20
    parts = [deflater.compress(head + element)]
    parts += [deflater.compress(zeros) for _ in range(inflated_mib)]
    return ds, b"".join([*parts, deflater.flush()])


def test_a_deflate_bomb_is_refused_with_bounded_memory(
    start_node: Callable[..., Node],  # noqa: F811
    sender: Callable[[Node], Sender],
) -> None:
    """The campaign's bomb: about 1 MB that inflates to 1 GiB (it raised the node to 2.9 GB)."""
    ds, bomb = deflate_bomb(1024)
    assert len(bomb) < 1.1 * 2**20
    node = start_node()
    scu = sender(node)
    tracemalloc.start()
    try:
        status = scu.store_ds(
            ds, bomb, context=scu.context(PET_SOP, DeflatedExplicitVRLittleEndian)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == StoreStatus.OUT_OF_RESOURCES
    print(f"deflate bomb: {len(bomb)} bytes sent, peak traced memory {peak / 2**20:.0f} MiB")
    assert peak < 256 * 2**20  # 100 x 1 MB and a growing buffer's eighth; not 1 GiB
    assert_nothing_kept(node)
    assert scu.store_ds(small_series(1)[0]) == StoreStatus.SUCCESS


def _large_pet(mib: int) -> Dataset:
    """One PET slice of about ``mib`` MiB of pixels."""
    side = int((mib * 2**20 / 2) ** 0.5)
    rng = np.random.default_rng(3)
    return make_series(rng.uniform(1.0, 9.0, size=(1, side, side)))[0]


def test_a_data_set_over_max_dataset_mb_is_refused(
    start_node: Callable[..., Node],  # noqa: F811
    sender: Callable[[Node], Sender],
) -> None:
    node = start_node(max_dataset_mb=1)
    scu = sender(node)
    big = _large_pet(2)
    assert scu.store_ds(big) == StoreStatus.OUT_OF_RESOURCES
    assert_nothing_kept(node)
    assert scu.store_ds(small_series(1)[0]) == StoreStatus.SUCCESS


def test_a_data_set_over_max_dataset_mb_is_not_held_in_memory(
    start_node: Callable[..., Node],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Sent by DCMTK storescu (another process): what tracemalloc sees is the node's memory."""
    node = start_node(max_dataset_mb=1)
    big = _large_pet(16)
    path = tmp_path / "big.dcm"
    big.save_as(path, enforce_file_format=True)
    tracemalloc.start()
    try:
        proc = storescu(node.port, [path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "Received Store Response (Refused: OutOfResources)" in proc.stderr
    print(f"16 MiB data set, max_dataset_mb 1: peak traced memory {peak / 2**20:.1f} MiB")
    assert peak < 4 * 2**20  # the 1 MiB kept and a PDU or two; not the 16 MiB sent
    assert_nothing_kept(node)


# -- STOW-RS: the same checks through ingest_part10 ----------------------------------------------


def test_stow_rs_instances_get_the_same_checks(start_node: Callable[..., Node]) -> None:  # noqa: F811
    node = start_node()
    ingest = node.listener.ingest_part10
    good = small_series(1)[0]
    whole = part10(good)
    cut = ingest(whole[:-100], source="STOW-RS")
    assert (cut.status, cut.sop_instance_uid) == (StoreStatus.CANNOT_DECODE, good.SOPInstanceUID)
    assert "(7FE0,0010)" in cut.reason
    unknown = small_series(1)[0]
    unknown.SOPClassUID = UNKNOWN_SOP
    unknown.file_meta.MediaStorageSOPClassUID = UID(UNKNOWN_SOP)
    assert ingest(part10(unknown), source="STOW-RS").status == StoreStatus.SOP_CLASS_NOT_SUPPORTED
    ds, bomb = deflate_bomb(256)
    prefix = part10_prefix(PET_SOP, ds.SOPInstanceUID, DeflatedExplicitVRLittleEndian, "STOW")
    refused = ingest(prefix + bomb, source="STOW-RS")
    assert refused.status == StoreStatus.OUT_OF_RESOURCES
    assert "listener.max_inflation_ratio" in refused.reason
    assert_nothing_kept(node)
    assert ingest(whole, source="STOW-RS").status == StoreStatus.SUCCESS
    assert node.instance_count() == 1
