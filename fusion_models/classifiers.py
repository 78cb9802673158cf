"""Per-pixel land-cover classifiers over (time, band, y, x) patches: a 4D-CNN and its 3D/2D-CNN rivals.

The 4D-CNN convolves the whole (time, band, y, x) volume with :class:`fusion_models.conv4d.Conv4d`
(the deck's "Tensor Convolution" and "Results on 4D classification"; Giannopoulos, M.,
Tsagkatakis, G., Tsakalides, P. (2022), "4D U-Nets for multi-temporal remote sensing data
classification", Remote Sensing 14(3):634). The 3D-CNN convolves (time, y, x) with the bands as
channels, the 2D-CNN (y, x) with time x band stacked as channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusion_models.conv4d import Conv4d, SeparableConv4d
from fusion_models.device import as_input, as_mask

__all__ = ["CNN2D", "CNN3D", "CNN4D", "MODELS", "UNSEEN_LOGIT", "PixelClassifier", "build_classifier"]

#: the logit of a class the model may not predict (finite: float16 under CUDA autocast holds it)
UNSEEN_LOGIT = -1e4


class PixelClassifier(nn.Module):
    """Base of the per-pixel classifiers: input treatment, shape checks and the 1x1 head.

    Input treatment (the same for every model): a pixel-date is *observed* when ``valid`` is true
    and every band is finite; observed values are standardised per band,
    :math:`z = (x - \\mu_c) / \\sigma_c` (``mean``/``std`` buffers, saved with the weights), the
    rest set to 0, and the observed mask :math:`m \\in \\{0, 1\\}` is an extra input feature, so a
    zero is never mistaken for a measurement.

    Shapes
    ------
    x: (B, T, C, H, W) float (NaN where missing), valid: (B, T, H, W) bool -> (B, K, H, W) logits
    """

    kind = "base"
    #: spatial receptive radius in pixels (two 3 x 3 spatial convolutions, a 1 x 1 head): a pixel's
    #: output depends on the input within ``halo`` pixels of it, so a map predicted window by window
    #: with this halo equals one forward pass over the whole image
    halo = 2
    mean: Tensor
    std: Tensor
    #: ``(K,)`` bool, the classes the model may predict: those with training examples (set after
    #: training, :meth:`only_predict`); the others' logits are pushed to ``UNSEEN_LOGIT``
    seen: Tensor

    def __init__(
        self,
        *,
        n_times: int,
        n_bands: int,
        n_classes: int,
        hidden: int = 64,
        dropout: float = 0.2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_times", n_times), ("n_bands", n_bands), ("n_classes", n_classes),
                            ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 for a classifier; got n_classes={n_classes}")
        self.n_times, self.n_bands, self.n_classes = n_times, n_bands, n_classes
        self.hidden, self.dropout = hidden, float(dropout)
        mu = torch.zeros(n_bands) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        sd = torch.ones(n_bands) if std is None else torch.as_tensor(std, dtype=torch.float32)
        if mu.shape != (n_bands,) or sd.shape != (n_bands,) or bool((sd <= 0).any()):
            raise ValueError(
                f"mean and std need one value per band ({n_bands}) and std > 0; got mean "
                f"{tuple(mu.shape)}, std {tuple(sd.shape)} (min std {float(sd.min()):.3g})"
            )
        self.register_buffer("mean", mu.clone())
        self.register_buffer("std", sd.clone())
        self.register_buffer("seen", torch.ones(n_classes, dtype=torch.bool))

    def only_predict(self, seen: Sequence[bool] | np.ndarray | Tensor) -> None:
        """Predict only the classes flagged in ``seen`` (``(K,)``): a class with no training pixel
        has an untrained output, which early in training (a few epochs) can win everywhere."""
        mask = torch.as_tensor(np.asarray(seen, dtype=bool), device=self.seen.device)
        if mask.shape != self.seen.shape or not bool(mask.any()):
            raise ValueError(f"seen needs {self.n_classes} flags, at least one true; got shape "
                             f"{tuple(mask.shape)} with {int(mask.sum())} true")
        self.seen.copy_(mask)

    def _head(self, channels: int) -> nn.Sequential:
        """Per-pixel MLP as 1x1 convolutions: ``(B, channels, H, W) -> (B, K, H, W)``."""
        return nn.Sequential(
            nn.Conv2d(channels, self.hidden, 1, bias=False),
            nn.BatchNorm2d(self.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(self.dropout),
            nn.Conv2d(self.hidden, self.n_classes, 1),
        )

    def config(self) -> dict[str, Any]:
        """Constructor arguments (without the statistics) to rebuild the model from a checkpoint."""
        return {"n_times": self.n_times, "n_bands": self.n_bands, "n_classes": self.n_classes,
                "hidden": self.hidden, "dropout": self.dropout}

    def prepare(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, T, C, H, W)``, ``valid (B, T, H, W)`` -> standardised ``z`` (0 where not
        observed, same shape as x) and the observed mask ``m (B, T, H, W)`` as floats. ``x`` and
        ``valid`` (bool or 0/1) may be tensors or numpy arrays: computed in the model's dtype, on its
        device."""
        x = as_input(x, self)
        valid = as_mask(valid, x.device, name="valid")
        if x.ndim != 5 or tuple(x.shape[1:3]) != (self.n_times, self.n_bands):
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, {self.n_times}, {self.n_bands}, H, W) "
                f"(the dates and bands it was trained with); got {tuple(x.shape)}"
            )
        if valid.shape != (x.shape[0], x.shape[1], x.shape[3], x.shape[4]):
            raise ValueError(
                f"valid must have shape (B, T, H, W) = {(x.shape[0], x.shape[1], *x.shape[3:])}; "
                f"got {tuple(valid.shape)}"
            )
        observed = valid.bool() & torch.isfinite(x).all(dim=2)  # (B, T, H, W)
        scaled = (x - self.mean.view(1, 1, -1, 1, 1)) / self.std.view(1, 1, -1, 1, 1)
        z = torch.where(observed.unsqueeze(2), scaled, torch.zeros((), dtype=x.dtype, device=x.device))
        return z.float(), observed.float()

    def features(self, z: Tensor, m: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x: (B, T, C, H, W)``, ``valid: (B, T, H, W)`` -> logits ``(B, K, H, W)``."""
        z, m = self.prepare(x, valid)
        logits = self.features(z, m)
        if bool(self.seen.all()):
            return logits
        return logits.masked_fill(~self.seen.view(1, -1, 1, 1), UNSEEN_LOGIT)


class CNN4D(PixelClassifier):
    """4D-CNN: two 4D convolutions over (time, band, y, x), then a per-pixel head.

    .. math::

        H_1 = \\mathrm{ReLU}(\\mathrm{BN}(W_1 \\star_{4D} [Z, M])),\\quad
        H_2 = \\mathrm{ReLU}(\\mathrm{BN}(W_2 \\star_{4D, s_t = 2} H_1)),\\quad
        \\hat y = \\mathrm{MLP}(\\mathrm{vec}_{f, t, c}(H_2))

    with :math:`\\star_{4D}` the 4D convolution (3x3x3x3 kernels, zero padding, stride 2 in time
    in the second layer) and the MLP applied per pixel. Receptive field: 5 x 5 pixels, 7 dates,
    all bands. ``separable=True`` (default) uses a separable 4D convolution (ours, not the
    deck's Tucker-format "Tensor Convolution"; :class:`~fusion_models.conv4d.SeparableConv4d`: a (time, band) kernel, then a
    (y, x) kernel, coupled through ``width`` channels), which costs a fraction of the dense
    :class:`~fusion_models.conv4d.Conv4d` and so affords a wider network; ``separable=False``
    uses the dense 3x3x3x3 kernels.

    Shapes
    ------
    x: (B, T, C, H, W), valid: (B, T, H, W) -> (B, K, H, W);
    inside: (B, 2, T, C, H, W) -> (B, w, T, C, H, W) -> (B, 2w, ceil(T/2), C, H, W)
    """

    kind = "cnn4d"

    def __init__(self, *, width: int = 8, separable: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.width, self.separable = width, bool(separable)
        conv: Any = SeparableConv4d if self.separable else Conv4d
        self.conv1 = conv(2, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = conv(width, 2 * width, 3, padding=1, stride=(2, 1, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(2 * width)
        t2 = (self.n_times - 1) // 2 + 1
        self.head = self._head(2 * width * t2 * self.n_bands)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "width": self.width, "separable": self.separable}

    @staticmethod
    def _bn(bn: nn.BatchNorm3d, h: Tensor) -> Tensor:
        b, f, t, c, hh, ww = h.shape
        return bn(h.reshape(b, f, t * c, hh, ww)).reshape(b, f, t, c, hh, ww)

    def features(self, z: Tensor, m: Tensor) -> Tensor:
        vol = torch.stack([z, m.unsqueeze(2).expand_as(z)], dim=1)  # (B, 2, T, C, H, W)
        h = torch.relu(self._bn(self.bn1, self.conv1(vol)))  # (B, w, T, C, H, W)
        h = torch.relu(self._bn(self.bn2, self.conv2(h)))  # (B, 2w, T', C, H, W)
        b, f, t, c, hh, ww = h.shape
        return self.head(h.reshape(b, f * t * c, hh, ww))  # (B, K, H, W)


class CNN3D(PixelClassifier):
    """3D-CNN: two 3D convolutions over (time, y, x) with bands + observed mask as channels.

    Same depth, kernels (3x3x3, stride 2 in time in the second layer), receptive field and head
    as :class:`CNN4D`; the bands are mixed densely instead of convolved.

    Shapes
    ------
    x: (B, T, C, H, W), valid: (B, T, H, W) -> (B, K, H, W);
    inside: (B, C + 1, T, H, W) -> (B, w, T, H, W) -> (B, 2w, ceil(T/2), H, W)
    """

    kind = "cnn3d"

    def __init__(self, *, width: int = 16, **kw: Any) -> None:
        super().__init__(**kw)
        self.width = width
        self.body = nn.Sequential(
            nn.Conv3d(self.n_bands + 1, width, 3, padding=1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, 2 * width, 3, padding=1, stride=(2, 1, 1), bias=False),
            nn.BatchNorm3d(2 * width),
            nn.ReLU(inplace=True),
        )
        t2 = (self.n_times - 1) // 2 + 1
        self.head = self._head(2 * width * t2)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "width": self.width}

    def features(self, z: Tensor, m: Tensor) -> Tensor:
        vol = torch.cat([z, m.unsqueeze(2)], dim=2).transpose(1, 2)  # (B, C + 1, T, H, W)
        h = self.body(vol)  # (B, 2w, T', H, W)
        b, f, t, hh, ww = h.shape
        return self.head(h.reshape(b, f * t, hh, ww))  # (B, K, H, W)


class CNN2D(PixelClassifier):
    """2D-CNN: time x (bands + observed mask) stacked as channels, two 3x3 convolutions.

    Shapes
    ------
    x: (B, T, C, H, W), valid: (B, T, H, W) -> (B, K, H, W);
    inside: (B, T (C + 1), H, W) -> (B, w, H, W) -> (B, w, H, W)
    """

    kind = "cnn2d"

    def __init__(self, *, width: int = 64, **kw: Any) -> None:
        super().__init__(**kw)
        self.width = width
        self.body = nn.Sequential(
            nn.Conv2d(self.n_times * (self.n_bands + 1), width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.head = self._head(width)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "width": self.width}

    def features(self, z: Tensor, m: Tensor) -> Tensor:
        b, t, c, hh, ww = z.shape
        stack = torch.cat([z, m.unsqueeze(2)], dim=2).reshape(b, t * (c + 1), hh, ww)  # (B, T(C+1), H, W)
        return self.head(self.body(stack))  # (B, K, H, W)


MODELS: dict[str, type[PixelClassifier]] = {"cnn4d": CNN4D, "cnn3d": CNN3D, "cnn2d": CNN2D}


def build_classifier(kind: str, **config: Any) -> PixelClassifier:
    """``build_classifier("cnn4d", n_times=12, n_bands=4, n_classes=15)`` (see :data:`MODELS`)."""
    if kind not in MODELS:
        raise ValueError(f"unknown classifier kind {kind!r}; choose one of {sorted(MODELS)}")
    return MODELS[kind](**config)
