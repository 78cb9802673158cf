"""Fixed square spatial windows over an image stack, their inverse, and a leak-free spatial split.

Patches are the unit every learning stage consumes: ``extract_patches`` cuts ``(*lead, H, W)``
arrays (e.g. ``(T, B, H, W)``) into ``(P, *lead, size, size)`` windows at the origins of
``patch_origins``; ``fold_patches`` puts them back, averaging overlaps; ``block_split`` assigns
patches to train/val/test by spatial blocks so that no pixel is shared between splits
(Roberts et al., 2017, "Cross-validation strategies for data with temporal, spatial, hierarchical,
or phylogenetic structure", Ecography 40(8):913-929).

Pure numpy: no xarray, zarr, Prefect or paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SPLITS", "axis_starts", "blend_ramp", "blend_window", "block_split", "extract_patches", "fold_patches", "patch_origins"]

SPLITS = ("train", "val", "test")
BUFFER = "buffer"


def axis_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Starts of windows of ``size`` covering ``0 .. length``: ``0, stride, ...`` plus one flush with
    the end when needed."""
    starts = np.arange(0, length - size + 1, stride, dtype=np.int64)
    if starts[-1] != length - size:
        starts = np.append(starts, np.int64(length - size))
    return starts


def patch_origins(height: int, width: int, *, size: int, stride: int) -> np.ndarray:
    """Top-left corners of square patches covering every pixel of a ``height x width`` image.

    Along each axis the starts are ``0, stride, 2*stride, ...`` while a patch fits, plus one last
    start flush with the bottom (right) edge when ``size`` plus a multiple of ``stride`` does not
    reach it exactly. Origins are in row-major order (all patches of the first row of patches,
    then the next).

    Parameters
    ----------
    height, width
        Image size in pixels.
    size
        Patch side in pixels, ``1 <= size <= min(height, width)``.
    stride
        Step between patch starts, ``1 <= stride <= size`` (a larger stride would leave gaps).

    Returns
    -------
    np.ndarray
        ``(P, 2)`` int64, columns ``(row, col)``.

    Raises
    ------
    ValueError
        When ``size`` or ``stride`` is out of range.
    """
    if size < 1 or stride < 1:
        raise ValueError(
            f"size and stride must be >= 1; got size={size}, stride={stride} "
            "(pass positive pixel counts)"
        )
    if size > height or size > width:
        raise ValueError(
            f"size must not exceed the image (height={height}, width={width}); got size={size} "
            "(use a smaller patch size)"
        )
    if stride > size:
        raise ValueError(
            f"stride must not exceed size, or pixels between patches are left out; got "
            f"stride={stride}, size={size} (use stride <= size)"
        )
    rows = axis_starts(height, size, stride)
    cols = axis_starts(width, size, stride)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def _check_origins(origins: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    origins = np.asarray(origins)
    if origins.ndim != 2 or origins.shape[1] != 2 or not np.issubdtype(origins.dtype, np.integer):
        raise ValueError(
            f"origins must be an integer array of shape (P, 2) (row, col); got shape "
            f"{origins.shape} dtype {origins.dtype} (use patch_origins)"
        )
    if size < 1 or size > height or size > width:
        raise ValueError(f"size must be in 1..min(H, W) = 1..{min(height, width)}; got size={size}")
    if origins.size and (
        origins.min() < 0
        or origins[:, 0].max() > height - size
        or origins[:, 1].max() > width - size
    ):
        raise ValueError(
            f"every patch must lie inside the {height} x {width} image: origins need "
            f"0 <= row <= {height - size} and 0 <= col <= {width - size} for size={size}; got rows "
            f"{origins[:, 0].min()}..{origins[:, 0].max()}, cols {origins[:, 1].min()}.."
            f"{origins[:, 1].max()} (compute origins with patch_origins for this image)"
        )
    return origins


def extract_patches(array: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """Cut square windows out of the last two axes of ``array``.

    Parameters
    ----------
    array
        ``(*lead, H, W)``, e.g. ``(T, B, H, W)``.
    origins
        ``(P, 2)`` integer ``(row, col)`` top-left corners, every patch inside the image.
    size
        Patch side in pixels.

    Returns
    -------
    np.ndarray
        ``(P, *lead, size, size)``, same dtype as ``array`` (a copy).
    """
    array = np.asarray(array)
    if array.ndim < 2:
        raise ValueError(f"array must have at least 2 axes (*lead, H, W); got shape {array.shape}")
    height, width = array.shape[-2:]
    origins = _check_origins(origins, size, height, width)
    windows = np.lib.stride_tricks.sliding_window_view(array, (size, size), axis=(-2, -1))
    # windows: (*lead, H-size+1, W-size+1, size, size)
    cut = windows[..., origins[:, 0], origins[:, 1], :, :]  # (*lead, P, size, size)
    return np.ascontiguousarray(np.moveaxis(cut, -3, 0))  # (P, *lead, size, size)


def blend_ramp(size: int, margin: int | None = None) -> np.ndarray:
    r"""``(size,)`` weights that rise over ``margin`` pixels at each end, 1 between:
    :math:`h_i = \sin^2(\pi (i + 1/2) / (2 m))` for :math:`i < m` (and mirrored at the end),
    ``m = margin`` (clipped to ``size // 2``; by default the whole window ramps,
    :math:`h_i = \sin^2(\pi (i + 1/2) / \text{size})`). Windows placed ``size - margin`` apart
    have weights that sum to one where they overlap (:math:`\sin^2 + \cos^2`)."""
    if size < 1:
        raise ValueError(f"size must be >= 1; got {size}")
    if margin is None:  # the whole window is ramp (also for an odd size)
        return np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    m = min(int(margin), size // 2)
    h = np.ones(size)
    if m >= 1:
        ramp = np.sin(np.pi * (np.arange(m) + 0.5) / (2 * m)) ** 2
        h[:m], h[size - m:] = ramp, ramp[::-1]
    return h


def blend_window(size: int, margin: int | None = None) -> np.ndarray:
    r"""``(size, size)`` weights for :func:`fold_patches` that fade a patch towards its border:
    :math:`w_{ij} = h_i h_j` (:func:`blend_ramp`); by default
    :math:`h_i = \sin^2(\pi (i + 1/2) / \text{size})`.

    A network's outputs are least reliable at a patch's border (zero padding, no context), so a
    plain average of half-overlapping patches shows the patch grid as seams. With these weights
    and a stride of ``size / 2`` (even ``size``; ``size - margin`` with a ``margin``) the weights of
    the patches covering an interior pixel sum to one (:math:`\sin^2 + \cos^2`), so each pixel is
    a convex blend that gives the patch it is central in the most say. Every weight is positive,
    so a pixel covered only by a patch's border still gets that patch's value.
    """
    h = blend_ramp(size, margin)
    return np.outer(h, h)


def fold_patches(patches: np.ndarray, origins: np.ndarray, shape: Sequence[int],
                 *, weights: np.ndarray | None = None) -> np.ndarray:
    """Put patches back into an image stack, averaging where they overlap (NaN-aware).

    Each output pixel is the mean of the non-NaN values the patches covering it carry (weighted
    by ``weights``, ``(size, size)`` positive, e.g. :func:`blend_window`; default equal weights);
    a pixel no patch covers, or only NaN values cover, is NaN. Sums are accumulated in float64,
    so for float32 (or integer/bool) patches cut from one image the round trip
    ``fold_patches(extract_patches(a, o, s), o, a.shape) == a`` is exact on covered pixels
    (with any weights, up to rounding).

    Parameters
    ----------
    patches
        ``(P, *lead, size, size)``.
    origins
        ``(P, 2)`` integer ``(row, col)`` top-left corners.
    shape
        Output shape ``(*lead, H, W)``.

    Returns
    -------
    np.ndarray
        ``(*lead, H, W)``, dtype of ``patches`` when floating, else float64 (NaN needs a float).
    """
    patches = np.asarray(patches)
    shape = tuple(int(n) for n in shape)
    if patches.ndim < 3 or len(shape) != patches.ndim - 1:
        raise ValueError(
            f"patches (P, *lead, size, size) and shape (*lead, H, W) must agree in rank; got "
            f"patches {patches.shape} and shape {shape}"
        )
    size = patches.shape[-1]
    if patches.shape[-2] != size or patches.shape[1:-2] != shape[:-2]:
        raise ValueError(
            f"patches must be (P, *lead, size, size) with lead {shape[:-2]} from shape; got "
            f"patches {patches.shape} for shape {shape}"
        )
    origins = _check_origins(origins, size, shape[-2], shape[-1])
    if len(origins) != patches.shape[0]:
        raise ValueError(
            f"one origin per patch is needed; got {len(origins)} origins for "
            f"{patches.shape[0]} patches"
        )
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (size, size) or not (weights > 0).all():
            raise ValueError(f"weights must be ({size}, {size}) and positive; got shape {weights.shape}, "
                             f"min {float(weights.min()) if weights.size else 'n/a'}")
    floating = np.issubdtype(patches.dtype, np.floating)
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64 if weights is not None else np.int32)
    w = 1 if weights is None else weights
    for patch, (row, col) in zip(patches, origins, strict=True):
        window = (..., slice(row, row + size), slice(col, col + size))
        if floating:
            seen = ~np.isnan(patch)
            total[window] += np.where(seen, patch * w, 0.0)
            count[window] += seen * w
        else:
            total[window] += patch * w
            count[window] += w
    folded = np.full(shape, np.nan, dtype=np.float64)
    np.divide(total, count, out=folded, where=count > 0)
    return folded.astype(patches.dtype if floating else np.float64, copy=False)


def _split_counts(n_blocks: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Blocks per split by largest remainder; each positive fraction gets one when possible."""
    raw = np.asarray(fractions, dtype=np.float64) * n_blocks
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n_blocks - int(counts.sum())]] += 1
    positive = np.asarray(fractions) > 0
    if n_blocks >= int(positive.sum()):
        for i in np.flatnonzero(positive & (counts == 0)):
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts


def _overlaps(
    source: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray],
    cells: tuple[int, int],
) -> np.ndarray:
    """For every patch, whether its footprint shares a pixel with a footprint of a ``source`` patch.

    Footprints are given on a compressed lattice (``rows``/``cols``: first and one-past-last cell
    index of each patch) whose cell edges are all the footprint edges, so overlapping in cells is
    overlapping in pixels.
    """
    (r0, r1), (c0, c1) = rows, cols
    diff = np.zeros((cells[0] + 1, cells[1] + 1), dtype=np.int64)
    np.add.at(diff, (r0[source], c0[source]), 1)
    np.add.at(diff, (r1[source], c0[source]), -1)
    np.add.at(diff, (r0[source], c1[source]), -1)
    np.add.at(diff, (r1[source], c1[source]), 1)
    covered = diff.cumsum(0).cumsum(1)[:-1, :-1] > 0  # (cells) painted by a source footprint
    table = np.zeros((cells[0] + 1, cells[1] + 1), dtype=np.int64)
    table[1:, 1:] = covered.cumsum(0).cumsum(1)  # summed-area table
    hits = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return np.asarray(hits > 0)


def block_split(
    origins: np.ndarray,
    *,
    size: int,
    block: int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Spatial-block train/val/test split of patches, with a buffer so no pixel leaks.

    The rule:

    1. The image is tiled from pixel ``(0, 0)`` into square blocks of ``block * size`` pixels.
       A block counts when it holds at least one patch origin; each patch belongs to the block
       holding its origin (top-left pixel).
    2. The ``n`` blocks are shuffled with ``np.random.default_rng(seed).permutation(n)``; the first
       ``n_train`` go to train, the next ``n_val`` to val, the rest to test. The counts are the
       fractions times ``n`` rounded by largest remainder; every split with a positive fraction
       gets at least one block when ``n`` allows (``n >= 3`` for three positive fractions).
    3. With the labels of step 2, a val (test) patch whose footprint (``size x size`` pixels from
       its origin) shares a pixel with the footprint of any train patch, or of any test (val)
       patch, becomes ``'buffer'``. Train patches are never changed. So after the split, the
       pixels of train, val and test patches are pairwise disjoint; buffer patches may overlap
       anything and should be left out of training and scoring. Overlaps happen only across
       block edges when ``stride < size`` or at the flush last row/column of patches.

    Fractions are met in blocks, not patches: blocks at the image edge can hold fewer patches,
    and buffering removes some val/test patches.

    Parameters
    ----------
    origins
        ``(P, 2)`` integer ``(row, col)`` patch origins.
    size
        Patch side in pixels.
    block
        Block side in patches (``block * size`` pixels).
    fractions
        Shares of blocks for train, val and test: three values >= 0 summing to 1.
    seed
        Seed of the block permutation (same seed, same split).

    Returns
    -------
    np.ndarray
        ``(P,)`` str, each ``'train'``, ``'val'``, ``'test'`` or ``'buffer'``.
    """
    if size < 1 or block < 1:
        raise ValueError(
            f"size and block must be >= 1; got size={size}, block={block} (pass positive sizes)"
        )
    fracs = tuple(float(f) for f in fractions)
    if (
        len(fracs) != 3
        or not all(math.isfinite(f) and f >= 0 for f in fracs)
        or abs(sum(fracs) - 1.0) > 1e-6
    ):
        raise ValueError(
            f"fractions must be three shares (train, val, test), each >= 0, summing to 1; got "
            f"fractions={tuple(fractions)} (e.g. (0.7, 0.15, 0.15))"
        )
    origins = np.asarray(origins)
    if origins.ndim != 2 or origins.shape[1] != 2 or not np.issubdtype(origins.dtype, np.integer):
        raise ValueError(
            f"origins must be an integer array of shape (P, 2) (row, col); got shape "
            f"{origins.shape} dtype {origins.dtype} (use patch_origins)"
        )
    if origins.size and origins.min() < 0:
        raise ValueError(f"origins must be >= 0; got a minimum of {origins.min()}")
    labels = np.full(len(origins), SPLITS[0], dtype="<U6")
    if len(origins) == 0:
        return labels

    # 1-2. blocks and their shuffled assignment
    block_px = block * size
    blocks, member = np.unique(origins // block_px, axis=0, return_inverse=True)
    member = member.reshape(-1)
    counts = _split_counts(len(blocks), (fracs[0], fracs[1], fracs[2]))
    perm = np.random.default_rng(seed).permutation(len(blocks))
    block_label = np.empty(len(blocks), dtype="<U6")
    block_label[perm] = np.repeat(np.array(SPLITS), counts)
    labels = block_label[member]

    # 3. buffer val/test patches that touch train or the other held-out split
    row_edges = np.unique(np.concatenate([origins[:, 0], origins[:, 0] + size]))
    col_edges = np.unique(np.concatenate([origins[:, 1], origins[:, 1] + size]))
    rows = (
        np.searchsorted(row_edges, origins[:, 0]),
        np.searchsorted(row_edges, origins[:, 0] + size),
    )
    cols = (
        np.searchsorted(col_edges, origins[:, 1]),
        np.searchsorted(col_edges, origins[:, 1] + size),
    )
    cells = (len(row_edges) - 1, len(col_edges) - 1)
    touches = {name: _overlaps(labels == name, rows, cols, cells) for name in SPLITS}
    is_val, is_test = labels == "val", labels == "test"
    buffer = (is_val & (touches["train"] | touches["test"])) | (
        is_test & (touches["train"] | touches["val"])
    )
    labels[buffer] = BUFFER
    return labels
