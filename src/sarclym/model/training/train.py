"""Training and stratified k-fold cross-validation of the MIP networks.

As Aoki et al. (Eur Radiol 2023): frontal and lateral MIPs, data augmentation, 5-fold
cross-validation with per-fold accuracy, sensitivity, specificity and AUC reported as mean and
95% CI. Added here: out-of-fold probabilities pooled over the folds, with a bootstrap CI of
their AUC and their expected calibration error.

Training: AdamW, cosine learning-rate decay per step to zero, class-balanced binary
cross-entropy (each class weighs half of the loss whatever its prevalence), augmentation from
:class:`~sarclym.model.training.augment.Augmentation`, no early stopping (a fixed epoch budget keeps
the folds comparable and needs no validation split). After the last epoch the BatchNorm
statistics are recomputed exactly over the un-augmented training cases.

Determinism: for a fixed seed on the CPU, weights and probabilities are bit-identical run to
run. Every random draw comes from a seeded source (network initialisation and dropout from
torch's global RNG, seeded inside :func:`torch.random.fork_rng` so the caller's RNG state is
restored; batch order and augmentation from a private :class:`torch.Generator`), and
``torch.use_deterministic_algorithms(True)`` is on while training (restored afterwards). The
number of threads is the caller's choice (``torch.set_num_threads``); results can differ in
the last bits between thread counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sarclym.model.inference.net import MipNet, build_net
from sarclym.model.inference.ood import extract_features, feature_layout, fit_reference
from sarclym.model.training.augment import Augmentation
from sarclym.model.training.evaluation import (
    BinaryMetrics,
    MeanCI,
    binary_metrics,
    bootstrap_auc_ci,
    mean_ci,
)

__all__ = [
    "CVResult",
    "TrainProgress",
    "TrainSettings",
    "cross_validate",
    "predict_proba",
    "stratified_folds",
    "train_final",
]

_CLASS_NAMES = {0: "sarcoidosis", 1: "lymphoma"}
_SUMMARY_KEYS = ("accuracy", "sensitivity", "specificity", "auc")


@dataclass(frozen=True)
class TrainSettings:
    """How one network is trained: the same for every fold and for the final network.

    Attributes
    ----------
    arch : str
        Architecture name for :func:`~sarclym.model.inference.net.build_net`.
    epochs, batch_size, lr, weight_decay
        Training budget and AdamW settings.
    seed : int
        Seeds the fold split, each network's initialisation, batch order and augmentation.
    augmentation : Augmentation or None
        Training-time augmentation; ``None`` trains on the inputs as they are.
    """

    arch: str = "two_branch"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0
    augmentation: Augmentation | None = Augmentation()  # noqa: RUF009 - frozen dataclass

    def card(self) -> dict[str, Any]:
        """The hyper-parameters as the model card records them."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "optimizer": "AdamW",
            "schedule": "cosine per step",
            "loss": "class-balanced BCE",
            "augmentation": None if self.augmentation is None else vars(self.augmentation).copy(),
        }


@dataclass(frozen=True)
class TrainProgress:
    """One finished epoch, as handed to the ``progress`` callback.

    ``fold`` is 0-based, ``None`` for :func:`train_final`; ``loss`` is the epoch's mean
    training loss.
    """

    fold: int | None
    folds: int
    epoch: int
    epochs: int
    loss: float


Progress = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class CVResult:
    """Outcome of :func:`cross_validate`.

    Attributes
    ----------
    arch : str
        Architecture name.
    hyperparameters : dict
        Epochs, batch size, learning rate, weight decay, seed, folds, augmentation.
    y : numpy.ndarray
        Labels, ``(N,)``.
    oof_probability : numpy.ndarray
        Out-of-fold P(lymphoma), ``(N,)``: each case predicted by the model that did not see it.
    fold_of : numpy.ndarray
        Fold index of each case, ``(N,)``.
    fold_metrics : tuple of BinaryMetrics
        Metrics of each fold's held-out cases (threshold 0.5).
    summary : dict of str to MeanCI
        ``accuracy``, ``sensitivity``, ``specificity``, ``auc``: mean over folds and 95%
        t-interval, clipped to [0, 1].
    pooled : BinaryMetrics
        Metrics of all out-of-fold predictions together (incl. ECE, 10 bins).
    pooled_auc_ci : tuple of float
        Stratified percentile bootstrap 95% CI of ``pooled.auc`` (2000 resamples).
    seconds : float
        Wall time of the cross-validation.
    oof_ood_score : numpy.ndarray or None
        Out-of-fold OOD score of each case, ``(N,)``: its distance
        (:mod:`sarclym.model.inference.ood`) from the penultimate features of its fold's
        training cases, under the fold's net. What sets a retrained version's OOD threshold
        (:func:`sarclym.model.training.ood_calibrate.reference_from_cv`).
    """

    arch: str
    hyperparameters: dict[str, Any]
    y: np.ndarray
    oof_probability: np.ndarray
    fold_of: np.ndarray
    fold_metrics: tuple[BinaryMetrics, ...]
    summary: dict[str, MeanCI]
    pooled: BinaryMetrics
    pooled_auc_ci: tuple[float, float]
    seconds: float = field(default=0.0, compare=False)
    oof_ood_score: np.ndarray | None = field(default=None, compare=False)

    def table(self) -> str:
        """The summary as text, one metric a line, like the paper's table."""
        k = len(self.fold_metrics)
        n1 = int(self.y.sum())
        lines = [
            f"{self.arch}: {k}-fold cross-validation, {self.y.size} cases "
            f"({self.y.size - n1} sarcoidosis, {n1} lymphoma), threshold 0.5",
            f"{'metric':<12} mean (95% CI over folds)",
        ]
        lines += [f"{key:<12} {self.summary[key]}" for key in _SUMMARY_KEYS]
        lo, hi = self.pooled_auc_ci
        lines += [
            f"pooled out-of-fold AUC {self.pooled.auc:.3f} (bootstrap 95% CI {lo:.3f}-{hi:.3f})",
            f"pooled ECE (10 bins) {self.pooled.ece:.3f}",
        ]
        return "\n".join(lines)

    def as_card_metrics(self) -> dict[str, Any]:
        """JSON-ready metrics for the model card (``card["cv_metrics"]``)."""
        out: dict[str, Any] = {
            "folds": len(self.fold_metrics),
            "n": int(self.y.size),
            "n_lymphoma": int(self.y.sum()),
            "threshold": 0.5,
            "ci": "95% t-interval over folds, clipped to [0, 1]",
        }
        for key in _SUMMARY_KEYS:
            m = self.summary[key]
            out[key] = {"mean": m.mean, "ci95": [m.low, m.high]}
        out["pooled_auc"] = self.pooled.auc
        out["pooled_auc_ci95_bootstrap"] = list(self.pooled_auc_ci)
        out["pooled_ece"] = self.pooled.ece
        out["per_fold"] = [m.as_dict() for m in self.fold_metrics]
        return out


def _check_data(X: np.ndarray, y: np.ndarray, folds: int | None) -> np.ndarray:
    if X.ndim != 4 or X.shape[1] != 2:
        raise ValueError(f"X must be (N, 2, H, W), got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must be (N,) with N = {X.shape[0]}, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (sarcoidosis) or 1 (lymphoma)")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if (counts == 0).any():
        present = _CLASS_NAMES[int(np.argmax(counts))]
        raise ValueError(
            f"training needs both classes: all {y.size} cases are {present} "
            "(0 = sarcoidosis, 1 = lymphoma)"
        )
    if folds is not None:
        if folds < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
        small = int(np.argmin(counts))
        if counts[small] < folds:
            raise ValueError(
                f"{folds}-fold cross-validation needs at least {folds} cases per class; "
                f"{_CLASS_NAMES[small]} has {int(counts[small])}"
            )
    return y


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Assign each case to a fold, every fold with (nearly) the same class mix.

    Cases of each class are shuffled with ``numpy.random.default_rng(seed)`` and dealt to the
    folds in turn, the second class continuing where the first stopped, so fold sizes differ
    by at most one.

    Returns
    -------
    numpy.ndarray
        int64 ``(N,)``, values ``0 .. folds - 1``.
    """
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    start = 0
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(np.asarray(y) == cls))
        fold_of[idx] = (start + np.arange(idx.size)) % folds
        start = (start + idx.size) % folds
    return fold_of


@contextmanager
def _deterministic(seed: int, device: str) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    settings: Any = torch.utils.deterministic
    previous_fill = settings.fill_uninitialized_memory
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
        # Filling every new tensor with NaN (a debugging aid that deterministic mode switches
        # on) costs about a fifth of the step time and changes no result.
        settings.fill_uninitialized_memory = False
        try:
            yield
        finally:
            settings.fill_uninitialized_memory = previous_fill
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def predict_proba(net: MipNet, X: np.ndarray | Tensor, *, batch_size: int = 64) -> np.ndarray:
    """P(lymphoma) for each case, in eval mode.

    Parameters
    ----------
    net : MipNet
        Trained network; its mode is restored afterwards.
    X : numpy.ndarray or torch.Tensor
        ``(N, 2, H, W)`` float32 net inputs.
    batch_size : int, optional
        Cases per forward pass.

    Returns
    -------
    numpy.ndarray
        float64 ``(N,)``.
    """
    device = next(net.parameters()).device
    x = torch.as_tensor(X)
    was_training = net.training
    net.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                logits = net(x[i : i + batch_size].to(device, torch.float32))
                out.append(torch.sigmoid(logits).double().cpu().numpy())
    finally:
        net.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def _fit(
    X: Tensor,
    y: np.ndarray,
    settings: TrainSettings,
    *,
    seed: int,
    device: str,
    on_epoch: Callable[[int, float], None] | None,
) -> MipNet:
    """Train one network from scratch; call inside :func:`_deterministic`."""
    epochs, batch_size, augmentation = settings.epochs, settings.batch_size, settings.augmentation
    net = build_net(settings.arch, input_size=(int(X.shape[2]), int(X.shape[3]))).to(device)
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    counts = np.bincount(y, minlength=2)
    class_weight = torch.tensor(n / (2.0 * counts), dtype=torch.float32)
    target = torch.as_tensor(y, dtype=torch.float32)
    weight = class_weight[torch.as_tensor(y)]
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            xb = X[idx]
            if augmentation is not None:
                xb = augmentation(xb, gen)
            logits = net(xb.to(device))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, target[idx].to(device), weight=weight[idx].to(device)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / n)
    _recompute_batchnorm(net, X, batch_size=max(batch_size, 64), device=device)
    net.eval()
    return net


def _recompute_batchnorm(net: MipNet, X: Tensor, *, batch_size: int, device: str) -> None:
    """Set BatchNorm running statistics to the exact mean and variance over ``X``.

    The running averages kept during training lag behind the weights (momentum 0.1) and are
    far off after a short run on a few hundred cases; eval-mode outputs then sit on one side of
    the threshold. One pass over the un-augmented training inputs with a cumulative average
    fixes that ("precise BN", Wu & Johnson 2021).
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    net.train()
    with torch.no_grad():
        for i in range(0, X.shape[0], batch_size):
            net(X[i : i + batch_size].to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings = TrainSettings(),
    *,
    folds: int = 5,
    device: str = "cpu",
    progress: Progress | None = None,
    bootstrap_resamples: int = 2000,
) -> CVResult:
    """Stratified k-fold cross-validation with out-of-fold probabilities.

    Parameters
    ----------
    X : numpy.ndarray
        ``(N, 2, H, W)`` float32 net inputs (``Mips.frontal_net``, ``Mips.lateral_net``).
    y : numpy.ndarray
        ``(N,)`` int labels: 0 sarcoidosis, 1 lymphoma.
    settings : TrainSettings, optional
        Architecture, training budget, optimiser, seed and augmentation, the same for every
        fold.
    folds : int, optional
        Number of folds (the paper: 5).
    device : str, optional
        torch device, e.g. ``"cpu"`` or ``"cuda"``.
    progress : callable or None, optional
        Called with a :class:`TrainProgress` after every epoch.
    bootstrap_resamples : int, optional
        Resamples of the pooled-AUC bootstrap.

    Returns
    -------
    CVResult

    Raises
    ------
    ValueError
        Before any training: bad shapes or labels, one class only, fewer cases of a class than
        folds, an unknown architecture or an input size the nets cannot take.
    """
    y = _check_data(X, y, folds)
    build_net(settings.arch, input_size=(int(X.shape[2]), int(X.shape[3])))  # fail before
    t0 = time.perf_counter()
    seed, epochs = settings.seed, settings.epochs
    fold_of = stratified_folds(y, folds, seed)
    x_all = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    oof = np.full(y.size, np.nan, dtype=np.float64)
    oof_ood = np.full(y.size, np.nan, dtype=np.float64)
    fold_metrics = []
    for k in range(folds):
        train_idx, test_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)

        def on_epoch(epoch: int, loss: float, k: int = k) -> None:
            if progress is not None:
                progress(TrainProgress(k, folds, epoch, epochs, loss))

        fold_seed = seed + 1009 * (k + 1)
        with _deterministic(fold_seed, device):
            net = _fit(
                x_all[torch.from_numpy(train_idx)],
                y[train_idx],
                settings,
                seed=fold_seed,
                device=device,
                on_epoch=on_epoch,
            )
            oof[test_idx] = predict_proba(net, x_all[torch.from_numpy(test_idx)])
            # Held-out cases' distance from the fold's training cases, under the fold's net.
            fitted = fit_reference(
                extract_features(net, x_all[torch.from_numpy(train_idx)]),
                layout=feature_layout(net),
            )
            oof_ood[test_idx] = fitted.scores(
                extract_features(net, x_all[torch.from_numpy(test_idx)])
            )
        fold_metrics.append(binary_metrics(y[test_idx], oof[test_idx]))
    summary = {key: mean_ci([getattr(m, key) for m in fold_metrics]) for key in _SUMMARY_KEYS}
    return CVResult(
        arch=settings.arch,
        hyperparameters={**settings.card(), "folds": folds},
        y=y,
        oof_probability=oof,
        fold_of=fold_of,
        fold_metrics=tuple(fold_metrics),
        summary=summary,
        pooled=binary_metrics(y, oof),
        pooled_auc_ci=bootstrap_auc_ci(y, oof, n_resamples=bootstrap_resamples, seed=seed),
        seconds=time.perf_counter() - t0,
        oof_ood_score=oof_ood,
    )


def train_final(
    X: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings = TrainSettings(),
    *,
    device: str = "cpu",
    progress: Progress | None = None,
) -> MipNet:
    """Train one network on all cases (the one to register after cross-validation).

    Parameters are those of :func:`cross_validate`; ``settings.seed`` seeds the network.

    Returns
    -------
    MipNet
        In eval mode, on ``device``.

    Raises
    ------
    ValueError
        Bad shapes or labels, or one class only, before training.
    """
    y = _check_data(X, y, None)
    x_all = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))

    def on_epoch(epoch: int, loss: float) -> None:
        if progress is not None:
            progress(TrainProgress(None, 0, epoch, settings.epochs, loss))

    with _deterministic(settings.seed, device):
        return _fit(x_all, y, settings, seed=settings.seed, device=device, on_epoch=on_epoch)
