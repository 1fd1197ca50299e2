"""The model registry: a folder of versioned weights with model cards, one of them active.

Layout::

    <root>/
        ACTIVE                     name of the active version (one line)
        ACTIVE_HISTORY             JSON list of activations, oldest first
        ACTIVATIONS                JSON list of {version, weights_sha256, at, by, forced,
                                   forced_gates, action}: who activated what when
        <version>/
            weights.safetensors    state dict (safetensors: no pickle, nothing executed on load)
            model_card.json        architecture, hyper-parameters, input size, SUV window,
                                   training data, CV metrics with CIs, Bayes ceiling, date,
                                   SHA-256 of weights.safetensors, disclaimer, synthetic flag
            model_card.md          the card rendered for people
            ood_reference.safetensors  optional: the out-of-distribution reference and
                                   threshold (:mod:`~sarclym.model.inference.ood`), named
                                   with its SHA-256 under ``ood_reference`` in the card

A version folder is written under a temporary name and renamed into place, and ``ACTIVE`` /
``ACTIVE_HISTORY`` are replaced atomically (temp file, fsync, rename), so a crash leaves either
the old or the new state, never a half-written one. Versions are never overwritten or changed
after registration; promotion (:meth:`Registry.activate`) is explicit, gated on the
cross-validated AUC, and reversible (:meth:`Registry.rollback`).

:meth:`Registry.load` verifies the weights' SHA-256 against the card before deserialising the
very bytes it hashed (and the OOD reference's, when the card names one); any mismatch, missing
file or unreadable card is a :class:`~sarclym.model.errors.RegistryError` naming the file. The
registry does not lock: one writer (the ``retrain`` / ``activate`` CLI) at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from sarclym.model.errors import RegistryError
from sarclym.model.inference.card import DISCLAIMER, auc_mean, render_card
from sarclym.model.inference.net import MipNet, build_net, count_parameters
from sarclym.model.inference.ood import REFERENCE_FILE, OodReference

__all__ = [
    "CARD_FILE",
    "DISCLAIMER",
    "WEIGHTS_FILE",
    "LoadedModel",
    "ModelInfo",
    "Registry",
    "render_card",
]

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model_card.json"
CARD_MD_FILE = "model_card.md"
_ACTIVE = "ACTIVE"
_HISTORY = "ACTIVE_HISTORY"
_ACTIVATIONS = "ACTIVATIONS"

#: Registry files are not secret, and the node may run as a user other than the one training.
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_DATED = re.compile(r"^(\d{4}\.\d{2}\.\d{2})-(\d+)$")
_REQUIRED = ("suv_window", "training_data")


@dataclass(frozen=True)
class ModelInfo:
    """One registered version, as listed by :meth:`Registry.versions`."""

    version: str
    arch: str
    created: str
    cv_auc_mean: float | None
    synthetic_data: bool
    active: bool


@dataclass(frozen=True)
class LoadedModel:
    """A verified model, ready for inference.

    Attributes
    ----------
    net : MipNet
        In eval mode, on the CPU.
    card : dict
        The parsed ``model_card.json``.
    sha256 : str
        SHA-256 (hex) of ``weights.safetensors``, equal to the card's.
    version : str
        Version name.
    ood : OodReference or None
        The out-of-distribution reference, verified against the card's SHA-256; ``None`` for
        a version without one (it predicts without an OOD score).
    """

    net: MipNet
    card: dict[str, Any]
    sha256: str
    version: str
    ood: OodReference | None = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600: the node may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class Registry:
    """Versions of the model under one folder.

    Parameters
    ----------
    root : str or pathlib.Path
        Registry folder; created on the first :meth:`register`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------------------

    def _card_path(self, version: str) -> Path:
        return self.root / version / CARD_FILE

    def _read_card(self, version: str) -> dict[str, Any]:
        path = self._card_path(version)
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RegistryError(f"model card missing: {path}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"model card unreadable: {path}: {exc}") from exc
        if not isinstance(card, dict):
            raise RegistryError(f"model card is not a JSON object: {path}")
        return card

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / CARD_FILE).exists()
        )

    def versions(self) -> list[ModelInfo]:
        """All registered versions, oldest first (by creation time, then name).

        Raises
        ------
        RegistryError
            A version's card cannot be read.
        """
        active = self.active()
        infos = []
        for name in self._names():
            card = self._read_card(name)
            infos.append(
                ModelInfo(
                    version=name,
                    arch=str(card.get("arch", "")),
                    created=str(card.get("created", "")),
                    cv_auc_mean=auc_mean(card),
                    synthetic_data=bool(card.get("synthetic_data", False)),
                    active=name == active,
                )
            )
        return sorted(infos, key=lambda i: (i.created, i.version))

    def active(self) -> str | None:
        """Name of the active version, ``None`` when none was activated."""
        try:
            name = (self.root / _ACTIVE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def _history(self) -> list[str]:
        path = self.root / _HISTORY
        try:
            history = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"activation history unreadable: {path}: {exc}") from exc
        if not isinstance(history, list) or not all(isinstance(v, str) for v in history):
            raise RegistryError(f"activation history is not a list of versions: {path}")
        return history

    # -- writing -----------------------------------------------------------------------------

    def _next_dated(self, today: dt.date) -> str:
        prefix = today.strftime("%Y.%m.%d")
        taken = [
            int(m.group(2))
            for n in self._names()
            if (m := _DATED.match(n)) and m.group(1) == prefix
        ] or [0]
        return f"{prefix}-{max(taken) + 1}"

    def register(
        self,
        net: MipNet,
        card: Mapping[str, Any],
        version: str | None = None,
        *,
        ood: OodReference | None = None,
    ) -> str:
        """Store a trained network as a new, inactive version.

        Parameters
        ----------
        net : MipNet
            The trained network (its ``arch`` and ``input_size`` go into the card).
        card : mapping
            Model card fields. Required: ``suv_window`` and ``training_data``. Expected:
            ``hyperparameters``, ``cv_metrics`` (:meth:`CVResult.as_card_metrics`),
            ``synthetic_data``, ``bayes_auc``. Filled in here: ``version``, ``arch``,
            ``input_size``, ``parameters``, ``created`` (UTC, ISO 8601) unless given,
            ``weights_sha256``, ``disclaimer``.
        version : str or None, optional
            ``"MAJOR.MINOR.PATCH"`` or ``"YYYY.MM.DD-N"``; ``None`` takes the next
            ``YYYY.MM.DD-N`` of today (UTC).
        ood : OodReference or None, optional
            Out-of-distribution reference calibrated for ``net``: written with the version
            (:data:`~sarclym.model.inference.ood.REFERENCE_FILE`) and named in the card.

        Returns
        -------
        str
            The version name.

        Raises
        ------
        RegistryError
            Bad version name, the version exists, or required card fields are missing.
        """
        now = dt.datetime.now(dt.UTC)
        name = version if version is not None else self._next_dated(now.date())
        if not (_SEMVER.match(name) or _DATED.match(name)):
            raise RegistryError(f"version {name!r} must look like '1.0.0' or '{now:%Y.%m.%d}-1'")
        missing = [k for k in _REQUIRED if k not in card]
        if missing:
            raise RegistryError(f"model card lacks {', '.join(missing)}")
        final = self.root / name
        if final.exists():
            raise RegistryError(f"version {name} exists in {self.root}; versions are immutable")
        self.root.mkdir(parents=True, exist_ok=True)

        state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
        weights = save_safetensors(state, metadata={"arch": net.arch, "version": name})
        full: dict[str, Any] = {
            "name": "sarclym-mip-cnn",
            **dict(card),
            "version": name,
            "arch": net.arch,
            "input_size": list(net.input_size),
            "parameters": count_parameters(net),
            "created": card.get("created", now.isoformat(timespec="seconds")),
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "disclaimer": DISCLAIMER,
            "synthetic_data": bool(card.get("synthetic_data", False)),
        }
        files: list[tuple[str, bytes]] = [(WEIGHTS_FILE, weights)]
        if ood is not None:
            reference = ood.to_bytes()
            full["ood_reference"] = _ood_card(reference, ood)
            files.append((REFERENCE_FILE, reference))
        card_json = json.dumps(full, indent=2, sort_keys=False, allow_nan=True) + "\n"

        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        os.chmod(tmp, _DIR_MODE)  # mkdtemp makes 0700
        try:
            for fname, data in (
                *files,
                (CARD_FILE, card_json.encode("utf-8")),
                # What `model show` renders: the stored JSON (tuples read back as lists).
                (CARD_MD_FILE, render_card(json.loads(card_json)).encode("utf-8")),
            ):
                with open(tmp / fname, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp / fname, _FILE_MODE)
            _fsync_dir(tmp)
            if final.exists():  # rename() would replace an empty directory
                raise RegistryError(f"version {name} exists in {self.root}")
            os.rename(tmp, final)
        except BaseException:
            for child in tmp.glob("*"):
                child.unlink(missing_ok=True)
            if tmp.exists():
                tmp.rmdir()
            raise
        _fsync_dir(self.root)
        return name

    def _set_active(self, version: str, history: list[str]) -> None:
        _write_atomic(self.root / _HISTORY, (json.dumps(history) + "\n").encode("utf-8"))
        _write_atomic(self.root / _ACTIVE, (version + "\n").encode("utf-8"))

    def activations(self, version: str | None = None) -> list[dict[str, Any]]:
        """Who activated which version when (``ACTIVATIONS``), oldest first; of ``version`` only
        when given. Registries from before this record have none.

        Raises
        ------
        RegistryError
            The file is not a JSON list.
        """
        path = self.root / _ACTIVATIONS
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"activation record unreadable: {path}: {exc}") from exc
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise RegistryError(f"activation record is not a list of objects: {path}")
        return [r for r in records if version is None or r.get("version") == version]

    def _record_activation(self, version: str, record: Mapping[str, Any]) -> None:
        records = self.activations()
        records.append({"version": version, **record})
        _write_atomic(self.root / _ACTIVATIONS, (json.dumps(records, indent=1) + "\n").encode())

    def card(self, version: str) -> dict[str, Any]:
        """The version's card as registered, its change record's ``activations`` filled in.

        A version folder is never changed after registration; who activated it when lives in
        the registry's ``ACTIVATIONS`` and is merged here (``model show``, the dashboard).
        """
        card = self._read_card(version)
        record = card.get("change_record")
        if isinstance(record, dict):
            record["activations"] = [
                {k: v for k, v in a.items() if k != "version"} for a in self.activations(version)
            ]
        return card

    def activate(
        self,
        version: str,
        *,
        min_auc: float,
        force: bool = False,
        by: str | None = None,
        forced_gates: tuple[str, ...] = (),
    ) -> None:
        """Make ``version`` the active one, if its cross-validated AUC passes the gate.

        Parameters
        ----------
        version : str
            A registered version.
        min_auc : float
            Gate on the card's ``cv_metrics.auc.mean``.
        force : bool, optional
            Activate even below the gate or without CV metrics.
        by : str or None, optional
            Who activates (recorded in ``ACTIVATIONS`` with the time); ``None``: not recorded
            by name (``"unknown"``).
        forced_gates : tuple of str, optional
            Gates of the caller that ``force`` overrode (recorded), besides this one's
            ``"cv_auc"`` when it was below the gate.

        Raises
        ------
        RegistryError
            Unknown version, unreadable card, or (unless ``force``) an AUC below ``min_auc`` or
            none recorded.
        """
        if not (self.root / version).is_dir():
            raise RegistryError(f"no version {version!r} in {self.root}")
        card = self._read_card(version)
        auc = auc_mean(card)
        overridden = list(forced_gates)
        if force and (auc is None or auc < min_auc):
            overridden.append("cv_auc")
        if not force:
            if auc is None:
                raise RegistryError(
                    f"version {version} has no cross-validated AUC; gate is {min_auc:.3f} "
                    "(--force / force=True activates anyway)"
                )
            if auc < min_auc:
                raise RegistryError(
                    f"version {version} has cross-validated AUC {auc:.3f} < gate "
                    f"{min_auc:.3f} (--force / force=True activates anyway)"
                )
        history = self._history()
        if not history or history[-1] != version:
            history.append(version)
        self._set_active(version, history)
        self._record_activation(
            version,
            {
                "weights_sha256": card.get("weights_sha256"),
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "by": by or "unknown",
                "action": "activate",
                "forced": bool(overridden),
                "forced_gates": overridden,
            },
        )

    def rollback(self, *, by: str | None = None) -> str:
        """Re-activate the version that was active before the current one.

        Returns
        -------
        str
            The version now active.

        Raises
        ------
        RegistryError
            No earlier activation to go back to, or its folder is gone.
        """
        history = self._history()
        if len(history) < 2:
            raise RegistryError(f"nothing to roll back to in {self.root}")
        history.pop()
        previous = history[-1]
        if not (self.root / previous).is_dir():
            raise RegistryError(f"previous version {previous} is missing from {self.root}")
        self._set_active(previous, history)
        self._record_activation(
            previous,
            {
                "weights_sha256": self._read_card(previous).get("weights_sha256"),
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "by": by or "unknown",
                "action": "rollback",
                "forced": False,
                "forced_gates": [],
            },
        )
        return previous

    def load(self, version: str | None = None) -> LoadedModel:
        """Load a version (default: the active one) after verifying its weights' SHA-256.

        Parameters
        ----------
        version : str or None, optional
            Version name; ``None`` loads the active version.

        Returns
        -------
        LoadedModel

        Raises
        ------
        RegistryError
            No active version, missing or unreadable card or weights, SHA-256 mismatch, or
            weights that do not fit the card's architecture. The message names the file.
        """
        if version is None:
            version = self.active()
            if version is None:
                raise RegistryError(f"no active model version in {self.root}")
        card = self._read_card(version)
        path = self.root / version / WEIGHTS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise RegistryError(f"weights file missing: {path}") from exc
        except OSError as exc:
            raise RegistryError(f"weights file unreadable: {path}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        expected = card.get("weights_sha256")
        if digest != expected:
            raise RegistryError(
                f"SHA-256 of {path} is {digest}, model card says {expected}: file modified "
                "or corrupt"
            )
        try:
            size = card["input_size"]
            net = build_net(str(card["arch"]), input_size=(int(size[0]), int(size[1])))
            state = load_safetensors(data)
            net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError, SafetensorError) as exc:
            raise RegistryError(
                f"cannot build the model of {self._card_path(version)} from {path}: {exc}"
            ) from exc
        net.eval()
        ood = self._load_ood(version, card)
        return LoadedModel(net=net, card=card, sha256=digest, version=version, ood=ood)

    def ood_reference(self, version: str) -> OodReference | None:
        """The version's out-of-distribution reference, ``None`` when it was registered without.

        Raises
        ------
        RegistryError
            Unknown version, or the reference named in the card is missing or modified.
        """
        return self._load_ood(version, self._read_card(version))

    def _load_ood(self, version: str, card: Mapping[str, Any]) -> OodReference | None:
        named = card.get("ood_reference")
        if named is None:
            return None
        path = self.root / version / REFERENCE_FILE
        if not isinstance(named, Mapping) or not isinstance(named.get("threshold"), int | float):
            raise RegistryError(
                f"{self._card_path(version)}: ood_reference must be an object with a numeric "
                "threshold"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RegistryError(
                f"OOD reference named in the card unreadable: {path}: {exc}"
            ) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != named.get("sha256"):
            raise RegistryError(
                f"SHA-256 of {path} is {digest}, model card says {named.get('sha256')}: file "
                "modified or corrupt"
            )
        try:
            return OodReference.from_bytes(data, threshold=float(named["threshold"]))
        except ValueError as exc:
            raise RegistryError(f"{path}: {exc}") from exc

    def add_ood_reference(self, version: str, reference: OodReference) -> None:
        """Give a version registered without one its OOD reference (once; never replaced).

        The weights, and so the SHA-256 every output names, stay as they are: the reference
        file is added and the card (and its Markdown) rewritten with ``ood_reference``, each
        atomically, the file first, so a crash leaves the version as it was or complete. Used
        for versions made before OOD scores existed (the shipped default); ``retrain`` writes
        the reference with the version (:meth:`register`).

        Raises
        ------
        RegistryError
            Unknown version, or it already has a reference.
        """
        if not (self.root / version).is_dir():
            raise RegistryError(f"no version {version!r} in {self.root}")
        card = self._read_card(version)
        if "ood_reference" in card or (self.root / version / REFERENCE_FILE).exists():
            raise RegistryError(
                f"version {version} already has an OOD reference; a reference is never replaced"
            )
        data = reference.to_bytes()
        _write_atomic(self.root / version / REFERENCE_FILE, data)
        card["ood_reference"] = _ood_card(data, reference)
        text = json.dumps(card, indent=2, sort_keys=False, allow_nan=True) + "\n"
        _write_atomic(self.root / version / CARD_MD_FILE, render_card(card).encode("utf-8"))
        _write_atomic(self._card_path(version), text.encode("utf-8"))


def _ood_card(data: bytes, reference: OodReference) -> dict[str, Any]:
    """The card's ``ood_reference``: file, SHA-256 and the reference's fields."""
    return {
        "file": REFERENCE_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        **reference.card_fields(),
    }
