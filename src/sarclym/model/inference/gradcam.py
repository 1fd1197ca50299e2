"""Grad-CAM heatmaps per view, and their mapping back onto the raw MIP grid.

Grad-CAM (Selvaraju et al., ICCV 2017) by captum's :class:`~captum.attr.LayerGradCam` on the
layer each net names in :meth:`~sarclym.model.inference.net.MipNet.cam_layers`: channel weights
are the spatially averaged gradients of the explained score, the map is the ReLU of the weighted
channel sum, upsampled bilinearly to the input size and divided by its maximum (an all-zero map
stays zero: no evidence for the explained class anywhere).

For ``two_channel`` both views share one map: its cam layer mixes the views from the first
convolution on, so the map says where on the common grid the evidence lies, in either view.

The explained score is the logit for lymphoma, negated for sarcoidosis; by default the
predicted class is explained (the paper's heatmaps show where the model looked for its answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from captum.attr import LayerGradCam
from scipy.ndimage import map_coordinates
from torch import Tensor, nn

from sarclym.model.imaging.mip import Mips
from sarclym.model.inference.net import VIEWS, MipNet

__all__ = ["ExplainedClass", "cams_to_mip_grid", "gradcam", "to_mip_grid"]

#: Which class a heatmap explains: the predicted one, or a fixed one.
ExplainedClass = Literal["predicted", "lymphoma", "sarcoidosis"]


def _normalise(cam: Tensor) -> np.ndarray:
    out = cam.detach().to("cpu", torch.float32).numpy().astype(np.float32, copy=True)
    peak = float(out.max()) if out.size else 0.0
    if peak > 0.0:
        out /= np.float32(peak)
    else:
        out[:] = 0.0
    return np.clip(out, 0.0, 1.0)


def gradcam(
    net: MipNet, x: Tensor, *, explain: ExplainedClass = "predicted"
) -> dict[str, np.ndarray]:
    """Grad-CAM of one case, one map per view.

    Parameters
    ----------
    net : MipNet
        A network from :func:`~sarclym.model.inference.net.build_net`. Evaluated in eval mode
        (BatchNorm running statistics, no dropout); its previous mode is restored afterwards.
    x : torch.Tensor
        ``(1, 2, H, W)`` input on the net's device.
    explain : {"predicted", "lymphoma", "sarcoidosis"}, optional
        Class whose evidence is shown: the logit is explained for lymphoma, its negative for
        sarcoidosis.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"frontal"`` and ``"lateral"``: float32 ``(H, W)`` in [0, 1]. The same array values for
        both views when the net is ``two_channel``.

    Raises
    ------
    ValueError
        ``x`` is not one case of the net's input shape.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam explains one case (1, 2, H, W), got {tuple(x.shape)}")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logit = float(net(x)[0])
        if explain == "predicted":
            sign = 1.0 if logit >= 0.0 else -1.0
        elif explain in ("lymphoma", "sarcoidosis"):
            sign = 1.0 if explain == "lymphoma" else -1.0
        else:
            raise ValueError(f"explain must be predicted, lymphoma or sarcoidosis: {explain!r}")
        forward: Callable[[Tensor], Tensor] = net if sign > 0 else (lambda inputs: -net(inputs))
        size = (int(x.shape[2]), int(x.shape[3]))
        maps: dict[int, np.ndarray] = {}
        out: dict[str, np.ndarray] = {}
        layers = net.cam_layers()
        for view in VIEWS:
            layer: nn.Module = layers[view]
            key = id(layer)
            if key not in maps:
                attr = LayerGradCam(forward, layer).attribute(x, relu_attributions=True)
                up = torch.nn.functional.interpolate(
                    attr, size=size, mode="bilinear", align_corners=False
                )
                maps[key] = _normalise(up[0, 0])
            out[view] = maps[key]
        return out
    finally:
        net.train(was_training)


def to_mip_grid(
    cam: np.ndarray,
    *,
    offset: tuple[int, int],
    mip_shape: tuple[int, int],
    scale: float,
) -> np.ndarray:
    """Map a heatmap on the network grid back onto the raw MIP grid.

    Inverts :func:`sarclym.model.imaging.mip._net_input`: the raw MIP of ``mip_shape`` was resized
    to ``round(mip_shape * scale)`` pixels (capped at the net size, at least 1) by
    ``skimage.transform.resize``, which maps output pixel centres ``o`` to input coordinates
    ``(o + 0.5) * n_in / n_out - 0.5``, and pasted at ``offset``. Each raw pixel centre ``r`` is
    therefore at net coordinate ``offset + (r + 0.5) * n_out / n_in - 0.5``; the heatmap is
    sampled there bilinearly (edge values beyond the border).

    Parameters
    ----------
    cam : numpy.ndarray
        ``(H, W)`` heatmap on the network grid.
    offset : tuple of int
        ``(row, col)`` where the resized MIP starts in the net input
        (one entry of :attr:`~sarclym.model.imaging.mip.Mips.net_offsets`).
    mip_shape : tuple of int
        ``(rows, cols)`` of the raw MIP (``Mips.frontal.shape`` or ``Mips.lateral.shape``).
    scale : float
        Net pixels per raw pixel: ``Mips.pixel_spacing_mm[0] / Mips.net_pixel_spacing_mm``.

    Returns
    -------
    numpy.ndarray
        float32 ``mip_shape``, values clipped to the range of ``cam``.
    """
    if cam.ndim != 2:
        raise ValueError(f"cam must be 2-D, got shape {cam.shape}")
    if not scale > 0:
        raise ValueError(f"scale {scale} is not positive")
    n_in = (int(mip_shape[0]), int(mip_shape[1]))
    n_out = tuple(
        max(1, min(cam.shape[a], round(n_in[a] * scale))) for a in range(2)
    )  # as _net_input
    coords = [
        offset[a] + (np.arange(n_in[a], dtype=np.float64) + 0.5) * (n_out[a] / n_in[a]) - 0.5
        for a in range(2)
    ]
    rows, cols = np.meshgrid(coords[0], coords[1], indexing="ij")
    src = cam.astype(np.float64, copy=False)
    out = map_coordinates(src, [rows, cols], order=1, mode="nearest")
    lo, hi = float(cam.min()), float(cam.max())
    return np.clip(out, lo, hi).astype(np.float32)


def cams_to_mip_grid(cams: dict[str, np.ndarray], mips: Mips) -> dict[str, np.ndarray]:
    """Map both views' heatmaps onto their raw MIP grids (``mips.frontal`` / ``mips.lateral``).

    Parameters
    ----------
    cams : dict of str to numpy.ndarray
        Output of :func:`gradcam`.
    mips : Mips
        The MIPs whose ``frontal_net`` / ``lateral_net`` were the net's input.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"frontal"``: float32 ``mips.frontal.shape``; ``"lateral"``: ``mips.lateral.shape``.
    """
    scale = mips.pixel_spacing_mm[0] / mips.net_pixel_spacing_mm
    raw = {"frontal": mips.frontal, "lateral": mips.lateral}
    return {
        view: to_mip_grid(
            cams[view],
            offset=mips.net_offsets[i],
            mip_shape=(int(raw[view].shape[0]), int(raw[view].shape[1])),
            scale=scale,
        )
        for i, view in enumerate(VIEWS)
    }
