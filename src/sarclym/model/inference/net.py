"""The CNNs that tell sarcoidosis from malignant lymphoma on frontal and lateral FDG MIPs.

Input: a float tensor ``(B, 2, H, W)`` in [0, 1]; channel 0 is the frontal MIP, channel 1 the
lateral MIP, both as :attr:`sarclym.model.imaging.mip.Mips.frontal_net` / ``lateral_net`` (one
common mm-per-pixel scale, centred on a zero background). Output: one logit per case, shape
``(B,)``; the positive class is malignant lymphoma (``sigmoid(logit)`` = P(lymphoma)).

Five architectures, selected by name through :func:`build_net`, compared by measurement
(see ``model/train.py`` and the report of the issue that added them):

``two_channel``
    One small CNN over the 2-channel image. The views share every filter and are mixed from
    the first convolution on, so there is only one Grad-CAM map for both views.
``two_branch``
    One small CNN per view (separate weights: a frontal and a lateral MIP do not look alike),
    global-average-pooled features concatenated before the classifier. Gives one Grad-CAM per
    view naturally.
``two_branch_resnet``
    As ``two_branch`` with residual blocks (He et al. 2016, basic block) in each branch.
    Randomly initialised: nothing is downloaded, no pretrained weights.
``two_branch_grid``
    As ``two_branch``, but each view's features are average-pooled over a coarse grid of
    :data:`GRID` cells (eight bands from head to thighs, four across)
    instead of the whole image, so the classifier knows *where* the uptake is. Which sites are
    involved is what tells the two diseases apart (cervical and bulky nodes vs symmetric hilar and
    mediastinal ones); global pooling throws the location away. Measured on the synthetic cohort
    (one 400/100 split, 256x128, 30 epochs): AUC 0.85 vs 0.75 for ``two_branch``.
``two_branch_grid_pool2``
    As ``two_branch_grid`` on an input of twice the size in each direction (e.g. 512x256),
    max-pooled 2x2 before the first convolution: the network computes at the half size, but a
    lymph node of 1-3 pixels keeps its peak, where resizing the MIP to the half size would have
    smoothed it away (anti-aliasing). Inputs must be multiples of ``2 * STRIDE``. Measured
    on the synthetic cohort (2000 studies of phantom 2, fold 1 of the 5-fold split, 24
    epochs; Bayes ceiling 0.989 on that fold): AUC 0.942 at 512x256 vs 0.917 for
    ``two_branch_grid`` at 256x128 (paired DeLong: +0.024, 95% CI 0.013-0.036, p < 0.001; a
    max-filtered 256x128 input gave 0.939). Pooling the grid cells by their maximum instead
    (0.913), or both (0.914), and a wider SUV window 0-20 (0.902) did not help. On the same
    fold with this network at 512x256: 48 epochs 0.946 vs 0.942 for 24 (training loss still
    falling: 0.22 vs 0.30); at 24 epochs, a hidden layer of 32 in the head (0.933), a wider
    trunk (16-32-64-64, 125k parameters: 0.938), left-right flips of the frontal view (0.928)
    and no augmentation (0.911, training loss 0.06) all did worse: with 1600 training cases the
    network is limited by what it can generalise, not by its capacity. How large the noise of
    one such run is: the same 48-epoch run after a change that altered only float rounding
    (the augmentation's sampling grid, equal to 1e-6) gave 0.939 on that fold, so differences
    under about 0.01 on one fold are not findings. Averaging the weights (EMA, decay 0.998 or
    0.9995) gave 0.939 and averaging the logits of 4, 8 or 16 augmented copies of each test
    input 0.938-0.939: no gain either; another training seed gave 0.948 (three runs of 1600
    cases: 0.944 on average). Learning curve on that fold (48 epochs, a stratified part of the
    training cases): 400 cases 0.904, 800 cases 0.932, 1600 cases 0.944. The gap to the
    ceiling shrinks by 0.67x and then 0.79x a doubling; extrapolated at those rates, 0.97 of
    the ceiling needs about 3300-5400 training cases (4000-7000 studies), more if the curve
    flattens further: a rough figure from single runs.

All nets are small (tens of thousands to about two hundred thousand parameters), use
BatchNorm, dropout before the classifier and global average pooling, and are fully
convolutional up to the pooling: ``input_size`` must be a multiple of :data:`STRIDE` so that
Grad-CAM cells tile the input exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "GRID",
    "STRIDE",
    "VIEWS",
    "MipNet",
    "TwoBranchNet",
    "TwoChannelNet",
    "build_net",
    "count_parameters",
]

#: Names accepted by :func:`build_net`.
ARCHITECTURES = (
    "two_channel",
    "two_branch",
    "two_branch_resnet",
    "two_branch_grid",
    "two_branch_grid_pool2",
)
#: Pooling grid (rows, columns) of ``two_branch_grid``.
GRID = (8, 4)
#: View names, in channel order.
VIEWS = ("frontal", "lateral")
#: Total down-sampling from the input to the Grad-CAM layer (cells of STRIDE x STRIDE pixels).
STRIDE = 8

_WIDTHS = (8, 16, 32, 64)
#: Architectures whose input is max-pooled before the trunk, and by how much.
_STEM_POOL = {"two_branch_grid_pool2": 2}
_DROPOUT = 0.3


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _ResidualBlock(nn.Module):
    """Basic residual block: two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + self.shortcut(x))
        return result


def _plain_trunk(c_in: int, widths: Sequence[int]) -> nn.Sequential:
    """Stride-8 trunk: 5x5 stride-2 stem, two conv+pool stages, one conv stage."""
    w0, w1, w2, w3 = widths
    return nn.Sequential(
        _conv_bn_relu(c_in, w0, kernel=5, stride=2),  # H/2
        nn.MaxPool2d(2),  # H/4
        _conv_bn_relu(w0, w1),
        nn.MaxPool2d(2),  # H/8
        _conv_bn_relu(w1, w2),
        _conv_bn_relu(w2, w3),  # Grad-CAM layer
    )


def _residual_trunk(c_in: int, widths: Sequence[int]) -> nn.Sequential:
    """Stride-8 residual trunk: stem, max-pool, three basic blocks (the second strided)."""
    w0, w1, w2, w3 = widths
    return nn.Sequential(
        _conv_bn_relu(c_in, w0, kernel=5, stride=2),  # H/2
        nn.MaxPool2d(2),  # H/4
        _ResidualBlock(w0, w1),
        _ResidualBlock(w1, w2, stride=2),  # H/8
        _ResidualBlock(w2, w3),  # Grad-CAM layer
    )


def _stem(factor: int, trunk: nn.Sequential) -> nn.Sequential:
    """``trunk``, preceded by a ``factor`` x ``factor`` max-pool when ``factor`` > 1.

    The pool is prepended inside the same ``nn.Sequential`` (so ``trunk[-1]`` stays the
    Grad-CAM layer); with ``factor`` 1 the trunk is returned as it is and its parameter names
    (``frontal.0.0.weight``, ...) are those of the weights saved before this option existed.
    """
    if factor == 1:
        return trunk
    return nn.Sequential(nn.MaxPool2d(factor), *trunk)


def _head(n_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(_DROPOUT), nn.Linear(n_features, 1))


class MipNet(nn.Module):
    """Base class: the input-size check and the interface every architecture offers.

    Parameters
    ----------
    arch : str
        Architecture name (one of :data:`ARCHITECTURES`).
    input_size : tuple of int
        ``(H, W)`` of each view.
    cells : int, optional
        Cells each view's features are pooled over (the grid's rows times columns; 1 when
        pooled globally): what :func:`~sarclym.model.inference.ood.feature_layout` groups by.
    """

    def __init__(self, arch: str, input_size: tuple[int, int], cells: int = 1) -> None:
        super().__init__()
        self.arch = arch
        self.input_size = (int(input_size[0]), int(input_size[1]))
        #: Pooling cells per view of the penultimate features (1: pooled globally).
        self.cells = cells

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 2 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"{self.arch} expects input (B, 2, {self.input_size[0]}, {self.input_size[1]}), "
                f"got {tuple(x.shape)}"
            )

    def cam_layers(self) -> dict[str, nn.Module]:
        """The layer whose output Grad-CAM explains, per view (``"frontal"``, ``"lateral"``).

        Returns
        -------
        dict of str to torch.nn.Module
            Output of each layer is ``(B, C, H / STRIDE, W / STRIDE)``.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


class TwoChannelNet(MipNet):
    """``two_channel``: one CNN over both views stacked as channels.

    Both entries of :meth:`cam_layers` are the same layer: the views are mixed in the first
    convolution, so the Grad-CAM map is shared (it marks where, on the common grid, either view
    carries the evidence).
    """

    def __init__(self, input_size: tuple[int, int], widths: Sequence[int] = _WIDTHS) -> None:
        super().__init__("two_channel", input_size)
        self.features = _plain_trunk(2, widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = _head(widths[-1])

    def cam_layers(self) -> dict[str, nn.Module]:
        layer = self.features[-1]
        return {"frontal": layer, "lateral": layer}

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        f = self.pool(self.features(x)).flatten(1)
        logit: Tensor = self.head(f).squeeze(1)
        return logit


class TwoBranchNet(MipNet):
    """``two_branch`` and ``two_branch_resnet``: one trunk per view, features concatenated.

    Parameters
    ----------
    input_size : tuple of int
        ``(H, W)`` of each view.
    residual : bool, optional
        Residual trunks (``two_branch_resnet``) instead of plain ones.
    grid : tuple of int or None, optional
        Pool the features over this (rows, columns) grid instead of globally
        (``two_branch_grid``).
    stem_pool : int, optional
        Max-pool the input by this factor before each trunk (``two_branch_grid_pool2``: 2).
    widths : sequence of int, optional
        Channels of the four stages of each trunk.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        *,
        residual: bool = False,
        grid: tuple[int, int] | None = None,
        stem_pool: int = 1,
        widths: Sequence[int] = _WIDTHS,
    ) -> None:
        if residual:
            name = "two_branch_resnet"
        elif grid is None:
            name = "two_branch"
        else:
            name = "two_branch_grid" if stem_pool == 1 else f"two_branch_grid_pool{stem_pool}"
        cells = grid or (1, 1)
        super().__init__(name, input_size, cells=cells[0] * cells[1])
        trunk = _residual_trunk if residual else _plain_trunk
        self.frontal = _stem(stem_pool, trunk(1, widths))
        self.lateral = _stem(stem_pool, trunk(1, widths))
        self.pool = nn.AdaptiveAvgPool2d(cells)
        self.head = _head(2 * widths[-1] * cells[0] * cells[1])

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"frontal": self.frontal[-1], "lateral": self.lateral[-1]}

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        f = self.pool(self.frontal(x[:, 0:1])).flatten(1)
        lat = self.pool(self.lateral(x[:, 1:2])).flatten(1)
        logit: Tensor = self.head(torch.cat((f, lat), dim=1)).squeeze(1)
        return logit


def build_net(arch: str, *, input_size: tuple[int, int]) -> MipNet:
    """Build an untrained network by architecture name.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    input_size : tuple of int
        ``(H, W)`` of each view; both positive multiples of :data:`STRIDE` and at least
        ``4 * STRIDE``.

    Returns
    -------
    MipNet
        In training mode, parameters initialised from torch's global RNG (seed it first for a
        reproducible start).

    Raises
    ------
    ValueError
        Unknown ``arch`` or unusable ``input_size``.
    """
    size = (int(input_size[0]), int(input_size[1]))
    step = _STEM_POOL.get(arch, 1) * STRIDE
    if len(input_size) != 2 or min(size) < 4 * step or size[0] % step or size[1] % step:
        raise ValueError(
            f"input_size {tuple(input_size)} must be two multiples of {step}, "
            f"each at least {4 * step}"
        )
    if arch == "two_channel":
        return TwoChannelNet(size)
    if arch == "two_branch":
        return TwoBranchNet(size)
    if arch == "two_branch_resnet":
        return TwoBranchNet(size, residual=True)
    if arch == "two_branch_grid":
        return TwoBranchNet(size, grid=GRID)
    if arch in _STEM_POOL:
        return TwoBranchNet(size, grid=GRID, stem_pool=_STEM_POOL[arch])
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


def count_parameters(net: nn.Module) -> int:
    """Number of parameters of ``net``: the ``parameters`` of a model card.

    Every parameter of these nets is trained (BatchNorm's running statistics are buffers, not
    parameters), so this is also the number of trainable ones.
    """
    return sum(p.numel() for p in net.parameters())
