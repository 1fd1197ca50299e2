"""The listener against real peers: DCMTK storescu/echoscu as the scanner, pynetdicom for TLS and
for the exact statuses, on 127.0.0.1 and free ports."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import random
import shutil
import ssl
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.events import Event
from structlog.testing import capture_logs

from sarclym.node.config import Config, load_config
from sarclym.node.dicom import compat
from sarclym.node.dicom.listener import (
    Listener,
    RejectReason,
    StoreStatus,
    check_peer,
    expected_count,
    part10_prefix,
)
from sarclym.node.dicom.send import guard_responses, set_nodelay
from sarclym.node.errors import ConfigError
from sarclym.node.log import configure_logging
from sarclym.node.store.audit import audit_events
from sarclym.node.store.state import SeriesStatus, StateDB
from tests.conftest import free_port, require_tool
from tests.pg import StateBackend, on_both_backends
from tests.phi import assert_no_phi, phi_dataset
from tests.unit.petfactory import ENHANCED_PET_SOP, PET_SOP, compress, make_series, to_enhanced

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"


# -- fixtures and helpers -------------------------------------------------------------------


@dataclass
class Node:
    """A running listener with its state, and what its completion callback saw."""

    listener: Listener
    state: StateDB
    data_dir: Path
    completed: list[tuple[str, int]] = field(default_factory=list)  # (series, instances then)

    @property
    def port(self) -> int:
        return self.listener.port

    def spool_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "spool").rglob("*") if p.is_file())

    def instance_count(self) -> int:
        return int(self.state.query("SELECT COUNT(*) FROM instances")[0][0])

    def completions(self, series_uid: str) -> list[int]:
        return [count for uid, count in self.completed if uid == series_uid]


@pytest.fixture
def start_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Node]]:
    """Start listeners on free loopback ports; all are stopped when the test ends.

    A test that takes ``state_backend`` (or is marked ``on_both_backends``) runs its nodes on
    that back-end, each node on a database of its own (the first on the test's
    ``state_backend.database_url``), as each node's data folder has its own state.db; the
    others on each node's embedded state.db.
    """
    nodes: list[Node] = []
    backend: StateBackend | None = None
    if "state_backend" in request.fixturenames:
        backend = request.getfixturevalue("state_backend")

    def start(*, min_free_mb: int = 1, **listener: Any) -> Node:
        data_dir = tmp_path / f"node{len(nodes)}"
        database_url = ""
        if backend is not None:
            database_url = (backend if not nodes else backend.another()).database_url
        config = Config.model_validate(
            {
                "listener": {"host": "127.0.0.1", "port": free_port(), **listener},
                "storage": {
                    "data_dir": str(data_dir),
                    "min_free_mb": min_free_mb,
                    "database_url": database_url,
                },
            }
        )
        state = StateDB.in_data_dir(data_dir, database_url=database_url)
        lock = threading.Lock()

        def on_complete(series_uid: str) -> None:
            with lock:
                node.completed.append((series_uid, node.instance_count()))

        node = Node(Listener(config, state, on_complete), state, data_dir)
        nodes.append(node)
        node.listener.start()
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.listener.stop()
            node.state.close()


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    aet: str = "STORESCU",
    aec: str = "SARCLYM",
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK storescu (verbose), as a scanner routes them."""
    return subprocess.run(
        [require_tool("storescu"), "-v", *args, "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def storescu_popen(port: int, files: Sequence[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [require_tool("storescu"), "-aet", "STORESCU", "-aec", "SARCLYM", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def associate(
    port: int,
    *,
    aet: str = "STORESCU",
    aec: str = "SARCLYM",
    sop_classes: Sequence[str] = (PET_SOP, ENHANCED_PET_SOP),
    tls: tuple[ssl.SSLContext, str] | None = None,
    rejections: list[Any] | None = None,
) -> Association:
    """A pynetdicom association (TCP_NODELAY, DIMSE responses guarded as in node/dicom/send.py)."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (VERIFICATION, *sop_classes):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

    def on_acse(event: Event) -> None:
        if rejections is not None and getattr(event.primitive, "result", None) in (1, 2):
            rejections.append(event.primitive)

    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aec, tls_args=tls, evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)]
    )
    if assoc.is_established:
        set_nodelay(assoc)
        guard_responses(assoc)
    else:
        # pynetdicom 3.0.4 leaves the socket of a failed association open (ResourceWarning).
        sock = compat.association_socket(assoc)
        if sock is not None:
            sock.close()
    return assoc


def store_all(assoc: Association, items: Sequence[Dataset | Path]) -> list[int]:
    """C-STORE each item; the statuses (-1: no response)."""
    statuses = []
    for msg_id, item in enumerate(items, start=1):
        rsp = assoc.send_c_store(item, msg_id=msg_id)
        statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    return statuses


def small_series(n: int = 4, **kwargs: Any) -> list[Dataset]:
    rng = np.random.default_rng(n)
    return make_series(rng.uniform(1.0, 100.0, size=(n, 32, 32)), **kwargs)


def write_series(folder: Path, datasets: Sequence[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """One synthetic PET/CT study (CT, PT_NAC, PT_AC, PT_MIP), files per series folder."""
    from sarclym.node.cli import main

    out = tmp_path_factory.mktemp("synth")
    try:
        argv = ["synth", "--out", str(out), "--cases", "1", "--seed", "3", "--mip-series", "yes"]
        assert main(argv) == 0
    finally:  # the CLI configured logging for the whole process
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    case = next(out.glob("case*"))
    return {d.name: sorted(d.glob("*.dcm")) for d in sorted(case.iterdir()) if d.is_dir()}


def series_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


# -- C-ECHO and whole studies ---------------------------------------------------------------


def test_echo(start_node: Callable[..., Node]) -> None:
    node = start_node()
    proc = subprocess.run(
        [
            require_tool("echoscu"),
            "-aet",
            "STORESCU",
            "-aec",
            "SARCLYM",
            "127.0.0.1",
            str(node.port),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_whole_study_stored_and_ac_series_completes_at_its_last_slice(
    start_node: Callable[..., Node],
    study: dict[str, list[Path]],
    state_backend: StateBackend,  # both back-ends: start_node opens the nodes on it
) -> None:
    # Every series spooled and decided at completion: the path without the first-instance
    # decision (issue 16; tests/integration/test_first_instance.py covers the default).
    node = start_node(decide_at_first_instance=False)
    order = [*study["CT"], *study["PT_AC"], *study["PT_MIP"], *study["PT_NAC"]]
    proc = storescu(node.port, order)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("Received Store Response (Success)") == len(order)
    assert node.instance_count() == len(order)
    assert len(node.spool_files()) == len(order)  # and no temporary file left
    ac = series_uid(study["PT_AC"][0])
    # Exactly once, and while the AC series' last slice was the newest instance: the callback
    # ran inside that C-STORE, before the MIP and NAC series arrived.
    assert node.completions(ac) == [len(study["CT"]) + len(study["PT_AC"])]
    for name in ("PT_MIP", "PT_NAC"):
        assert len(node.completions(series_uid(study[name][0]))) == 1
    ct = node.state.series(series_uid(study["CT"][0]))
    assert ct is not None
    assert ct.status is SeriesStatus.RECEIVING
    assert ct.expected_count is None
    assert [s.series_uid for s in node.state.quiet_series(0.0)] == [ct.series_uid]
    record = node.state.series(ac)
    assert record is not None
    assert record.status is SeriesStatus.COMPLETE
    slices = int(dcmread(study["PT_AC"][0], stop_before_pixels=True).NumberOfSlices)
    assert slices == len(study["PT_AC"])  # the study's own count (its phantom's body length)
    assert (record.expected_count, record.instance_count) == (slices, slices)
    # Stored as sent: the file in the spool is the same data set.
    sent = dcmread(study["PT_AC"][5])
    instance = node.state.instance(str(sent.SOPInstanceUID))
    assert instance is not None
    stored = dcmread(node.data_dir / instance.path)
    assert stored.PixelData == sent.PixelData
    assert stored.SeriesInstanceUID == ac
    # The file meta the listener writes itself: what pynetdicom would, plus the sender.
    meta = stored.file_meta
    assert meta.MediaStorageSOPClassUID == sent.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.ImplementationClassUID == PYNETDICOM_IMPLEMENTATION_UID
    assert meta.ImplementationVersionName == PYNETDICOM_IMPLEMENTATION_VERSION
    assert meta.SourceApplicationEntityTitle == "STORESCU"
    assert (
        meta.FileMetaInformationGroupLength
        == len(
            part10_prefix(sent.SOPClassUID, sent.SOPInstanceUID, meta.TransferSyntaxUID, "STORESCU")
        )
        - 132
        - 12
    )  # preamble + DICM, and the group length element itself
    series = node.state.recent_series()
    assert {s.study_uid for s in series} == {sent.StudyInstanceUID}
    assert sum(s.instance_count for s in series) == len(order)
    assert sorted({s.modality for s in series}) == ["CT", "PT"]


def test_shuffled_over_two_concurrent_associations_with_duplicates(
    start_node: Callable[..., Node],
    study: dict[str, list[Path]],
    state_backend: StateBackend,  # both back-ends: start_node opens the nodes on it
) -> None:
    node = start_node()
    files = list(study["PT_AC"])
    random.Random(5).shuffle(files)
    first, second = files[:180], files[150:]  # 30 instances sent by both
    senders = [storescu_popen(node.port, first), storescu_popen(node.port, second)]
    for sender in senders:
        _, err = sender.communicate(timeout=300)
        assert sender.returncode == 0, err[-2000:]
    ac = series_uid(files[0])
    assert node.completions(ac) == [len(files)]
    assert node.instance_count() == len(files) == len(node.spool_files())
    copies = node.state.query("SELECT SUM(copies) FROM instances")[0][0]
    assert copies == len(first) + len(second)
    # A late resend of a slice neither stores again nor completes the series again.
    proc = storescu(node.port, files[:3])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert node.completions(ac) == [len(files)]
    assert len(node.spool_files()) == len(files)


@on_both_backends
def test_enhanced_pet_completes_on_arrival(start_node: Callable[..., Node]) -> None:
    node = start_node()
    enhanced = to_enhanced(small_series(5))
    assoc = associate(node.port)
    try:
        assert store_all(assoc, [enhanced]) == [StoreStatus.SUCCESS]
    finally:
        assoc.release()
    assert node.completions(str(enhanced.SeriesInstanceUID)) == [1]


@on_both_backends
@pytest.mark.parametrize(
    ("syntax", "storescu_option", "tool"),
    [
        (RLELossless, "-xr", "dcmcrle"),
        (JPEGLosslessSV1, "-xs", "dcmcjpeg"),
        (JPEGLSLossless, "-xt", "dcmcjpls"),
        (JPEG2000Lossless, "-xv", None),
        (DeflatedExplicitVRLittleEndian, "-xd", None),
    ],
)
def test_compressed_syntaxes_are_stored_as_sent(
    start_node: Callable[..., Node],
    tmp_path: Path,
    syntax: str,
    storescu_option: str,
    tool: str | None,
) -> None:
    datasets = small_series(4)
    if syntax == JPEG2000Lossless:
        pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg encodes JPEG 2000")
        for ds in datasets:
            compress(ds, JPEG2000Lossless)
    files = write_series(tmp_path / "plain", datasets)
    if tool is not None:
        encoded = tmp_path / "encoded"
        encoded.mkdir()
        for path in files:
            subprocess.run(
                [require_tool(tool), str(path), str(encoded / path.name)], check=True, timeout=60
            )
        files = sorted(encoded.glob("*.dcm"))
    node = start_node()
    proc = storescu(node.port, files, args=["-R", storescu_option])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in files:
        sent = dcmread(path)
        record = node.state.instance(str(sent.SOPInstanceUID))
        assert record is not None
        assert record.transfer_syntax == syntax
        stored = dcmread(node.data_dir / record.path)
        assert stored.file_meta.TransferSyntaxUID == syntax
        if syntax != DeflatedExplicitVRLittleEndian:  # deflated on the wire by storescu
            assert stored.PixelData == sent.PixelData  # not transcoded
    assert node.completions(str(datasets[0].SeriesInstanceUID)) == [len(files)]


@on_both_backends
def test_peer_order_decides_the_transfer_syntax(start_node: Callable[..., Node]) -> None:
    """One context offering several syntaxes: the node takes the peer's first choice."""
    pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg encodes JPEG 2000")
    node = start_node()
    j2k, plain = small_series(2)
    compress(j2k, JPEG2000Lossless)
    for ds, offered in (
        (j2k, [JPEG2000Lossless, ExplicitVRLittleEndian]),
        (plain, [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless]),
    ):
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(PET_SOP, offered)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SARCLYM")
        assert assoc.is_established
        guard_responses(assoc)
        try:
            assert store_all(assoc, [ds]) == [StoreStatus.SUCCESS]
        finally:
            assoc.release()
        record = node.state.instance(str(ds.SOPInstanceUID))
        assert record is not None
        assert record.transfer_syntax == offered[0]


# -- who may associate -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peers", "calling", "called", "address", "expected"),
    [
        ([{"ae_title": "PETCT1"}], "PETCT1", "SARCLYM", "10.0.0.9", None),
        ([{"ae_title": "PETCT1"}], "PETCT1  ", "SARCLYM ", "10.0.0.9", None),  # padding
        (
            [{"ae_title": "PETCT1", "host": "10.0.0.9"}],
            "PETCT1",
            "SARCLYM",
            "::ffff:10.0.0.9",
            None,
        ),
        ([{"ae_title": "PETCT1", "host": "10.0.0.9"}], "PETCT1", "SARCLYM", "10.0.0.8", 3),
        ([{"ae_title": "PETCT1", "host": "10.20.0.0/16"}], "PETCT1", "SARCLYM", "10.20.3.4", None),
        ([{"ae_title": "PETCT1", "host": "10.20.0.0/16"}], "PETCT1", "SARCLYM", "10.21.3.4", 3),
        ([{"ae_title": "ORTHANC", "host": "localhost"}], "ORTHANC", "SARCLYM", "127.0.0.1", None),
        ([{"ae_title": "ORTHANC", "host": "localhost"}], "ORTHANC", "SARCLYM", "10.0.0.9", 3),
        ([{"ae_title": "X", "host": "no-such-host.invalid"}], "X", "SARCLYM", "127.0.0.1", 3),
        ([{"ae_title": "PETCT1"}], "petct1", "SARCLYM", "10.0.0.9", 3),  # AE titles are exact
        ([{"ae_title": "PETCT1"}], "PETCT1", "OTHER", "10.0.0.9", 7),
        ([], "ANYONE", "OTHER", "10.0.0.9", 7),  # called AE first
    ],
)
def test_check_peer(
    peers: list[dict[str, str]], calling: str, called: str, address: str, expected: int | None
) -> None:
    config = Config.model_validate({"listener": {"allowed_peers": peers}}).listener
    reason = check_peer(config, calling_ae=calling, called_ae=called, address=address)
    assert reason == expected


def _pet_header(**values: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = values.pop("SOPClassUID", PET_SOP)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"NumberOfSlices": 10, "ImageIndex": 1, "SeriesType": "WHOLE BODY\\IMAGE"}, 10),
        ({"NumberOfSlices": 10, "ImageIndex": 1, "SeriesType": "STATIC\\IMAGE"}, 10),
        (
            {
                "NumberOfSlices": 10,
                "ImageIndex": 1,
                "SeriesType": "DYNAMIC\\IMAGE",
                "NumberOfTimeSlices": 3,
            },
            30,
        ),
        ({"NumberOfSlices": 10, "ImageIndex": 1, "NumberOfTimeSlices": 3}, 30),
        (
            {
                "NumberOfSlices": 10,
                "ImageIndex": 1,
                "SeriesType": "GATED\\IMAGE",
                "NumberOfRRIntervals": 2,
                "NumberOfTimeSlots": 4,
            },
            80,
        ),
        ({"NumberOfSlices": 10}, None),  # no Image Index: cannot be counted
        ({"ImageIndex": 1}, None),
        ({"SOPClassUID": ENHANCED_PET_SOP, "NumberOfFrames": 200}, 1),
    ],
)
def test_expected_count(values: dict[str, Any], expected: int | None) -> None:
    assert expected_count(_pet_header(**values)) == expected


@on_both_backends
@pytest.mark.parametrize(
    ("aet", "aec", "peers", "reason"),
    [
        ("NOBODY", "SARCLYM", None, "Calling AE Title Not Recognized"),
        ("STORESCU", "NOT_THE_NODE", None, "Called AE Title Not Recognized"),
        ("STORESCU", "SARCLYM", [{"ae_title": "STORESCU", "host": "10.1.2.3"}], "Calling AE"),
    ],
    ids=["unknown-calling-ae", "wrong-called-ae", "host-mismatch"],
)
def test_unknown_peers_are_rejected(
    start_node: Callable[..., Node],
    tmp_path: Path,
    aet: str,
    aec: str,
    peers: list[dict[str, str]] | None,
    reason: str,
) -> None:
    node = start_node(**({"allowed_peers": peers} if peers else {}))
    files = write_series(tmp_path / "s", small_series(1))
    proc = storescu(node.port, files, aet=aet, aec=aec)
    assert proc.returncode != 0
    assert "Result: Rejected Permanent, Source: Service User" in proc.stderr
    assert f"Reason: {reason}" in proc.stderr
    assert node.instance_count() == 0
    # The same peer with the right titles (and host) is let in afterwards.
    assert storescu(node.port, files).returncode == (1 if peers else 0)


def test_rejection_codes_on_the_wire(start_node: Callable[..., Node]) -> None:
    node = start_node(allowed_peers=[{"ae_title": "PETCT1"}])
    for aet, aec, diagnostic in (
        ("OTHER", "SARCLYM", RejectReason.CALLING_AE_NOT_RECOGNIZED),
        ("PETCT1", "OTHER", RejectReason.CALLED_AE_NOT_RECOGNIZED),
    ):
        seen: list[Any] = []
        assoc = associate(node.port, aet=aet, aec=aec, rejections=seen)
        assert assoc.is_rejected
        (rj,) = seen
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, int(diagnostic))
    assoc = associate(node.port, aet="PETCT1")  # no host given: any address
    assert assoc.is_established
    assoc.release()


def test_allow_any_peer(start_node: Callable[..., Node]) -> None:
    node = start_node(allow_any_peer=True, allowed_peers=[])
    assoc = associate(node.port, aet="WHOEVER")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


# -- TLS -------------------------------------------------------------------------------------


def make_pki(folder: Path) -> dict[str, Path]:
    """A throw-away CA with a server (IP 127.0.0.1) and a client certificate.

    Made with the ``cryptography`` package when it is installed, else with the openssl CLI.
    Returns the PEM files by name: ``ca_pem``, ``server_pem``, ``server_key``, ``client_pem``,
    ``client_key``.
    """
    folder.mkdir()
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _pki_openssl(folder)
    else:
        _pki_cryptography(folder)
    names = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    return {name.replace(".", "_"): folder / name for name in names}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def _pki_openssl(folder: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=sarclym test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", cwd=folder)  # fmt: skip
    for name, usage, san in (
        ("server", "serverAuth", "IP:127.0.0.1"),
        ("client", "clientAuth", ""),
    ):
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=sarclym test {name}", cwd=folder)  # fmt: skip
        ext = f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
        (folder / f"{name}.ext").write_text(ext + (f"subjectAltName={san}\n" if san else ""))
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=folder)  # fmt: skip


def _pki_cryptography(folder: Path) -> None:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def builder(
        subject: str, issuer: str, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("sarclym test CA", "sarclym test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)
    for stem, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(f"sarclym test {stem}", "sarclym test CA", key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if stem == "server":
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            cert = cert.add_extension(san, critical=False)
        save(stem, key, cert.sign(ca_key, hashes.SHA256()))


def client_context(pki: dict[str, Path], *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca_pem"])
    if with_cert:
        context.load_cert_chain(pki["client_pem"], pki["client_key"])
    return context


@on_both_backends
def test_tls_association(start_node: Callable[..., Node], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {
        "cert_file": str(pki["server_pem"]),
        "key_file": str(pki["server_key"]),
        "ca_file": str(pki["ca_pem"]),
        "require_client_cert": True,
    }
    node = start_node(tls=tls)
    series = small_series(3)
    assoc = associate(node.port, tls=(client_context(pki, with_cert=True), "127.0.0.1"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert store_all(assoc, series) == [StoreStatus.SUCCESS] * 3
    finally:
        assoc.release()
    assert node.completions(str(series[0].SeriesInstanceUID)) == [3]
    # No client certificate, or no TLS at all: no association; the listener keeps serving.
    refused = associate(node.port, tls=(client_context(pki, with_cert=False), "127.0.0.1"))
    assert not refused.is_established
    assert not associate(node.port).is_established
    again = associate(node.port, tls=(client_context(pki, with_cert=True), "127.0.0.1"))
    assert again.is_established
    assert again.send_c_echo().Status == 0
    again.release()


def test_listener_config_keys(tmp_path: Path) -> None:
    """The TLS and extra keys: relative paths resolved, bad values named by key."""
    file = tmp_path / "node.yaml"
    file.write_text(
        "listener:\n  tls: {cert_file: certs/n.pem, key_file: certs/n.key, ca_file: ca.pem}\n"
        "  extra_sop_classes: ['1.3.12.2.1107.5.9.1']\n"
    )
    listener = load_config(file, environ={}).listener
    assert listener.tls is not None
    assert listener.tls.cert_file == tmp_path / "certs" / "n.pem"
    assert listener.tls.ca_file == tmp_path / "ca.pem"
    assert not listener.tls.require_client_cert
    for text, expected in (
        ("listener:\n  tls: {cert_file: a, key_file: b, require_client_cert: true}\n",
         r"listener\.tls: require_client_cert needs ca_file"),
        ("listener:\n  extra_sop_classes: ['1.2.03']\n",
         r"listener\.extra_sop_classes\.0: not a DICOM UID"),
        ("listener:\n  max_pdu: -1\n", r"listener\.max_pdu"),
    ):  # fmt: skip
        file.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_config(file, environ={})


def test_unreadable_tls_files_name_the_key(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "listener": {
                "host": "127.0.0.1",
                "port": free_port(),
                "tls": {
                    "cert_file": str(tmp_path / "no.pem"),
                    "key_file": str(tmp_path / "no.key"),
                },
            },
            "storage": {"data_dir": str(tmp_path / "data")},
        }
    )
    state = StateDB.in_data_dir(tmp_path / "data")
    try:
        with pytest.raises(ConfigError, match=r"listener\.tls\.cert_file"):
            Listener(config, state).start()
    finally:
        state.close()


def test_port_in_use_names_the_key(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node()
    config = Config.model_validate(
        {
            "listener": {"host": "127.0.0.1", "port": node.port},
            "storage": {"data_dir": str(tmp_path / "d2")},
        }
    )
    state = StateDB.in_data_dir(tmp_path / "d2")
    try:
        with pytest.raises(ConfigError, match=r"listener\.port: cannot listen"):
            Listener(config, state).start()
    finally:
        state.close()


# -- failures --------------------------------------------------------------------------------


def _garbage_file(path: Path) -> Path:
    """A Part 10 file whose file meta is valid and whose data set is not a data set."""
    ds = small_series(1)[0]
    ds.save_as(path, enforce_file_format=True)
    _, offset = split_dataset(path)
    path.write_bytes(path.read_bytes()[:offset] + b"this is not a DICOM data set " * 8)
    return path


@on_both_backends
def test_garbage_data_set_fails_and_the_node_keeps_serving(
    start_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    garbage = _garbage_file(tmp_path / "garbage.dcm")
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    assoc = associate(node.port)
    try:
        assert store_all(assoc, [garbage]) == [StoreStatus.CANNOT_DECODE]
    finally:
        assoc.release()
    monkeypatch.undo()
    proc = storescu(node.port, write_series(tmp_path / "good", small_series(2)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert node.instance_count() == 2
    assert len(node.spool_files()) == 2


@on_both_backends
@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_fails_naming_the_attribute(
    start_node: Callable[..., Node], keyword: str
) -> None:
    node = start_node()
    ds = small_series(1)[0]
    if keyword == "SOPInstanceUID":
        with warnings.catch_warnings():  # pydicom warns about the invalid value, as it should
            warnings.simplefilter("ignore")
            ds.SOPInstanceUID = "1.2.3.04"  # present but not a UID: leading zero (PS3.5 9.1)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    else:
        del ds[keyword]
    with capture_logs() as logs, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom again, when the SCU encodes the data set
        assoc = associate(node.port)
        try:
            (status,) = store_all(assoc, [ds])
        finally:
            assoc.release()
    assert status == StoreStatus.MISSING_ATTRIBUTE
    assert 0xC200 <= status <= 0xC2FF
    refusals = [e for e in logs if e["event"] == "c-store refused"]
    assert len(refusals) == 1
    assert keyword in refusals[0]["reason"]
    assert node.instance_count() == 0
    assert node.spool_files() == []


@on_both_backends
def test_below_watermark_out_of_resources_and_nothing_written(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node(min_free_mb=2**40)  # a petabyte free, never true
    series = small_series(2)
    assoc = associate(node.port)
    try:
        assert store_all(assoc, series) == [StoreStatus.OUT_OF_RESOURCES] * 2
    finally:
        assoc.release()
    proc = storescu(node.port, write_series(tmp_path / "s", series))
    assert "Received Store Response (Refused: OutOfResources)" in proc.stderr
    assert node.spool_files() == []
    assert node.instance_count() == 0
    assert node.state.series(series[0].SeriesInstanceUID) is None


@on_both_backends
def test_duplicate_instance_is_success_and_stored_once(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    ds = small_series(1)[0]
    assoc = associate(node.port)
    try:
        assert store_all(assoc, [ds, ds]) == [StoreStatus.SUCCESS] * 2
    finally:
        assoc.release()
    path = write_series(tmp_path / "s", [ds])
    assert storescu(node.port, path).returncode == 0
    assert len(node.spool_files()) == 1
    record = node.state.instance(str(ds.SOPInstanceUID))
    assert record is not None
    assert record.copies == 3
    assert node.completions(str(ds.SeriesInstanceUID)) == [1]  # a one-slice series


@on_both_backends
def test_callback_error_does_not_fail_the_store(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()

    def broken(series_uid: str) -> None:
        raise RuntimeError("queue down")

    node.listener.on_series_complete = broken
    series = small_series(2)
    with capture_logs() as logs:
        assoc = associate(node.port)
        try:
            assert store_all(assoc, series) == [StoreStatus.SUCCESS] * 2
        finally:
            assoc.release()
    assert any(e["event"] == "on_series_complete failed" for e in logs)
    record = node.state.series(str(series[0].SeriesInstanceUID))
    assert record is not None
    assert record.status is SeriesStatus.COMPLETE


# -- logs ------------------------------------------------------------------------------------


@on_both_backends
def test_no_phi_in_logs_and_one_line_per_association(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        node = start_node()
        folder = tmp_path / "phi"
        good = [phi_dataset() for _ in range(2)]
        bad = phi_dataset()
        del bad.SeriesInstanceUID
        files = write_series(folder, [*good, bad])
        proc = storescu(node.port, files)  # storescu stops at the failure: last
        assert proc.stderr.count("Received Store Response (Success)") == 2
        assert "Received Store Response (Error: CannotUnderstand)" in proc.stderr
        assert storescu(node.port, files[:1]).returncode == 0  # a duplicate
        assert storescu(node.port, files[:1], aet="INTRUDER").returncode != 0  # rejected
        node.listener.stop()
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    text = stream.getvalue()
    assert_no_phi(text)
    assert "SeriesInstanceUID missing" in text
    assert text.count('"association closed"') == 2
    assert text.count('"association rejected"') == 1
    assert str(good[0].SOPInstanceUID) in text  # UIDs are what the log names instead
    # The audit log says who sent what, and nothing about the patient either.
    trail = audit_events(node.state)
    received = [(e.event, e.actor) for e in trail if e.event == "received"]
    assert received == [("received", "STORESCU")] * 2
    # These minimal PET instances lack Corrected Image: skipped at their first instance.
    assert [e.event for e in trail if e.event != "received"] == ["skipped"] * 2
    assert_no_phi(json.dumps([dataclasses.asdict(e) for e in trail]))


@on_both_backends
def test_stale_temp_files_removed_at_start(start_node: Callable[..., Node]) -> None:
    node = start_node()
    node.listener.stop()
    stale = node.data_dir / "spool" / "1.2" / "1.3" / ".1.4.dcm.99.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    node.listener.start()
    assert not stale.exists()


@on_both_backends
def test_spool_files_lost_by_state_db_are_reindexed_at_start(
    start_node: Callable[..., Node], study: dict[str, list[Path]]
) -> None:
    """Instance rows are committed without waiting for the disk: after a power cut state.db may
    lack the last ones, but their files were fsynced before each Success. A start records them
    again (sender from the file meta), and the series they complete is completed once."""
    files = study["PT_AC"]
    uid = series_uid(files[0])
    node, other = start_node(), start_node(allowed_peers=[{"ae_title": "PETCT2"}])
    # The node acknowledged every file, but its state.db kept the rows of all but the last 5;
    # their spool files are what `other` wrote for the same instances.
    assert storescu(node.port, files[:-5]).returncode == 0
    assert storescu(other.port, files[-5:], aet="PETCT2").returncode == 0
    node.listener.stop()
    for path in other.spool_files():
        target = node.data_dir / path.relative_to(other.data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    assert node.completions(uid) == []

    assert node.listener.reindex_spool() == 5
    assert node.instance_count() == len(files)
    assert node.completions(uid) == [len(files)]  # completed by the last file found
    senders = node.state.query(
        "SELECT calling_ae, COUNT(*) AS n FROM instances GROUP BY calling_ae ORDER BY calling_ae"
    )
    assert [(r["calling_ae"], r["n"]) for r in senders] == [
        ("PETCT2", 5),  # the Source AE Title the listener wrote into each file's meta
        ("STORESCU", len(files) - 5),
    ]
    assert node.listener.reindex_spool() == 0  # nothing left to find
    node.listener.start()  # start re-indexes too
    assert node.instance_count() == len(files)
    assert node.completions(uid) == [len(files)]
