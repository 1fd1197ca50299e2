"""SC and SR into a real Orthanc by C-STORE, STOW-RS and REST, then found in the study by QIDO-RS.

The source PET series goes in first (as a scanner would have sent it), so the results must land
in that very study: same StudyInstanceUID, new series, and nothing else changed.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pyorthanc import Orthanc

from sarclym.node.dicom.send import send_files
from sarclym.node.results import build_sc, build_sr
from tests.conftest import OrthancServer
from tests.results_fixtures import CREATED, make_prediction

pytestmark = pytest.mark.integration

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_3D_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The source PET slices, the SC and the 3D SR of one prediction, written to disk."""
    folder = tmp_path_factory.mktemp("orthanc-objects")
    prediction, datasets = make_prediction("lymphoma")
    sc = build_sc(prediction, datasets, created=CREATED)
    sr = build_sr(prediction, datasets, sc, created=CREATED)
    out: dict[str, Path] = {}
    for k, ds in enumerate(datasets):
        out[f"pet{k:03d}"] = folder / f"pet{k:03d}.dcm"
        dcmwrite(out[f"pet{k:03d}"], ds, enforce_file_format=True)
    for name, ds in (("sc", sc), ("sr", sr)):
        out[name] = folder / f"{name}.dcm"
        dcmwrite(out[name], ds, enforce_file_format=True)
    return out


def _pet(objects: dict[str, Path]) -> list[Path]:
    return [p for name, p in objects.items() if name.startswith("pet")]


def _results(objects: dict[str, Path]) -> list[Path]:
    return [objects["sc"], objects["sr"]]


def _store_source(server: OrthancServer, objects: dict[str, Path]) -> None:
    report = send_files(_pet(objects), "127.0.0.1", server.dicom_port, called_aet=server.aet)
    assert report.ok, report.failures


def _assert_found_in_study(server: OrthancServer, objects: dict[str, Path]) -> None:
    """QIDO-RS: the study now has the PET series plus one SC and one SR series."""
    sc, sr = (dcmread(p, stop_before_pixels=True) for p in _results(objects))
    client = DICOMwebClient(server.dicomweb)
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": sc.StudyInstanceUID})
    assert len(studies) == 1
    series = client.search_for_series(sc.StudyInstanceUID)
    modalities = sorted(Dataset.from_json(s).Modality for s in series)
    assert modalities == ["OT", "PT", "SR"] or modalities == ["PT", "SC", "SR"]
    for ds, sop_class in ((sc, SC_CLASS), (sr, SR_3D_CLASS)):
        found = client.search_for_instances(
            sc.StudyInstanceUID,
            ds.SeriesInstanceUID,
            search_filters={"SOPInstanceUID": ds.SOPInstanceUID},
        )
        assert len(found) == 1
        assert Dataset.from_json(found[0]).SOPClassUID == sop_class


def _assert_stored_bytes_unchanged(server: OrthancServer, objects: dict[str, Path]) -> None:
    """What Orthanc hands back is, element for element, what was sent (nothing lost).

    The file meta information may differ: a C-STORE receiver writes its own group 0002.
    """
    for path in _results(objects):
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        ids = httpx.post(f"{server.url}/tools/lookup", content=uid, timeout=10).json()
        assert len(ids) == 1
        stored = httpx.get(f"{server.url}/instances/{ids[0]['ID']}/file", timeout=10)
        back = dcmread(BytesIO(stored.content))
        sent = dcmread(path)
        assert back == sent
        assert back.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


def test_cstore_into_orthanc(orthanc: OrthancServer, objects: dict[str, Path]) -> None:
    _store_source(orthanc, objects)
    report = send_files(_results(objects), "127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet)
    assert report.ok, report.failures
    assert report.stored == 2
    _assert_found_in_study(orthanc, objects)
    _assert_stored_bytes_unchanged(orthanc, objects)


def test_stow_rs_into_orthanc(orthanc: OrthancServer, objects: dict[str, Path]) -> None:
    _store_source(orthanc, objects)
    client = DICOMwebClient(orthanc.dicomweb)
    response = client.store_instances([dcmread(p) for p in _results(objects)])
    assert len(response.get("FailedSOPSequence", [])) == 0, str(response)
    assert len(response.ReferencedSOPSequence) == 2
    _assert_found_in_study(orthanc, objects)


def test_rest_upload_into_orthanc(orthanc: OrthancServer, objects: dict[str, Path]) -> None:
    _store_source(orthanc, objects)
    api = Orthanc(orthanc.url)
    for path in _results(objects):
        answer = api.post_instances(path.read_bytes())
        assert answer["Status"] == "Success"
    _assert_found_in_study(orthanc, objects)
    _assert_stored_bytes_unchanged(orthanc, objects)


def test_redelivery_is_idempotent(orthanc: OrthancServer, objects: dict[str, Path]) -> None:
    """Deterministic UIDs: sending the same results twice leaves one copy of each."""
    _store_source(orthanc, objects)
    for _ in range(2):
        report = send_files(
            _results(objects), "127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet
        )
        assert report.ok
    stats = httpx.get(f"{orthanc.url}/statistics", timeout=10).json()
    assert stats["CountInstances"] == len(_pet(objects)) + 2
    assert stats["CountSeries"] == 3
    assert stats["CountStudies"] == 1
