"""How far a study lies from the model's training cases: an out-of-distribution (OOD) score.

Features are the network's penultimate activations: the input of its classifier (``net.head``),
both views' pooled features concatenated. They are taken by a forward pre-hook during the one
forward pass that also gives the probability (:class:`FeatureTap`), so scoring costs no second
pass. They fall into groups, one per view and pooling cell (:func:`feature_layout`): for
``two_branch_grid`` 2 views x 32 cells (8 bands from head to thighs, 4 across) of 64 channels;
for the globally pooled nets one group per view.

Each group gets a Mahalanobis reference (Lee et al., NeurIPS 2018, on penultimate features)
fitted on training-distribution cases:

* mean ``m`` and the Ledoit-Wolf shrunk covariance ``(1 - a) S + a mu I`` (Ledoit and Wolf,
  J Multivar Anal 2004; ``mu = tr(S) / d``), kept as its ``k`` leading eigenpairs plus one
  variance for the rest of the group's space (the remaining eigenvalues' mean: probabilistic
  PCA, Tipping and Bishop 1999). With ``k`` at least the group size this is the exact shrunk
  distance;
* plus a variance floor, :data:`DEFAULT_FLOOR` times the mean variance of all features, on
  every eigenvalue: a cell that is dark in every training case (above the head, where the
  phantom never has arms) would otherwise have almost no variance, and the faintest activation
  there would be infinitely far.

    d_g(x) = sqrt( (sum_i (v_i . z)^2 / l_i  +  |z - V V^T z|^2 / r) / d ),  z = f_g(x) - m_g
    score(x) = max over groups g of d_g(x)

(a typical training case scores about 1 in each group). The maximum, not the sum, over groups:
what sets a real scan apart is local (arms above the head, bowel and bladder uptake) and a sum
over 64 groups would dilute it. Measured on the shipped default model (the reference in its
card): the real whole-body scan scores several times the threshold; the whole-feature
Mahalanobis distance put it at about 1.2 times the held-out 99th percentile. Mahalanobis
rather than k-nearest neighbours: means and a few eigenvectors per group are a small file that
holds no training case, and scoring is a few small matrix products.

The threshold is set on held-out cases that the reference was not fitted on (by default the
99th percentile of their scores), so that at least 95% of held-out studies of the training
distribution score inside, with margin. A score above the threshold means "outside the model's
training data": the probability is then not to be trusted, whatever its value.

Stored in a model version's folder as :data:`REFERENCE_FILE` (safetensors, float32: ``mean``,
``components``, ``eigenvalues``, ``residual_variance``; its metadata repeats the JSON fields)
and named, with its SHA-256 and those fields, under ``ood_reference`` in the model card.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from torch import Tensor, nn

from sarclym.model.inference.net import MipNet

__all__ = [
    "DEFAULT_COMPONENTS",
    "DEFAULT_FLOOR",
    "DEFAULT_PERCENTILE",
    "METHOD",
    "REFERENCE_FILE",
    "FeatureTap",
    "OodReference",
    "OodScore",
    "extract_features",
    "feature_layout",
    "fit_reference",
    "set_threshold",
]

#: File name of the reference in a version folder.
REFERENCE_FILE = "ood_reference.safetensors"
#: Name of the method, written into the file and the card.
METHOD = (
    "max over (view, pooling cell) of the Ledoit-Wolf shrunk Mahalanobis distance of the "
    "penultimate features"
)
#: Percentile of held-out scores that sets the threshold.
DEFAULT_PERCENTILE = 99.0
#: Leading eigenpairs kept per group (the rest of the group's space gets one variance).
DEFAULT_COMPONENTS = 32
#: Variance floor, as a fraction of the mean variance of all features.
DEFAULT_FLOOR = 1e-3


@dataclass(frozen=True)
class OodScore:
    """One study's distance from the training cases.

    Attributes
    ----------
    score : float
        The largest scaled Mahalanobis distance over feature groups (about 1 for a typical
        training case).
    threshold : float
        The version's threshold.
    outside : bool
        ``score > threshold``: the study is outside the model's training data.
    """

    score: float
    threshold: float
    outside: bool


def feature_layout(net: MipNet) -> tuple[int, int, int]:
    """``(views, channels, cells)`` of ``net``'s penultimate features.

    Each view's block is ``channels x cells`` in channel-major order (``pool(...).flatten(1)``),
    views one after the other.

    Raises
    ------
    ValueError
        The net has no linear classifier head.
    """
    head = getattr(net, "head", None)
    linear = head[-1] if isinstance(head, nn.Sequential) and len(head) else None
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{type(net).__name__} has no linear classifier head")
    views = 1 if net.arch == "two_channel" else 2
    return views, linear.in_features // (views * net.cells), net.cells


def _grouped(features: np.ndarray, layout: tuple[int, int, int]) -> np.ndarray:
    """``(N, views * channels * cells)`` -> ``(N, views * cells, channels)``."""
    views, channels, cells = layout
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != views * channels * cells:
        raise ValueError(
            f"features of shape {f.shape} do not fit the OOD reference's "
            f"{views * channels * cells} features ({views} views x {channels} channels x "
            f"{cells} cells)"
        )
    n = f.shape[0]
    return f.reshape(n, views, channels, cells).transpose(0, 1, 3, 2).reshape(n, -1, channels)


def _shrunk_eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, eigenvectors (d, r), eigenvalues (r,) of the Ledoit-Wolf shrunk covariance, and the
    eigenvalue every direction outside the r leading ones has (``a mu``)."""
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    gram = xc @ xc.T  # (n, n): every quantity below without forming the d x d covariance
    trace_s = float(np.trace(gram)) / n
    mu = trace_s / d
    frob_s2 = float(np.sum(gram * gram)) / n**2  # |S|_F^2
    delta2 = frob_s2 - 2 * mu * trace_s + mu * mu * d  # |S - mu I|_F^2
    norms2 = np.diag(gram)
    # (1/n^2) sum_k |x_k x_k^T - S|_F^2 = (1/n^2) sum_k (|x_k|^4 - 2 x_k^T S x_k + |S|_F^2)
    xsx = np.sum(gram * gram, axis=1) / n
    beta2 = float(np.sum(norms2**2 - 2 * xsx) / n**2 + frob_s2 / n)
    shrink = 1.0 if delta2 <= 1e-300 else min(1.0, max(0.0, beta2 / delta2))
    _, sing, vt = np.linalg.svd(xc, full_matrices=False)
    eig_s = sing**2 / n
    keep = eig_s > eig_s.max(initial=0.0) * 1e-10
    vectors = vt[keep].T
    values = (1.0 - shrink) * eig_s[keep] + shrink * mu
    return mean, vectors, values, shrink * mu


@dataclass(frozen=True)
class OodReference:
    """A fitted reference and its threshold; ``G`` groups of ``d`` features, ``k`` components.

    Attributes
    ----------
    mean : numpy.ndarray
        float32 ``(G, d)``.
    components : numpy.ndarray
        float32 ``(G, d, k)``: orthonormal leading eigenvectors of each group's covariance
        (columns of zeros where a group has fewer than ``k``, with eigenvalue 1).
    eigenvalues : numpy.ndarray
        float32 ``(G, k)``, positive.
    residual_variance : numpy.ndarray
        float32 ``(G,)``: variance of every direction orthogonal to a group's components.
    threshold : float
        Score above which a study is outside the training data.
    meta : dict
        ``method``, ``layout`` (views, channels, cells), ``feature_size``, ``components``,
        ``variance_floor``, ``n_fit``; after :func:`set_threshold` also ``n_calibration``,
        ``percentile``, ``calibration_inside_fraction`` and the caller's (``seed``,
        ``source``, ``command``): JSON values only.
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    residual_variance: np.ndarray
    threshold: float
    meta: Mapping[str, Any]

    @property
    def layout(self) -> tuple[int, int, int]:
        views, channels, cells = self.meta["layout"]
        return int(views), int(channels), int(cells)

    def group_scores(self, features: np.ndarray) -> np.ndarray:
        """Scaled distance of each group, float64 ``(N, G)``, from ``(N, features)``.

        Raises
        ------
        ValueError
            The features do not have the reference's size.
        """
        z = _grouped(features, self.layout) - self.mean.astype(np.float64)
        proj = np.einsum("ngd,gdk->ngk", z, self.components.astype(np.float64))
        inside = np.sum(proj**2 / self.eigenvalues.astype(np.float64), axis=2)
        rest = np.maximum(np.sum(z * z, axis=2) - np.sum(proj**2, axis=2), 0.0)
        d2 = inside + rest / self.residual_variance.astype(np.float64)
        return np.sqrt(d2 / z.shape[2])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Scores (the largest group distance) of ``(N, features)``: float64 ``(N,)``."""
        return self.group_scores(features).max(axis=1)

    def judge(self, features: np.ndarray) -> OodScore:
        """The :class:`OodScore` of one case's features (a flat vector)."""
        score = float(self.scores(np.asarray(features).reshape(1, -1))[0])
        return OodScore(score=score, threshold=self.threshold, outside=score > self.threshold)

    # -- file ---------------------------------------------------------------------------------

    def card_fields(self) -> dict[str, Any]:
        """What the model card says of the reference (without file name and SHA-256)."""
        return {**dict(self.meta), "threshold": self.threshold}

    def to_bytes(self) -> bytes:
        """The reference as safetensors bytes (float32 arrays; JSON fields in the metadata)."""
        arrays = {
            "mean": np.ascontiguousarray(self.mean, dtype=np.float32),
            "components": np.ascontiguousarray(self.components, dtype=np.float32),
            "eigenvalues": np.ascontiguousarray(self.eigenvalues, dtype=np.float32),
            "residual_variance": np.ascontiguousarray(self.residual_variance, dtype=np.float32),
        }
        fields = json.dumps(self.card_fields(), sort_keys=True)
        return save_arrays(arrays, metadata={"ood_reference": fields})

    @classmethod
    def from_bytes(cls, data: bytes, *, threshold: float | None = None) -> OodReference:
        """Read :meth:`to_bytes`' output; ``threshold`` (the card's) wins over the file's.

        Raises
        ------
        ValueError
            Missing arrays or fields, inconsistent shapes, non-positive variances, no
            threshold.
        """
        try:
            arrays = load_arrays(data)
            mean = arrays["mean"]
            components = arrays["components"]
            eigenvalues = arrays["eigenvalues"]
            residual = arrays["residual_variance"]
            meta = _file_fields(data)
            views, channels, cells = (int(v) for v in meta["layout"])
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"not an OOD reference: {exc}") from exc
        g, d = mean.shape if mean.ndim == 2 else (-1, -1)
        k = eigenvalues.shape[1] if eigenvalues.ndim == 2 else -1
        if (
            (g, d) != (views * cells, channels)
            or components.shape != (g, d, k)
            or eigenvalues.shape != (g, k)
            or residual.shape != (g,)
        ):
            raise ValueError(
                f"OOD reference arrays do not fit its layout {meta['layout']}: mean "
                f"{mean.shape}, components {components.shape}, eigenvalues "
                f"{eigenvalues.shape}, residual variance {residual.shape}"
            )
        if not (np.all(eigenvalues > 0) and np.all(residual > 0)):
            raise ValueError("OOD reference variances must be positive")
        chosen = threshold if threshold is not None else meta.get("threshold")
        meta.pop("threshold", None)
        if not isinstance(chosen, int | float):
            raise ValueError("OOD reference has no threshold")
        return cls(mean, components, eigenvalues, residual, float(chosen), meta)


def _file_fields(data: bytes) -> dict[str, Any]:
    # safetensors' header: 8-byte little-endian length, then JSON with "__metadata__".
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = (header.get("__metadata__") or {}).get("ood_reference", "{}")
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("metadata ood_reference is not a JSON object")
    return fields


def fit_reference(
    fit_features: np.ndarray,
    *,
    layout: tuple[int, int, int],
    components: int = DEFAULT_COMPONENTS,
    floor: float = DEFAULT_FLOOR,
) -> OodReference:
    """Fit each group's mean and shrunk covariance on ``fit_features``; threshold ``inf``.

    Parameters
    ----------
    fit_features : numpy.ndarray
        ``(n, features)`` penultimate features of training-distribution cases (the training
        cases).
    layout : tuple of int
        ``(views, channels, cells)`` (:func:`feature_layout` of the net).
    components : int, optional
        Leading eigenpairs kept per group.
    floor : float, optional
        Variance floor as a fraction of the mean variance of all features (0: none).

    Raises
    ------
    ValueError
        Fewer than 3 cases, features that do not fit ``layout``, or non-finite features.
    """
    fit = np.asarray(fit_features, dtype=np.float64)
    if fit.ndim != 2 or fit.shape[0] < 3:
        raise ValueError(f"an OOD reference needs (n >= 3, features) features, got {fit.shape}")
    if not np.isfinite(fit).all():
        raise ValueError("features are not all finite")
    groups = _grouped(fit, layout)
    n, g, d = groups.shape
    k = max(1, min(int(components), d))
    added = float(floor) * float(fit.var(axis=0).mean())
    means = np.zeros((g, d))
    vectors = np.zeros((g, d, k))
    values = np.ones((g, k))
    residual = np.zeros(g)
    for j in range(g):
        mean, vec, val, outside = _shrunk_eigen(groups[:, j, :])
        kept = min(k, val.shape[0])
        means[j] = mean
        vectors[j, :, :kept] = vec[:, :kept]
        values[j, :kept] = val[:kept] + added
        # Eigenvalues beyond k (in the fitted span, then a mu elsewhere) become one variance.
        rest = (float(val[kept:].sum()) + outside * (d - val.shape[0])) / max(d - kept, 1)
        residual[j] = max(rest, outside) + added
    residual = np.maximum(residual, 1e-12)
    values = np.maximum(values, 1e-12)
    fields: dict[str, Any] = {
        "method": METHOD,
        "layout": list(layout),
        "feature_size": int(fit.shape[1]),
        "groups": g,
        "components": k,
        "variance_floor": float(floor),
        "n_fit": int(n),
    }
    return OodReference(
        means.astype(np.float32),
        vectors.astype(np.float32),
        values.astype(np.float32),
        residual.astype(np.float32),
        float("inf"),
        fields,
    )


def set_threshold(
    reference: OodReference,
    calibration_scores: np.ndarray,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    meta: Mapping[str, Any] | None = None,
) -> OodReference:
    """The reference with its threshold at ``percentile`` of held-out cases' scores.

    Parameters
    ----------
    reference : OodReference
        From :func:`fit_reference`.
    calibration_scores : numpy.ndarray
        Scores of held-out cases of the training distribution, not among the fitted ones
        (:meth:`OodReference.scores` of their features, or out-of-fold scores).
    percentile : float, optional
        In (50, 100].
    meta : mapping or None, optional
        JSON fields to record (``seed``, ``source``, ``command``).

    Raises
    ------
    ValueError
        Fewer than 20 scores, non-finite ones, or a percentile outside (50, 100].
    """
    scores = np.asarray(calibration_scores, dtype=np.float64).reshape(-1)
    if scores.size < 20 or not np.isfinite(scores).all():
        raise ValueError(f"a threshold needs >= 20 finite held-out scores, got {scores.size}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile {percentile} outside (50, 100]")
    threshold = float(np.percentile(scores, percentile))
    fields = {
        **dict(reference.meta),
        "n_calibration": int(scores.size),
        "percentile": float(percentile),
        "calibration_inside_fraction": float(np.mean(scores <= threshold)),
        **dict(meta or {}),
    }
    return dataclasses.replace(reference, threshold=threshold, meta=fields)


class FeatureTap:
    """Captures the penultimate features (the classifier's input) of every forward pass.

    Use as a context manager around the forward pass::

        with FeatureTap(net) as tap:
            logits = net(x)
        features = tap.features  # (B, d) float64 numpy

    Parameters
    ----------
    net : MipNet
        Any net of :func:`~sarclym.model.inference.net.build_net` (they all have ``head``).
    """

    def __init__(self, net: MipNet) -> None:
        head = getattr(net, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError(f"{type(net).__name__} has no classifier head to take features from")
        self._head = head
        self._captured: Tensor | None = None
        self._handle: Any = None

    def _hook(self, _module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        self._captured = inputs[0].detach()

    def __enter__(self) -> FeatureTap:
        self._handle = self._head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def features(self) -> np.ndarray:
        """The last forward pass's ``(B, d)`` features, float64.

        Raises
        ------
        RuntimeError
            No forward pass ran inside the context.
        """
        if self._captured is None:
            raise RuntimeError("no forward pass was tapped")
        return self._captured.to("cpu", torch.float64).numpy()


@contextmanager
def _eval(net: MipNet) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def extract_features(net: MipNet, x: np.ndarray | Tensor, *, batch_size: int = 64) -> np.ndarray:
    """Penultimate features of ``(N, 2, H, W)`` inputs, in eval mode, in batches.

    Returns
    -------
    numpy.ndarray
        float64 ``(N, d)``.
    """
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x)
    device = next(net.parameters()).device
    out: list[np.ndarray] = []
    with _eval(net), torch.no_grad(), FeatureTap(net) as tap:
        for start in range(0, inputs.shape[0], batch_size):
            net(inputs[start : start + batch_size].to(device))
            out.append(tap.features)
    if not out:
        return np.zeros((0, 0), np.float64)
    return np.concatenate(out)
