"""Where results go: the destination kinds, their retry policy, and the ``destinations`` section."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sarclym.node.config._fields import AETitle, EnvName, Frozen, HttpUrl, TargetName

__all__ = [
    "CStoreTarget",
    "DestinationsConfig",
    "FolderTarget",
    "JitterMode",
    "OrthancTarget",
    "RetryPolicy",
    "StowRsTarget",
    "TargetConfig",
]


class JitterMode(str, Enum):
    """How a retry delay is randomised."""

    FULL = "full"  # uniform in [0, capped exponential delay]: retries of many results spread out
    NONE = "none"  # exactly the capped exponential delay (predictable, for tests and debugging)


class RetryPolicy(Frozen):
    """Retries of a delivery that a destination did not confirm: capped exponential backoff.

    The delay before attempt ``n + 1`` is ``min(max_delay_s, base_delay_s * 2**(n - 1))``, drawn
    uniformly from ``[0, that]`` with full jitter. After ``max_attempts`` attempts, or at once on
    a permanent failure, the delivery goes to the dead letter (``sarclym-node retry --dead``).
    """

    max_attempts: Annotated[int, Field(ge=1)] = Field(
        default=15, description="Attempts per result and destination before the dead letter."
    )
    base_delay_s: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="Delay after the first failed attempt (before jitter)."
    )
    max_delay_s: Annotated[float, Field(gt=0)] = Field(
        default=900.0, description="Upper bound of any delay (before jitter)."
    )
    jitter: JitterMode = Field(default=JitterMode.FULL)

    @model_validator(mode="after")
    def _bounds(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"max_delay_s ({self.max_delay_s}) is below base_delay_s ({self.base_delay_s})"
            )
        return self


class CStoreTarget(Frozen):
    """A Storage SCP (PACS, Orthanc's DICOM port) that results are sent to by C-STORE."""

    kind: Literal["cstore"]
    name: TargetName = Field(description="Unique name; the delivery ledger keys on it.")
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    called_aet: AETitle
    calling_aet: AETitle = Field(default="SARCLYM")
    timeout: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="Seconds for the association, each response and the network."
    )
    keep_open_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=10.0,
        description=(
            "Seconds the association stays established after a delivery, for the next one "
            "(released with A-RELEASE when idle that long and at shutdown); 0: one association "
            "per delivery. Keep it below the peer's own idle timeout (Orthanc: 30 s); a peer "
            "that stops gracefully may wait for it to end (Orthanc does)."
        ),
    )


class StowRsTarget(Frozen):
    """A DICOMweb server that results are sent to by STOW-RS (PS3.18 10.5)."""

    kind: Literal["stowrs"]
    name: TargetName
    url: HttpUrl = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    token: SecretStr | None = Field(default=None, description="Bearer token.")
    token_env: EnvName = Field(
        default=None, description="Environment variable that holds the bearer token."
    )
    verify_tls: bool = Field(default=True, description="Check the server's TLS certificate.")
    timeout: Annotated[float, Field(gt=0)] = Field(default=30.0)

    @model_validator(mode="after")
    def _one_token(self) -> StowRsTarget:
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self


class OrthancTarget(Frozen):
    """An Orthanc server that results are uploaded to through its REST API (POST /instances)."""

    kind: Literal["orthanc"]
    name: TargetName
    url: HttpUrl = Field(description="Orthanc's HTTP root, e.g. http://127.0.0.1:8042")
    username: str | None = Field(default=None)
    password: SecretStr | None = Field(default=None)
    password_env: EnvName = Field(
        default=None, description="Environment variable that holds the password."
    )
    verify_tls: bool = Field(default=True)
    timeout: Annotated[float, Field(gt=0)] = Field(default=30.0)

    @model_validator(mode="after")
    def _one_password(self) -> OrthancTarget:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        return self


class FolderTarget(Frozen):
    """A folder that results are copied to as ``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``."""

    kind: Literal["folder"]
    name: TargetName
    path: Path | None = Field(default=None, description="Folder; None: <storage.data_dir>/results.")


TargetConfig = Annotated[
    CStoreTarget | StowRsTarget | OrthancTarget | FolderTarget, Field(discriminator="kind")
]


class DestinationsConfig(Frozen):
    """Where results go (several at once) and how undelivered results are retried."""

    targets: tuple[TargetConfig, ...] = Field(
        default=(FolderTarget(kind="folder", name="results-folder"),),
        description="Every result goes to each of these.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        names = [t.name for t in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"destination names must be unique: {', '.join(twice)}")
        return value
