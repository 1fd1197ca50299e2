"""The PACSs that ``sarclym-node cases pull`` retrieves a site's cases from: the ``sources``
section.

A source is named; the command names it (``--source NAME``). Over DIMSE the pull queries with
C-FIND (Study Root) and retrieves either by C-GET on the same association or by C-MOVE to the
pull's own short-lived Storage SCP (``move_aet`` on ``move_port``: the PACS must know that AE
title with this host and port). Over DICOMweb it uses QIDO-RS and WADO-RS. ``max_parallel``
bounds how many studies are queried and retrieved at once, across all sources.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sarclym.node.config._fields import AETitle, EnvName, Frozen, HttpUrl, TargetName

__all__ = ["DicomwebSource", "DimseSource", "SourceConfig", "SourcesConfig"]


class DimseSource(Frozen):
    """A PACS queried by C-FIND and retrieved from by C-GET or C-MOVE (PS3.4 C.4)."""

    kind: Literal["dimse"]
    name: TargetName = Field(description="Unique name; `cases pull --source NAME`.")
    host: str = Field(description="Host name or address of the PACS's DICOM port.")
    port: Annotated[int, Field(ge=1, le=65535)]
    called_aet: AETitle = Field(description="The PACS's AE title.")
    calling_aet: AETitle | None = Field(
        default=None, description="Our AE title towards the PACS; None: listener.ae_title."
    )
    retrieve: Literal["get", "move"] = Field(
        default="get",
        description="get: C-GET, the instances come back on the same association; move: C-MOVE "
        "to move_aet, the pull's own Storage SCP listening on move_port while it pulls.",
    )
    move_aet: AETitle | None = Field(
        default=None,
        description="AE title the PACS moves to (registered on the PACS with this host and "
        "move_port); None: calling AE title.",
    )
    move_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Local port of the pull's Storage SCP for C-MOVE."
    )
    move_host: str = Field(
        default="0.0.0.0", description="Address the C-MOVE Storage SCP binds to."
    )
    timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="Seconds for the association, each response and the network; a retrieve "
        "with no sub-operation for this long is aborted.",
    )

    @model_validator(mode="after")
    def _move_port(self) -> DimseSource:
        if self.retrieve == "move" and self.move_port is None:
            raise ValueError("retrieve: move needs move_port (where the PACS sends the series)")
        return self


class DicomwebSource(Frozen):
    """A DICOMweb server queried by QIDO-RS and retrieved from by WADO-RS (PS3.18 10.4, 10.6)."""

    kind: Literal["dicomweb"]
    name: TargetName = Field(description="Unique name; `cases pull --source NAME`.")
    url: HttpUrl = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    token: SecretStr | None = Field(default=None, description="Bearer token.")
    token_env: EnvName = Field(
        default=None, description="Environment variable that holds the bearer token."
    )
    verify_tls: bool = Field(default=True, description="Check the server's TLS certificate.")
    timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0, description="Seconds for the connection and each response."
    )

    @model_validator(mode="after")
    def _one_token(self) -> DicomwebSource:
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self


SourceConfig = Annotated[DimseSource | DicomwebSource, Field(discriminator="kind")]


class SourcesConfig(Frozen):
    """PACSs (DIMSE or DICOMweb) the node may query and retrieve cases from."""

    pacs: tuple[SourceConfig, ...] = Field(
        default=(), description="Named PACSs; `sarclym-node cases pull --source NAME`."
    )
    max_parallel: Annotated[int, Field(ge=1, le=32)] = Field(
        default=4, description="Studies queried and retrieved at once by one pull."
    )

    @field_validator("pacs")
    @classmethod
    def _unique_names(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        names = [s.name for s in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source names must be unique: {', '.join(twice)}")
        return value

    def named(self, name: str) -> DimseSource | DicomwebSource:
        """The source called ``name``.

        Raises
        ------
        KeyError
            With a message that lists the configured names.
        """
        for source in self.pacs:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.pacs) or "none configured (sources.pacs)"
        raise KeyError(f"unknown source {name!r}; configured: {known}")
