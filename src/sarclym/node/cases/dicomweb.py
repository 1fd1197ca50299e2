"""A PACS over DICOMweb: QIDO-RS to find, WADO-RS to retrieve (PS3.18 10.4, 10.6).

dicomweb-client on a :mod:`requests` session that carries the bearer token, the TLS setting and
a timeout on every request. A series is retrieved whole by one WADO-RS request, streamed
instance by instance (``iter_series``); where some of its instances are already in the store,
only the missing ones are retrieved, one request each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from sarclym.node.cases.labels import KeyKind
from sarclym.node.cases.source import (
    HEADER_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    Retrieved,
    Sink,
    SourceError,
    StudyFound,
    match_filter,
)
from sarclym.node.config.sources import DicomwebSource as DicomwebConfig

__all__ = ["DicomwebSource"]

# dicomweb-client logs every request with its UIDs at INFO: not the node's log.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


class DicomwebSource:
    """A configured DICOMweb PACS.

    Parameters
    ----------
    config
        The ``sources.pacs`` entry; ``token_env`` is read from ``environ`` (``os.environ``).

    Raises
    ------
    SourceError
        ``token_env`` names a variable that is not set.
    """

    def __init__(self, config: DicomwebConfig, *, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.name = config.name
        env = os.environ if environ is None else environ
        token = config.token.get_secret_value() if config.token is not None else None
        if config.token_env is not None:
            if config.token_env not in env:
                raise SourceError(
                    f"source {config.name!r}: environment variable {config.token_env} "
                    "(token_env) is not set"
                )
            token = env[config.token_env]
        session = _TimeoutSession(config.timeout)
        session.verify = config.verify_tls
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        self._session = session
        self._client = DICOMwebClient(config.url, session=session)

    def __repr__(self) -> str:  # never shows the token
        return f"DicomwebSource({self.name!r}, {self.config.url!r})"

    def describe(self) -> str:
        return f"{self.config.url} (DICOMweb)"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise SourceError(
                f"source {self.name!r}: {what} at {self.describe()}: HTTP {code}"
            ) from exc
        except requests.RequestException as exc:
            raise SourceError(
                f"source {self.name!r}: cannot reach {self.describe()} ({type(exc).__name__})"
            ) from exc

    def check(self) -> None:
        """One QIDO-RS request; :class:`SourceError` naming the URL when it fails."""
        self._call("QIDO-RS", self._client.search_for_studies, limit=1)

    @contextmanager
    def session(self) -> Iterator[_Session]:
        yield _Session(self)

    def close(self) -> None:
        self._session.close()


def _datasets(found: list[dict[str, Any]]) -> list[Dataset]:
    return [Dataset.from_json(item) for item in found]


class _Session:
    def __init__(self, source: DicomwebSource) -> None:
        self.source = source
        self.client = source._client

    def find_studies(self, kind: KeyKind, key: tuple[str, ...]) -> list[StudyFound]:
        found = self.source._call(
            "QIDO-RS studies",
            self.client.search_for_studies,
            search_filters=match_filter(kind, key),
            fields=list(STUDY_KEYS),
        )
        studies = [StudyFound.from_dataset(ds) for ds in _datasets(found)]
        return [s for s in studies if s.key(kind) == key]

    def find_series(self, study_uid: str) -> list[Dataset]:
        found = self.source._call(
            "QIDO-RS series", self.client.search_for_series, study_uid, fields=list(SERIES_KEYS)
        )
        return _datasets(found)

    def find_instances(self, study_uid: str, series_uid: str, *, header: bool) -> list[Dataset]:
        found = self.source._call(
            "QIDO-RS instances",
            self.client.search_for_instances,
            study_uid,
            series_uid,
            fields=list(HEADER_KEYS) if header else None,
        )
        out = _datasets(found)
        if header and out:
            # QIDO-RS may not return the image-level attributes: WADO-RS metadata of one.
            first = out[0]
            meta = self.source._call(
                "WADO-RS metadata",
                self.client.retrieve_instance_metadata,
                study_uid,
                series_uid,
                str(first.SOPInstanceUID),
            )
            out[0] = Dataset.from_json(meta)
        return out

    def retrieve(
        self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, sink: Sink
    ) -> Retrieved:
        count = 0
        if sop_uids:
            for sop in sop_uids:
                ds = self.source._call(
                    "WADO-RS instance",
                    self.client.retrieve_instance,
                    study_uid,
                    series_uid,
                    sop,
                )
                sink(ds)
                count += 1
            return Retrieved(completed=count)
        stream = self.source._call("WADO-RS series", self.client.iter_series, study_uid, series_uid)
        try:
            for ds in stream:
                sink(ds)
                count += 1
        except requests.RequestException as exc:
            raise SourceError(
                f"source {self.source.name!r}: WADO-RS series from {self.source.describe()} "
                f"broke off after {count} instances ({type(exc).__name__})"
            ) from exc
        return Retrieved(completed=count)
