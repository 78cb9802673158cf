"""A 4D convolution layer built as a sum of 3D convolutions over the fourth (leading) axis.

PyTorch has no ``Conv4d``. The deck's "Tensor Convolution" and "Backpropagation of 4D
Convolution" slides (Tsagkatakis, "Fusion of generative & discriminative models", FORTH) treat a
4D convolution as a sum of lower-order convolutions, with forward and backward passes that are
both convolutions; the same construction underlies the 4D-CNN of Giannopoulos, M., Tsagkatakis, G.,
Tsakalides, P. (2022), "4D U-Nets for multi-temporal remote sensing data classification",
Remote Sensing 14(3):634.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_models.device import as_input

__all__ = ["Conv4d", "SeparableConv4d", "conv4d", "quadruple", "separable_conv4d"]


def quadruple(value: int | Sequence[int], name: str, *, low: int) -> tuple[int, int, int, int]:
    """``3 -> (3, 3, 3, 3)``; a 4-sequence is checked and returned as a tuple."""
    values = (value,) * 4 if isinstance(value, int) else tuple(value)
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(
            f"{name} must be an int or 4 ints (one per convolved axis); got {name}={value!r}"
        )
    if any(v < low for v in values):
        raise ValueError(f"every {name} entry must be >= {low}; got {name}={value!r}")
    return (int(values[0]), int(values[1]), int(values[2]), int(values[3]))


def conv4d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    r"""4D cross-correlation (the deep-learning "convolution") with zero padding.

    .. math::

        Z[b, o, i_1, i_2, i_3, i_4] = b_o + \sum_{c} \sum_{a_1 \dots a_4}
            W[o, c, a_1, a_2, a_3, a_4]\, X_p[b, c, s_1 i_1 + a_1, \dots, s_4 i_4 + a_4]

    with :math:`X_p` the zero-padded input. Computed as a sum over the first kernel axis of 3D
    convolutions: for each offset :math:`a_1` the input slices :math:`X_p[:, :, s_1 i_1 + a_1]`
    of every output index :math:`i_1` are stacked into the batch and convolved by ``conv3d``
    with :math:`W[:, :, a_1]`:

    .. math::

        Z[:, :, i_1] = b + \sum_{a_1} \mathrm{conv3d}(X_p[:, :, s_1 i_1 + a_1],\, W[:, :, a_1])

    The backward pass is autograd's, i.e. again 3D convolutions (the deck's
    :math:`\partial L/\partial I = \mathrm{conv}(\partial L/\partial Z, W)` and
    :math:`\partial L/\partial W = \mathrm{conv}(\partial L/\partial Z, \mathrm{rot}(I))`).

    Shapes
    ------
    x: (B, C_in, D1, D2, D3, D4); weight: (C_out, C_in, k1, k2, k3, k4); bias: (C_out,)
    -> (B, C_out, O1, O2, O3, O4) with ``O_n = (D_n + 2 p_n - k_n) // s_n + 1``.
    """
    if x.ndim != 6:
        raise ValueError(
            f"conv4d needs x of shape (B, C_in, D1, D2, D3, D4); got {x.ndim} dims {tuple(x.shape)}"
        )
    if weight.ndim != 6 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            "conv4d needs weight of shape (C_out, C_in, k1, k2, k3, k4) with C_in = x.shape[1] = "
            f"{x.shape[1]}; got weight {tuple(weight.shape)}"
        )
    s = quadruple(stride, "stride", low=1)
    p = quadruple(padding, "padding", low=0)
    k = tuple(int(n) for n in weight.shape[2:])
    batch, c_in, d1 = x.shape[:3]
    out_sizes = [(int(x.shape[2 + n]) + 2 * p[n] - k[n]) // s[n] + 1 for n in range(4)]
    if min(out_sizes) < 1:
        raise ValueError(
            f"the kernel {k} is larger than the padded input {tuple(x.shape[2:])} + 2 x {p}; "
            "pad more or use a smaller kernel"
        )
    o1 = out_sizes[0]
    # pad only the first axis here; conv3d pads the other three itself
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, p[0], p[0])) if p[0] else x  # (B, C, D1 + 2 p1, D2, D3, D4)
    steps = s[0] * torch.arange(o1, device=x.device)

    def term(a: int) -> Tensor:
        sl = xp.index_select(2, steps + a)  # (B, C, O1, D2, D3, D4): the slices offset a feeds
        sl = sl.transpose(1, 2).reshape(batch * o1, c_in, *x.shape[3:])  # (B O1, C, D2, D3, D4)
        return F.conv3d(sl, weight[:, :, a], None, stride=s[1:], padding=p[1:])  # (B O1, C_out, O2..O4)

    out = term(0)
    for a in range(1, k[0]):
        out = out + term(a)
    out = out.reshape(batch, o1, *out.shape[1:]).transpose(1, 2)  # (B, C_out, O1, O2, O3, O4)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1, 1)
    return out


class Conv4d(nn.Module):
    """4D convolution layer: ``(B, C_in, D1, D2, D3, D4) -> (B, C_out, O1, O2, O3, O4)``.

    Learned weight :math:`W \\in \\mathbb R^{C_{out} \\times C_{in} \\times k_1 \\times k_2
    \\times k_3 \\times k_4}` and bias :math:`b \\in \\mathbb R^{C_{out}}`, applied by
    :func:`conv4d` (a sum of 3D convolutions over the first convolved axis). Initialised like
    ``torch.nn.Conv3d`` (Kaiming-uniform with ``a = sqrt(5)``).

    Parameters
    ----------
    in_channels, out_channels
        Feature channels in and out.
    kernel_size, stride, padding
        An int or one value per convolved axis ``(D1, D2, D3, D4)``; zero padding.
    bias
        Learn an additive bias per output channel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = quadruple(kernel_size, "kernel_size", low=1)
        self.stride = quadruple(stride, "stride", low=1)
        self.padding = quadruple(padding, "padding", low=0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and a uniform bias, as ``torch.nn.ConvNd`` does."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C_in, D1, D2, D3, D4) -> (B, C_out, O1, O2, O3, O4)`` (a tensor or numpy array,
        computed in the layer's dtype on its device)."""
        x = as_input(x, self)
        if x.ndim != 6 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4d expects x of shape (B, {self.in_channels}, D1, D2, D3, D4); "
                f"got {tuple(x.shape)}"
            )
        return conv4d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


def separable_conv4d(
    x: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    r"""4D convolution with a separable (low-rank factorised) kernel: two 3D convolutions.

    Ours, not the deck's construction: the deck's "Tensor Convolution" slide convolves two
    Tucker-format tensors mode by mode (``G_z = G_x (x) G_y``, the factor matrices convolved
    column by column). Here, more simply, the kernel over axes (1, 2) (time, band) and the kernel
    over axes (3, 4) (y, x) are coupled through ``R`` intermediate channels:

    .. math::

        W[o, c, a_1, a_2, a_3, a_4] = \sum_{r=1}^{R} B[o, r, a_3, a_4]\, A[r, c, a_1, a_2]

    so :math:`Z = B \star_{(3,4)} (A \star_{(1,2)} X)` + bias: one ``conv3d`` over
    :math:`(D_1, D_2, D_3 D_4)` with kernel :math:`(k_1, k_2, 1)`, then one over
    :math:`(D_1' D_2', D_3, D_4)` with kernel :math:`(1, k_3, k_4)`. The result equals
    :func:`conv4d` with the composed kernel :math:`W` (zero padding commutes because the two
    factors act on disjoint axes and there is no bias in between); it costs
    :math:`R (C k_1 k_2 + O k_3 k_4)` instead of :math:`O C k_1 k_2 k_3 k_4` multiplications per
    output point.

    Shapes
    ------
    x: (B, C_in, D1, D2, D3, D4); weight_a: (R, C_in, k1, k2); weight_b: (C_out, R, k3, k4);
    bias: (C_out,) -> (B, C_out, O1, O2, O3, O4), ``O_n = (D_n + 2 p_n - k_n) // s_n + 1``.
    """
    if x.ndim != 6:
        raise ValueError(
            f"separable_conv4d needs x of shape (B, C_in, D1, D2, D3, D4); got {tuple(x.shape)}"
        )
    if weight_a.ndim != 4 or weight_a.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight_a must have shape (R, C_in={x.shape[1]}, k1, k2); got {tuple(weight_a.shape)}"
        )
    if weight_b.ndim != 4 or weight_b.shape[1] != weight_a.shape[0]:
        raise ValueError(
            f"weight_b must have shape (C_out, R={weight_a.shape[0]}, k3, k4); "
            f"got {tuple(weight_b.shape)}"
        )
    s = quadruple(stride, "stride", low=1)
    p = quadruple(padding, "padding", low=0)
    k = (*weight_a.shape[2:], *weight_b.shape[2:])
    if any(x.shape[2 + n] + 2 * p[n] < k[n] for n in range(4)):
        raise ValueError(
            f"the kernel {tuple(k)} is larger than the padded input {tuple(x.shape[2:])} + 2 x {p}; "
            "pad more or use a smaller kernel"
        )
    b, _, d1, d2, d3, d4 = x.shape
    h = F.conv3d(x.reshape(b, x.shape[1], d1, d2, d3 * d4), weight_a.unsqueeze(-1),
                 stride=(s[0], s[1], 1), padding=(p[0], p[1], 0))  # (B, R, O1, O2, D3 D4)
    o1, o2 = h.shape[2], h.shape[3]
    h = h.reshape(b, h.shape[1], o1 * o2, d3, d4)
    out = F.conv3d(h, weight_b.unsqueeze(2), bias, stride=(1, s[2], s[3]),
                   padding=(0, p[2], p[3]))  # (B, C_out, O1 O2, O3, O4)
    return out.reshape(b, out.shape[1], o1, o2, out.shape[3], out.shape[4])


class SeparableConv4d(nn.Module):
    """Separable (factorised-kernel) 4D convolution layer (see :func:`separable_conv4d`).

    ``(B, C_in, D1, D2, D3, D4) -> (B, C_out, O1, O2, O3, O4)`` with a (time, band) kernel
    ``A (rank, C_in, k1, k2)`` followed by a spatial kernel ``B (C_out, rank, k3, k4)``;
    ``rank`` defaults to ``C_out``. Both initialised like ``torch.nn.Conv3d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        rank: int | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        rank = out_channels if rank is None else rank
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.kernel_size = quadruple(kernel_size, "kernel_size", low=1)
        self.stride = quadruple(stride, "stride", low=1)
        self.padding = quadruple(padding, "padding", low=0)
        k = self.kernel_size
        self.weight_a = nn.Parameter(torch.empty(rank, in_channels, k[0], k[1]))
        self.weight_b = nn.Parameter(torch.empty(out_channels, rank, k[2], k[3]))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform factors and a uniform bias, as ``torch.nn.ConvNd`` does."""
        nn.init.kaiming_uniform_(self.weight_a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.weight_b, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.rank * self.kernel_size[2] * self.kernel_size[3])
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"rank={self.rank}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )

    def full_weight(self) -> Tensor:
        """The composed 4D kernel ``(C_out, C_in, k1, k2, k3, k4)`` (for checks and export)."""
        return torch.einsum("orpq,rcab->ocabpq", self.weight_b, self.weight_a)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C_in, D1, D2, D3, D4) -> (B, C_out, O1, O2, O3, O4)`` (a tensor or numpy array,
        computed in the layer's dtype on its device)."""
        x = as_input(x, self)
        if x.ndim != 6 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SeparableConv4d expects x of shape (B, {self.in_channels}, D1, D2, D3, D4); "
                f"got {tuple(x.shape)}"
            )
        return separable_conv4d(x, self.weight_a, self.weight_b, self.bias, stride=self.stride,
                                padding=self.padding)
