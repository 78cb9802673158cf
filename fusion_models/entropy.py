"""Entropy coding of quantized transform coefficients and binary masks (rANS via ``constriction``).

Coefficients: a quantized core entry ``q`` is coded with a discretised zero-mean Laplace model
``P(q) = F(q + 1/2) - F(q - 1/2)``, ``F`` the Laplace CDF, by the asymmetric numeral systems coder
of ``constriction`` (R. Bamler, "Understanding Entropy Coding With Asymmetric Numeral Systems (ANS):
a Statistician's Perspective", arXiv:2201.01741, 2022; J. Duda, "Asymmetric numeral systems",
arXiv:0902.0271, 2009). The cost of an entry is close to ``-log2 P(q)`` bits, so low-energy core
positions cost a fraction of a bit. Two models:

- static (:func:`encode_laplace`): one scale per core position (e.g. the separable profile of the
  training cores, :func:`separable_profiles`);
- context-adaptive (:func:`encode_context_laplace`, what the TDL codec uses): that prior scale
  times a multiplier chosen by the context of the coefficient, the magnitudes of its already coded
  neighbours ``r - e_n`` in the same core relative to their prior scales (a textured patch has
  large coefficients at every index, a smooth one small), fitted per bitstream and sent as int8.

Masks (the valid / observed layers) are coded losslessly with an adaptive binary model
(:func:`encode_mask`): the context of a pixel is six causal neighbours and the same pixel in a
reference frame (128 contexts), each context's probability counted on the pixels coded before it;
a wavefront order lets the decoder decode many pixels per call.

:func:`zstd_encode` is the general-purpose floor (Zstandard, level 19) the benchmark compares with.
Pure NumPy in, ``bytes`` out; no files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard

__all__ = [
    "ContextPlan",
    "context_model",
    "context_plan",
    "context_scales",
    "decode_context_laplace",
    "decode_laplace",
    "decode_mask",
    "decode_mask_rows",
    "encode_context_laplace",
    "encode_laplace",
    "encode_mask",
    "encode_mask_rows",
    "fit_context_model",
    "laplace_code_length",
    "laplace_params",
    "separable_profiles",
    "separable_scale",
    "zstd_decode",
    "zstd_encode",
]

_MIN_SCALE = 0.02  # in quantizer steps: below it every symbol is 0 with probability ~1 anyway
_HEADER = struct.Struct("<i")  # the symbol range bound K


def laplace_params(values: np.ndarray, *, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Location (median) and scale (mean absolute deviation) per position, Laplace MLE.

    Parameters
    ----------
    values
        ``(S, ...)`` float samples in quantizer steps (core / step) of the training set.
    axis
        The sample axis.

    Returns
    -------
    loc, scale
        Each the shape of ``values`` without ``axis``; ``scale >= 0.02``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.shape[axis] < 1:
        raise ValueError(f"laplace_params needs at least one sample along axis {axis}; got {v.shape}")
    loc = np.median(v, axis=axis)
    scale = np.mean(np.abs(v - np.expand_dims(loc, axis)), axis=axis)
    return loc, np.maximum(scale, _MIN_SCALE)


def separable_profiles(spread: np.ndarray, *, sweeps: int = 10) -> tuple[np.ndarray, ...]:
    r"""Compact Laplace scale model: :math:`\log b_{r_1..r_N} \approx \sum_n a_n[r_n]`.

    Fits the per-position mean absolute core values ``spread (R_1, ..., R_N)`` (training set) by
    an additive model in the log domain (least squares, by backfitting), so a decoder needs
    ``sum R_n`` numbers instead of ``prod R_n``: the energy of a Tucker core falls off roughly as a
    product of one profile per mode. The profiles are rounded to float16 (what is stored).
    """
    logs = np.log(np.maximum(np.asarray(spread, dtype=np.float64), 1e-12))
    n = logs.ndim
    prof = [np.zeros(logs.shape[k]) for k in range(n)]
    for _ in range(sweeps):
        for k in range(n):
            rest = logs - sum(
                p.reshape([-1 if j == i else 1 for j in range(n)]) for i, p in enumerate(prof) if i != k
            )
            prof[k] = rest.mean(axis=tuple(j for j in range(n) if j != k))
    return tuple(p.astype(np.float16) for p in prof)


def separable_scale(profiles: tuple[np.ndarray, ...]) -> np.ndarray:
    """The ``(R_1, ..., R_N)`` scales of :func:`separable_profiles`' model."""
    n = len(profiles)
    total = sum(np.asarray(p, np.float64).reshape([-1 if j == i else 1 for j in range(n)])
                for i, p in enumerate(profiles))
    return np.exp(np.asarray(total, dtype=np.float64))


def _model_args(symbols: np.ndarray, loc: np.ndarray | float, scale: np.ndarray) -> tuple[np.ndarray, ...]:
    try:
        mu = np.broadcast_to(np.asarray(loc, np.float64), symbols.shape).ravel()
        b = np.broadcast_to(np.maximum(np.asarray(scale, np.float64), _MIN_SCALE),
                            symbols.shape).ravel()
    except ValueError as exc:
        raise ValueError(
            f"loc {np.shape(loc)} and scale {np.shape(scale)} must broadcast to the symbols' shape "
            f"{symbols.shape} (one parameter per core position)"
        ) from exc
    return np.ascontiguousarray(mu), np.ascontiguousarray(b)


def encode_laplace(symbols: np.ndarray, loc: np.ndarray | float, scale: np.ndarray) -> bytes:
    """rANS-code integer ``symbols`` with per-entry discretised Laplace(loc, scale) models.

    Parameters
    ----------
    symbols
        Integer array (quantizer indices), any shape.
    loc, scale
        Broadcastable to ``symbols`` (e.g. ``(R_1, ..., R_N)`` against ``(S, R_1, ..., R_N)``),
        in quantizer steps.

    Returns
    -------
    bytes
        A 4-byte header (the range bound ``K = max |q|``) and the compressed 32-bit words.
    """
    sym = np.asarray(symbols)
    if not np.issubdtype(sym.dtype, np.integer):
        raise TypeError(f"symbols must be integers (quantizer indices); got dtype {sym.dtype}")
    if sym.size == 0:
        return _HEADER.pack(0)
    k = max(1, int(np.abs(sym).max()))  # a model needs two symbols at least
    mu, b = _model_args(sym, loc, scale)
    model = constriction.stream.model.QuantizedLaplace(-k, k)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ascontiguousarray(sym.ravel(), dtype=np.int32), model,
                         np.clip(mu, -k, k), b)
    return _HEADER.pack(k) + coder.get_compressed().tobytes()


def decode_laplace(data: bytes, loc: np.ndarray | float, scale: np.ndarray,
                   shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_laplace`: ``int32`` symbols of ``shape``."""
    (k,) = _HEADER.unpack_from(data)
    n = int(np.prod(shape))
    if n == 0:
        return np.zeros(shape, np.int32)
    mu, b = _model_args(np.empty(shape, np.int8), loc, scale)
    words = np.frombuffer(data, dtype=np.uint32, offset=_HEADER.size).copy()
    model = constriction.stream.model.QuantizedLaplace(-k, k)
    coder = constriction.stream.stack.AnsCoder(words)
    return coder.decode(model, np.clip(mu, -k, k), b).astype(np.int32).reshape(shape)


# The mask coder's causal template: (row, column) offsets of the neighbours already decoded when a
# pixel is, left to right and top to bottom; with the reference frame's pixel, 7 bits of context.
_TEMPLATE = ((0, -1), (0, -2), (-1, -1), (-1, 0), (-1, 1), (-2, 0))
_N_MASK_CONTEXTS = 2 ** (len(_TEMPLATE) + 1)
_CHUNK_PIXELS = 1 << 22  # pixels per wavefront run: bounds the coder's working arrays (~0.5 GB)


def _check_anchors(shape: tuple[int, ...], anchors: np.ndarray | None, period: int) -> np.ndarray | None:
    if isinstance(period, bool) or not isinstance(period, int | np.integer) or period < 1:
        raise ValueError(f"period must be an integer >= 1; got {period!r}")
    if anchors is None:
        return None
    a = np.asarray(anchors)
    frames = shape[0]
    if a.dtype != bool or frames % period or a.shape != (frames // period, *shape[1:]):
        raise ValueError(f"anchors must be a boolean (frames / period, H, W) = "
                         f"({frames} / {period}, {shape[1]}, {shape[2]}) array; got {a.dtype} {a.shape}")
    return a


def _schedule(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The decoding order: wavefront ``s = f + 2 i + j`` over (frame, row, column), so that every
    template neighbour and the reference frame's pixel are decoded at an earlier step and a whole
    step decodes at once. Returns flat indices in order and each step's start (``steps + 1``)."""
    frames, height, width = shape
    step = (np.arange(frames, dtype=np.int32)[:, None, None] + 2 * np.arange(height, dtype=np.int32)[:, None]
            + np.arange(width, dtype=np.int32)).ravel()
    small = step.astype(np.uint16) if step[-1] < 2**16 else step  # a radix sort for small keys
    order = np.argsort(small, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(step))])
    return order, bounds


def _padded(shape: tuple[int, int, int]) -> np.ndarray:
    frames, height, width = shape
    return np.zeros((frames, height + 2, width + 3), dtype=np.int8)  # 2 rows above, 2 columns left, 1 right


def _context_at(pad: np.ndarray, f: np.ndarray, i: np.ndarray, j: np.ndarray, ref: np.ndarray) -> np.ndarray:
    ctx = ref.astype(np.int32)
    for k, (di, dj) in enumerate(_TEMPLATE):
        ctx |= pad[f, i + 2 + di, j + 2 + dj].astype(np.int32) << (k + 1)
    return ctx


def _reference_at(out: np.ndarray, anchors: np.ndarray | None, period: int,
                  f: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The pixel of each one's reference frame: its anchor (every ``period``-th frame, with
    anchors), else the frame before (0 for the first)."""
    ref = np.where(f > 0, out[np.maximum(f - 1, 0), i, j], False)
    if anchors is not None:
        first = f % period == 0
        ref = np.where(first, anchors[f // period, i, j], ref)
    return ref


def _frame_chunks(shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Runs of frames of at most ``_CHUNK_PIXELS`` pixels (one frame at least): each is one
    wavefront, so the coder's working arrays stay bounded whatever the stack's length."""
    frames, height, width = shape
    per = max(1, _CHUNK_PIXELS // max(1, height * width))
    return [(a, min(frames, a + per)) for a in range(0, frames, per)]


def encode_mask(mask: np.ndarray, *, anchors: np.ndarray | None = None, period: int = 1) -> bytes:
    """Lossless adaptive coding of a boolean ``(F, H, W)`` stack of frames (e.g. cloud masks).

    A pixel's context is its causal neighbours (left, two left, up-left, up, up-right, two up) and
    the same pixel in a reference frame: the frame before, or, with ``anchors`` (``(F / period, H,
    W)`` bool, known to the decoder), the anchor for every ``period``-th frame. A NaN mask of
    ``(T, C)`` frames coded with ``period = C`` and the ``valid`` frames as anchors costs next to
    nothing where the bands of a date go missing together with ``valid``. The probability of a 1 in
    a context is the Krichevsky-Trofimov estimate ``(ones + 1/2) / (seen + 1)`` from the pixels
    decoded before (no table is stored: a small mask costs little). Pixels are coded in wavefront
    order (:func:`_schedule`) over runs of frames (:func:`_frame_chunks`), so the decoder decodes
    a whole front per call.

    Returns
    -------
    bytes
        The rANS words.
    """
    m = np.asarray(mask)
    if m.dtype != bool or m.ndim != 3:
        raise ValueError(f"mask must be a boolean (frames, H, W) array; got {m.dtype} {m.shape}")
    a = _check_anchors(m.shape, anchors, period)
    if m.size == 0:
        return b""
    frames, height, width = m.shape
    pad = _padded(m.shape)
    pad[:, 2:, 2:-1] = m
    ctx_all = np.zeros(m.shape, np.uint8)
    ctx_all[1:] = m[:-1]
    if a is not None:
        ctx_all[::period] = a
    for k, (di, dj) in enumerate(_TEMPLATE):  # the whole stack at once, as _context_at per front
        ctx_all |= pad[:, 2 + di:2 + di + height, 2 + dj:2 + dj + width].view(np.uint8) << (k + 1)
    del pad
    chunks = _frame_chunks(m.shape)
    # counts of each context in the runs before each run: the decoder's counts when it starts it
    seen0, ones0 = np.zeros(_N_MASK_CONTEXTS, np.int64), np.zeros(_N_MASK_CONTEXTS, np.int64)
    before = []
    for lo, hi in chunks:
        before.append((seen0.copy(), ones0.copy()))
        seen0 += np.bincount(ctx_all[lo:hi].ravel(), minlength=_N_MASK_CONTEXTS)
        ones0 += np.bincount(ctx_all[lo:hi].ravel(), weights=m[lo:hi].ravel(), minlength=_N_MASK_CONTEXTS).astype(np.int64)
    coder = constriction.stream.stack.AnsCoder()
    model = constriction.stream.model.Bernoulli(perfect=False)
    for (lo, hi), (seen_before, ones_before) in zip(chunks[::-1], before[::-1], strict=True):  # a stack: last first
        order, bounds = _schedule((hi - lo, height, width))
        ctx = ctx_all[lo:hi].ravel()[order]
        bits = m[lo:hi].ravel()[order]
        # counts of each context before a pixel's step: runs of (context, step) in context-major order
        step = np.repeat(np.arange(len(bounds) - 1, dtype=np.int32), np.diff(bounds))
        by_ctx = np.argsort(ctx, kind="stable")  # uint8 keys: a radix sort; stable: steps ascend
        c, s = ctx[by_ctx], step[by_ctx]
        idx = np.arange(len(c))
        group_first = np.maximum.accumulate(np.where(np.r_[True, c[1:] != c[:-1]], idx, 0))
        run_first = np.maximum.accumulate(np.where(np.r_[True, (c[1:] != c[:-1]) | (s[1:] != s[:-1])], idx, 0))
        ones_upto = np.concatenate([[0], np.cumsum(bits[by_ctx], dtype=np.int64)])
        seen = np.empty(len(c), np.int64)
        ones = np.empty(len(c), np.int64)
        seen[by_ctx] = run_first - group_first + seen_before[c]
        ones[by_ctx] = ones_upto[run_first] - ones_upto[group_first] + ones_before[c]
        coder.encode_reverse(bits.astype(np.int32), model, (ones + 0.5) / (seen + 1.0))
    return coder.get_compressed().tobytes()


def decode_mask(data: bytes, shape: tuple[int, int, int], *, anchors: np.ndarray | None = None,
                period: int = 1) -> np.ndarray:
    """Inverse of :func:`encode_mask`, with the same ``anchors`` and ``period``."""
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    a = _check_anchors(shape, anchors, period)
    out = np.zeros(shape, dtype=bool)
    if out.size == 0:
        return out
    pad = _padded(shape)
    seen = np.zeros(_N_MASK_CONTEXTS, np.int64)
    ones = np.zeros(_N_MASK_CONTEXTS, np.int64)
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, np.uint32).copy())
    model = constriction.stream.model.Bernoulli(perfect=False)
    for lo, hi in _frame_chunks(shape):
        order, bounds = _schedule((hi - lo, *shape[1:]))
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            f, i, j = np.unravel_index(order[start:stop], (hi - lo, *shape[1:]))
            f = f + lo
            ctx = _context_at(pad, f, i, j, _reference_at(out, a, period, f, i, j))
            bits = coder.decode(model, (ones[ctx] + 0.5) / (seen[ctx] + 1.0)).astype(bool)
            out[f, i, j] = bits
            pad[f, i + 2, j + 2] = bits
            seen += np.bincount(ctx, minlength=_N_MASK_CONTEXTS)
            ones += np.bincount(ctx, weights=bits, minlength=_N_MASK_CONTEXTS).astype(np.int64)
    return out


def _row_contexts(prev_row: np.ndarray, prev_frame_row: np.ndarray) -> np.ndarray:
    """Context 0..15 of each pixel of a row: up-left, up, up-right and the previous frame."""
    up = prev_row.astype(np.int64)
    left = np.concatenate([[0], up[:-1]])
    right = np.concatenate([up[1:], [0]])
    return left + 2 * up + 4 * right + 8 * prev_frame_row.astype(np.int64)


def encode_mask_rows(mask: np.ndarray) -> bytes:
    """The mask coder of stores written before :func:`encode_mask` (kept to read them): contexts
    of the three pixels above and the frame before (16), their probabilities in a 16 x uint16
    header, then the rANS words."""
    m = np.asarray(mask)
    if m.dtype != bool or m.ndim != 3:
        raise ValueError(f"mask must be a boolean (frames, H, W) array; got {m.dtype} {m.shape}")
    ref = np.zeros_like(m)
    ref[1:] = m[:-1]
    up = np.zeros(m.shape, np.int64)
    up[:, 1:] = m[:, :-1]
    left, right = np.zeros_like(up), np.zeros_like(up)
    left[:, :, 1:] = up[:, :, :-1]
    right[:, :, :-1] = up[:, :, 1:]
    ctx = left + 2 * up + 4 * right + 8 * ref.astype(np.int64)
    ones = np.bincount(ctx.ravel(), weights=m.ravel(), minlength=16)
    total = np.bincount(ctx.ravel(), minlength=16)
    p16 = np.clip(np.rint((ones + 0.5) / (total + 1.0) * 65535), 1, 65534).astype(np.uint16)
    if m.size == 0:
        return p16.tobytes()
    p = p16.astype(np.float64)[ctx.ravel()] / 65535
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(m.ravel().astype(np.int32), constriction.stream.model.Bernoulli(perfect=False), p)
    return p16.tobytes() + coder.get_compressed().tobytes()


def decode_mask_rows(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode_mask_rows` (decoded row by row: each row's context is known)."""
    frames, height, width = shape
    p16 = np.frombuffer(data, dtype=np.uint16, count=16).astype(np.float64) / 65535
    out = np.zeros(shape, dtype=bool)
    if out.size == 0:
        return out
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, np.uint32, offset=32).copy())
    model = constriction.stream.model.Bernoulli(perfect=False)
    zero_row = np.zeros(width, dtype=bool)
    for f in range(frames):
        prev_frame = out[f - 1] if f else None
        for i in range(height):
            ctx = _row_contexts(out[f, i - 1] if i else zero_row,
                                prev_frame[i] if prev_frame is not None else zero_row)
            out[f, i] = coder.decode(model, np.ascontiguousarray(p16[ctx])).astype(bool)
    return out


def _zigzag(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.int64)
    return np.where(q >= 0, 2 * q, -2 * q - 1).astype(np.uint64)


def zstd_encode(symbols: np.ndarray, *, level: int = 19) -> bytes:
    """General-purpose floor: zig-zag integers in the smallest unsigned dtype, then Zstandard.

    Returns ``bytes`` with a 1-byte dtype width header.
    """
    sym = np.asarray(symbols)
    if not np.issubdtype(sym.dtype, np.integer):
        raise TypeError(f"symbols must be integers; got dtype {sym.dtype}")
    z = _zigzag(sym.ravel())
    top = int(z.max()) if z.size else 0
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(d).max)
    width = np.dtype(dtype).itemsize
    return bytes([width]) + zstandard.ZstdCompressor(level=level).compress(z.astype(dtype).tobytes())


def zstd_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`zstd_encode`: int64 symbols of ``shape``."""
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[data[0]]
    z = np.frombuffer(zstandard.ZstdDecompressor().decompress(data[1:]), dtype=dtype).astype(np.int64)
    return np.where(z % 2 == 0, z // 2, -(z + 1) // 2).reshape(shape)


# --- context-adaptive coding of quantized cores --------------------------------------------------

_CTX_EDGES = 2.0 ** np.arange(-5.0, 3.01, 0.5)  # edges of the neighbourhood ratio (17 -> 18 bins)
_CTX_CLASSES = np.array([-3.0, -1.0, 1.0])  # edges of log2 of the position's scale (4 classes)
_CTX_EPS = 0.05  # regularises the ratio where the neighbours' expected magnitude is tiny
_CTX_WEIGHTS = (1.0, 0.5)  # weights of the neighbours r - e_n and r - 2 e_n in the context
_CTX_HEADER = struct.Struct("<iH")  # K = max |q|, the number of contexts
_CODE_UNIT = 8  # a context's log2 scale multiplier is stored as int8 in 1/8 units


@dataclass(frozen=True)
class ContextPlan:
    """The coding order of a core's positions and each position's causal neighbours.

    Positions ``r = (r_1, ..., r_N)`` of an ``(R_1, ..., R_N)`` core are coded by levels
    ``l = r_1 + ... + r_N`` (every patch's level ``l`` after every patch's level ``l - 1``), so the
    neighbours ``r - e_n`` and ``r - 2 e_n`` of a position are always known to the decoder before it.

    Attributes
    ----------
    shape
        ``(R_1, ..., R_N)``.
    order
        ``(M,)`` flat (C-order) positions, sorted by level; ``M = prod R_n``.
    starts
        ``(L + 1,)`` offsets of each level in ``order``.
    neighbours
        ``(2, N, M)``: flat index of ``r - d e_n`` (``d = 1, 2``) for every flat position, ``-1``
        where ``r_n < d``.
    """

    shape: tuple[int, ...]
    order: np.ndarray
    starts: np.ndarray
    neighbours: np.ndarray


def context_plan(shape: tuple[int, ...]) -> ContextPlan:
    """The level order and causal neighbours of an ``(R_1, ..., R_N)`` core (:class:`ContextPlan`)."""
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"shape must be (R_1, ..., R_N) with every R_n >= 1; got {shape}")
    idx = np.indices(shape).reshape(len(shape), -1)  # (N, M)
    level = idx.sum(axis=0)
    order = np.argsort(level, kind="stable")
    starts = np.searchsorted(level[order], np.arange(int(level.max()) + 2))
    flat = np.arange(idx.shape[1]).reshape(shape)
    neighbours = np.full((2, len(shape), idx.shape[1]), -1, dtype=np.int64)
    for d in (1, 2):
        for n in range(len(shape)):
            if shape[n] <= d:
                continue
            nb = np.full(shape, -1, dtype=np.int64)
            src = [slice(None)] * len(shape)
            dst = [slice(None)] * len(shape)
            src[n], dst[n] = slice(None, -d), slice(d, None)
            nb[tuple(dst)] = flat[tuple(src)]
            neighbours[d - 1, n] = nb.ravel()
    return ContextPlan(shape=shape, order=order, starts=starts, neighbours=neighbours)


def laplace_code_length(symbols: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    r"""Ideal code length in bits of integers under the zero-mean discretised Laplace model.

    :math:`P(0) = 1 - e^{-1/(2b)}` and, for :math:`q \ne 0`,
    :math:`P(q) = \tfrac12 e^{-(|q| - 1/2)/b}\,(1 - e^{-1/b})`, the mass of the Laplace density of
    scale ``b`` on ``[q - 1/2, q + 1/2]``; the coder spends ``-log2 P(q)`` up to its precision.
    """
    a = np.abs(np.asarray(symbols, dtype=np.float64))
    b = np.maximum(np.asarray(scale, dtype=np.float64), _MIN_SCALE)
    with np.errstate(divide="ignore"):
        zero = np.log(-np.expm1(-0.5 / b))
        other = np.log(0.5) - (a - 0.5) / b + np.log(-np.expm1(-1.0 / b))
    return -np.where(a < 0.5, zero, other) / np.log(2.0)


def _context_index(mags: np.ndarray, pos: np.ndarray, plan: ContextPlan, scale: np.ndarray,
                   classes: np.ndarray) -> np.ndarray:
    """Context of the coefficients at flat positions ``pos`` of every patch: ``(P, len(pos))``.

    ``mags`` holds ``|q|`` of the decoded (or all) coefficients, ``(P, M)``; the context is the bin
    of the ratio ``(sum_d w_d sum_n |q[r - d e_n]| + eps) / (sum_d w_d sum_n b[r - d e_n] + eps)``
    (observed neighbour magnitude over its expected value; ``w_1 = 1, w_2 = 1/2``) times the class
    of the position's own scale ``b[r]``; the position with no neighbour (``r = 0``) has a context of
    its own. The sums run in the same order as in :func:`_all_context_index`, so encoder and
    decoder agree bit for bit.
    """
    num = np.zeros((mags.shape[0], len(pos)))
    den = np.zeros(len(pos))
    for d, weight in enumerate(_CTX_WEIGHTS):
        for n in range(plan.neighbours.shape[1]):
            nb = plan.neighbours[d, n, pos]
            ok = nb >= 0
            if not ok.any():
                continue
            safe = np.where(ok, nb, 0)
            num += weight * mags[:, safe] * ok
            den += weight * scale[safe] * ok
    ratio = (num + _CTX_EPS) / (den + _CTX_EPS)
    nbins = len(_CTX_EDGES) + 1
    ctx = np.searchsorted(_CTX_EDGES, ratio) + nbins * classes[pos]
    has = (plan.neighbours[0][:, pos] >= 0).any(axis=0)
    return np.where(has, ctx, nbins * (len(_CTX_CLASSES) + 1))


def _n_contexts() -> int:
    return (len(_CTX_EDGES) + 1) * (len(_CTX_CLASSES) + 1) + 1


def _fit_codes(sym: np.ndarray, b: np.ndarray, ctx: np.ndarray, n_ctx: int) -> np.ndarray:
    """Per context, the int8 ``c`` minimising the code length with scales ``b * 2^(c/8)``.

    ``sym`` and ``ctx`` are ``(P, M)``, ``b`` the ``(M,)`` prior scales of the positions. The code
    length of a symbol under the discretised Laplace model depends on it only through ``q == 0``
    and ``|q| - 1/2`` (:func:`laplace_code_length`), so the symbols of a context are summarised per
    prior scale (``log2 b`` rounded to 1/8) by three sufficient statistics, and every int8
    multiplier is tried on the summaries (an exhaustive search, exact up to that rounding).
    """
    sbin = np.rint(_CODE_UNIT * np.log2(np.maximum(b, _MIN_SCALE))).astype(np.int64)  # (M,)
    lo = int(sbin.min()) if sbin.size else 0
    width = int(sbin.max()) - lo + 1 if sbin.size else 1
    key = ctx.astype(np.int64) * width + (sbin - lo)  # (P, M)
    size = n_ctx * width
    nonzero = sym != 0
    ones = np.bincount(key[nonzero], minlength=size).astype(np.float64)
    zeros = np.bincount(key.ravel(), minlength=size) - ones
    excess = np.bincount(key[nonzero], weights=np.abs(sym[nonzero]) - 0.5, minlength=size)
    groups = np.flatnonzero(zeros + ones)
    zeros, ones, excess = zeros[groups], ones[groups], excess[groups]
    g_ctx, g_sbin = groups // width, groups % width + lo
    codes = np.arange(-128, 128)
    scale = np.maximum(2.0 ** ((g_sbin[None, :] + codes[:, None]) / _CODE_UNIT), _MIN_SCALE)  # (256, G)
    with np.errstate(divide="ignore"):
        cost = (zeros * -np.log2(-np.expm1(-0.5 / scale))
                + ones * (1.0 - np.log2(-np.expm1(-1.0 / scale)))
                + excess / (scale * np.log(2.0)))
    total = np.zeros((len(codes), n_ctx))
    np.add.at(total.T, g_ctx, cost.T)
    best = codes[np.argmin(total, axis=0)].astype(np.int8)
    best[np.bincount(g_ctx, minlength=n_ctx) == 0] = 0
    return best


def _scale_classes(scale: np.ndarray) -> np.ndarray:
    return np.searchsorted(_CTX_CLASSES, np.log2(np.maximum(scale, _MIN_SCALE)))


def _check_core(symbols: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sym = np.asarray(symbols)
    if not np.issubdtype(sym.dtype, np.integer):
        raise TypeError(f"symbols must be integers (quantizer indices); got dtype {sym.dtype}")
    b = np.asarray(scale, dtype=np.float64)
    if sym.ndim < 2 or sym.shape[1:] != b.shape:
        raise ValueError(
            f"symbols must be (P, R_1, ..., R_N) and scale (R_1, ..., R_N); got {sym.shape} and {b.shape}"
        )
    return sym.reshape(sym.shape[0], b.size), np.maximum(b.ravel(), _MIN_SCALE)


def _all_context_index(flat: np.ndarray, plan: ContextPlan, b: np.ndarray) -> np.ndarray:
    """Contexts of every coefficient of ``flat (P, M)`` (flat C-order positions); the same as
    :func:`_context_index` over all positions, by shifted slices instead of gathers."""
    shape = plan.shape
    mags = np.abs(flat).astype(np.float64).reshape(-1, *shape)
    scale = b.reshape(shape)
    num = np.zeros_like(mags)
    den = np.zeros(shape)
    for d, weight in enumerate(_CTX_WEIGHTS, start=1):
        for n in range(len(shape)):
            if shape[n] <= d:
                continue
            dst = (slice(None),) * n + (slice(d, None),)
            src = (slice(None),) * n + (slice(None, -d),)
            num[(slice(None), *dst)] += weight * mags[(slice(None), *src)]
            den[dst] += weight * scale[src]
    has = np.indices(shape).sum(axis=0) > 0
    ratio = (num + _CTX_EPS) / (den + _CTX_EPS)
    nbins = len(_CTX_EDGES) + 1
    ctx = np.searchsorted(_CTX_EDGES, ratio) + nbins * _scale_classes(scale)
    ctx = np.where(has, ctx, nbins * (len(_CTX_CLASSES) + 1))
    return ctx.reshape(flat.shape)


def context_model(symbols: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_context_model` and :func:`context_scales` in one pass: ``(codes, scales)``."""
    flat, b = _check_core(symbols, scale)
    ctx = _all_context_index(flat, context_plan(np.shape(scale)), b)
    codes = _fit_codes(flat, b, ctx, _n_contexts())
    scales = np.maximum(b * 2.0 ** (codes[ctx].astype(np.float64) / _CODE_UNIT), _MIN_SCALE)
    return codes, scales.reshape(np.shape(symbols))


def fit_context_model(symbols: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The int8 log2 scale multipliers (in 1/8 units) of every context of
    :func:`encode_context_laplace`, fitted to ``symbols`` by minimising their code length."""
    return context_model(symbols, scale)[0]


def context_scales(symbols: np.ndarray, scale: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Laplace scale of every coefficient under the context model ``codes``, its context taken
    from ``symbols``' own neighbours: what the coder uses, ``symbols.shape`` float64."""
    flat, b = _check_core(symbols, scale)
    ctx = _all_context_index(flat, context_plan(np.shape(scale)), b)
    out = np.maximum(b * 2.0 ** (np.asarray(codes)[ctx].astype(np.float64) / _CODE_UNIT), _MIN_SCALE)
    return out.reshape(np.shape(symbols))


def encode_context_laplace(symbols: np.ndarray, scale: np.ndarray, *,
                           codes: np.ndarray | None = None) -> bytes:
    r"""rANS-code quantized cores with context-adaptive Laplace models.

    A coefficient ``q[p, r]`` of patch ``p`` at core position ``r`` is coded with the discretised
    zero-mean Laplace model of scale ``b[r] * m[c]``: ``b`` the position's prior scale (in
    quantizer steps; e.g. the separable profile learned on the training cores) and ``m[c]`` the
    multiplier of its context ``c``. The context combines the bin of the ratio of the already coded
    neighbour magnitudes ``sum_n |q[p, r - e_n]|`` to their expected value ``sum_n b[r - e_n]``
    (a patch whose low-index coefficients are larger than usual has larger high-index ones too)
    with the class of ``b[r]``; one multiplier per context is fitted to the data by minimising the
    code length (:func:`fit_context_model`) and stored as int8, the forward-adaptive choice of
    context models in image coders (e.g. EBCOT: D. Taubman, "High performance scalable image
    compression with EBCOT", IEEE Trans. Image Process. 9(7), 2000). Coding runs by the levels
    of :func:`context_plan`, so the decoder knows every context before it needs it.

    Parameters
    ----------
    symbols
        ``(P, R_1, ..., R_N)`` integers (quantizer indices of ``P`` cores).
    scale
        ``(R_1, ..., R_N)`` positive prior scales in quantizer steps.
    codes
        The context model (:func:`fit_context_model`); fitted to ``symbols`` when not given.

    Returns
    -------
    bytes
        Header (``K = max |q|``, the number of contexts and their int8 multipliers), then the rANS
        words.
    """
    flat, b = _check_core(symbols, scale)
    n_ctx = _n_contexts()
    if codes is None:
        codes, scales = context_model(symbols, scale)
    else:
        codes = np.asarray(codes, dtype=np.int8)
        if codes.shape != (n_ctx,):
            raise ValueError(f"codes must hold one int8 per context ({n_ctx}); got shape {codes.shape}")
        scales = context_scales(symbols, scale, codes)
    scales = scales.reshape(flat.shape)
    k = max(1, int(np.abs(flat).max())) if flat.size else 1
    head = _CTX_HEADER.pack(k, n_ctx) + codes.tobytes()
    if flat.size == 0:
        return head
    plan = context_plan(np.shape(scale))
    # level-major stream: level 0 of every patch, then level 1, ...
    parts_sym, parts_b = [], []
    for lo, hi in zip(plan.starts[:-1], plan.starts[1:], strict=True):
        pos = plan.order[lo:hi]
        parts_sym.append(flat[:, pos].ravel())
        parts_b.append(scales[:, pos].ravel())
    model = constriction.stream.model.QuantizedLaplace(-k, k)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.ascontiguousarray(np.concatenate(parts_sym), dtype=np.int32), model,
                         np.zeros(flat.size), np.concatenate(parts_b))
    return head + coder.get_compressed().tobytes()


def decode_context_laplace(data: bytes, scale: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`encode_context_laplace`: ``(n, R_1, ..., R_N)`` int32."""
    b = np.asarray(scale, dtype=np.float64)
    k, n_ctx = _CTX_HEADER.unpack_from(data)
    if n_ctx != _n_contexts():
        raise ValueError(f"bitstream has {n_ctx} contexts; this coder uses {_n_contexts()}")
    codes = np.frombuffer(data, dtype=np.int8, count=n_ctx, offset=_CTX_HEADER.size)
    plan = context_plan(b.shape)
    m = int(np.prod(b.shape))
    out = np.zeros((n, m), dtype=np.int32)
    start = _CTX_HEADER.size + n_ctx
    if (len(data) - start) % 4:
        raise ValueError(f"corrupt bitstream: its rANS payload ({len(data) - start} bytes) is not a "
                         "whole number of 32-bit words")
    words = np.frombuffer(data, dtype=np.uint32, offset=start).copy()
    coder = constriction.stream.stack.AnsCoder(words)
    if n * m:
        bflat = np.maximum(b.ravel(), _MIN_SCALE)
        classes = _scale_classes(bflat)
        mags = np.zeros((n, m), dtype=np.float64)
        model = constriction.stream.model.QuantizedLaplace(-k, k)
        for lo, hi in zip(plan.starts[:-1], plan.starts[1:], strict=True):
            pos = plan.order[lo:hi]
            ctx = _context_index(mags, pos, plan, bflat, classes)  # (n, len(pos))
            sc = np.maximum(bflat[pos] * 2.0 ** (codes[ctx].astype(np.float64) / _CODE_UNIT), _MIN_SCALE)
            vals = coder.decode(model, np.zeros(sc.size), np.ascontiguousarray(sc.ravel()))
            out[:, pos] = vals.reshape(n, -1)
            mags[:, pos] = np.abs(out[:, pos])
    if not coder.is_empty():  # the stream is level-major: a wrong n garbles every item, not the last
        raise ValueError(f"the bitstream does not decode to exactly {n} item(s) of shape {b.shape}: "
                         "another count was encoded, or the stream is damaged")
    return out.reshape(n, *b.shape)
