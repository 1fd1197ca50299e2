"""Turn a prepared study into a :class:`~sarclym.model.inference.prediction.Prediction`.

One :class:`Predictor` holds one verified model version, loaded once (per worker process) and
reused for every study: MIPs -> CNN -> probability and, from the same forward pass's penultimate
features, the out-of-distribution score when the version has a reference; Grad-CAM per view
mapped back onto the raw MIP grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sarclym.model.imaging.prepare import PreparedStudy
from sarclym.model.inference.gradcam import cams_to_mip_grid, gradcam
from sarclym.model.inference.ood import FeatureTap
from sarclym.model.inference.prediction import (
    MODEL_NAME,
    Label,
    ModelIdentity,
    Prediction,
    SourceInstance,
)
from sarclym.model.inference.registry import LoadedModel, Registry

__all__ = ["DEFAULT_REGISTRY", "Predictor", "resolve_device"]

#: The registry shipped with the package (``sarclym/model/default_registry/``): default weights
#: trained on the synthetic cohort.
DEFAULT_REGISTRY = Path(__file__).resolve().parents[1] / "default_registry"


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA device is usable, else ``"cpu"``.

    Raises
    ------
    ValueError
        ``"cuda"`` asked for but not available, or an unknown name.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available())")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected auto, cpu or cuda")
    return device


def _summary(card: dict[str, Any]) -> str:
    cv = card.get("cv_metrics") or {}
    auc = cv.get("auc") or {}
    data = card.get("training_data") or {}
    described = data.get("description", "") if isinstance(data, dict) else str(data)
    parts = [f"{card.get('arch', '?')} CNN on frontal+lateral SUV MIPs"]
    if described:
        parts.append(f"trained on {described}")
    if "mean" in auc:
        low, high = auc.get("ci95", [float("nan"), float("nan")])
        parts.append(
            f"{cv.get('folds', '?')}-fold CV AUC {auc['mean']:.3f} (95% CI {low:.3f}-{high:.3f})"
        )
    return "; ".join(parts)


class Predictor:
    """A loaded model version that predicts prepared studies.

    Parameters
    ----------
    loaded
        From :meth:`~sarclym.model.inference.registry.Registry.load` (hash already verified).
    device
        ``"cpu"`` or ``"cuda"`` (see :func:`resolve_device`).
    threshold
        P(lymphoma) at or above which the label is lymphoma.
    """

    def __init__(self, loaded: LoadedModel, *, device: str = "cpu", threshold: float = 0.5) -> None:
        self.loaded = loaded
        self.device = device
        self.threshold = threshold
        self.net = loaded.net.to(device).eval()
        card = loaded.card
        self.input_size = (int(card["input_size"][0]), int(card["input_size"][1]))
        self.suv_window = (float(card["suv_window"][0]), float(card["suv_window"][1]))
        self.identity = ModelIdentity(
            name=str(card.get("name", MODEL_NAME)),
            version=loaded.version,
            weights_sha256=loaded.sha256,
            summary=_summary(card),
            synthetic_training_data=bool(card.get("synthetic_data", False)),
        )

    @classmethod
    def from_registry(
        cls, root: Path | None = None, version: str | None = None, *, device: str = "auto"
    ) -> Predictor:
        """Load ``version`` (default: the active one) of the registry at ``root``.

        ``root`` ``None`` is the registry shipped with the package.
        """
        registry = Registry(DEFAULT_REGISTRY if root is None else root)
        return cls(registry.load(version), device=resolve_device(device))

    def predict(self, prepared: PreparedStudy) -> Prediction:
        """Predict a study whose series was selected and projected.

        Raises
        ------
        ValueError
            The study has no analysed series (``prepared.mips`` is ``None``), or its network
            input does not have the model's input size.
        """
        mips = prepared.mips
        if mips is None or prepared.series_instance_uid is None:
            raise ValueError(f"study {prepared.study_instance_uid}: no series was analysed")
        if mips.frontal_net.shape != self.input_size:
            raise ValueError(
                f"network input {mips.frontal_net.shape} does not match the model's "
                f"{self.input_size}: prepare the study with size={self.input_size}"
            )
        x = torch.from_numpy(
            np.stack([mips.frontal_net, mips.lateral_net])[None].astype(np.float32)
        ).to(self.device)
        with torch.no_grad(), FeatureTap(self.net) as tap:
            probability = float(torch.sigmoid(self.net(x)).item())
        ood = self.loaded.ood.judge(tap.features[0]) if self.loaded.ood is not None else None
        label: Label = "lymphoma" if probability >= self.threshold else "sarcoidosis"
        cams = gradcam(self.net, x, explain=label)
        heatmaps = cams_to_mip_grid(cams, mips)
        sources = tuple(
            SourceInstance(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in prepared.datasets
        )
        return Prediction(
            study_instance_uid=prepared.study_instance_uid,
            series_instance_uid=prepared.series_instance_uid,
            probability_lymphoma=probability,
            label=label,
            threshold=self.threshold,
            mips=mips,
            heatmaps=heatmaps,
            model=self.identity,
            source_instances=sources,
            skipped=tuple(prepared.selection.skipped),
            ood_score=None if ood is None else ood.score,
            ood_threshold=None if ood is None else ood.threshold,
            outside_training_data=None if ood is None else ood.outside,
        )
