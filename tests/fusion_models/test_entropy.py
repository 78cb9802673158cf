"""The context-adaptive Laplace coder of quantized cores on planted distributions."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_models import entropy


def _planted(n: int = 400, shape: tuple[int, ...] = (4, 6, 6), *, seed: int = 0,
             activity: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer cores ``round(Laplace(0, s[r] * a_p))``: ``s`` decays with the index, ``a_p`` a
    per-patch activity (log-normal with sigma ``activity``). Returns ``q, s, a``."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).sum(axis=0)
    s = 6.0 * 0.6**idx  # (R_1, ..., R_N)
    a = np.exp(activity * rng.standard_normal(n)).reshape(-1, *[1] * len(shape))
    q = np.rint(rng.laplace(0.0, s * a)).astype(np.int32)
    return q, s, a


@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 3, 4, 4)])
def test_context_coder_round_trips_exactly(shape: tuple[int, ...]) -> None:
    q, s, _ = _planted(60, shape, activity=1.0)
    q[0, (0,) * len(shape)] = 5000  # a large outlier
    data = entropy.encode_context_laplace(q, s)
    assert np.array_equal(entropy.decode_context_laplace(data, s, len(q)), q)
    zero = np.zeros((7, *shape), np.int32)  # all zero: a valid stream too
    assert np.array_equal(entropy.decode_context_laplace(entropy.encode_context_laplace(zero, s), s, 7), zero)
    static = entropy.encode_laplace(zero, 0.0, np.ones(shape))  # the static coder too
    assert np.array_equal(entropy.decode_laplace(static, 0.0, np.ones(shape), zero.shape), zero)
    empty = np.zeros((0, *shape), np.int32)
    assert entropy.decode_context_laplace(entropy.encode_context_laplace(empty, s), s, 0).shape == empty.shape


def test_context_plan_codes_every_neighbour_first() -> None:
    plan = entropy.context_plan((3, 4, 2))
    rank = np.empty(24, int)
    rank[plan.order] = np.arange(24)
    level = np.indices((3, 4, 2)).sum(axis=0).ravel()
    for d in (1, 2):
        for n in range(3):
            nb = plan.neighbours[d - 1, n]
            ok = nb >= 0
            assert np.all(level[nb[ok]] == level[ok] - d)  # r - d e_n is d levels up
            assert np.all(rank[nb[ok]] < rank[ok])
            assert ok.sum() == 24 // (3, 4, 2)[n] * max((3, 4, 2)[n] - d, 0)
    assert plan.starts[0] == 0 and plan.starts[-1] == 24


def test_code_length_model_matches_the_coder_and_the_entropy() -> None:
    q, s, _ = _planted(3000, (3, 4, 4))
    ideal = float(entropy.laplace_code_length(q, np.broadcast_to(s, q.shape)).sum())
    static = 8 * len(entropy.encode_laplace(q, 0.0, s))
    assert static == pytest.approx(ideal, rel=0.02)  # rANS spends -log2 P(q)
    # the context coder on the true prior: near the planted model's entropy (header and a few
    # fitted multipliers cost little)
    ctx = 8 * len(entropy.encode_context_laplace(q, s))
    assert ctx < 1.03 * ideal + 8 * 100


def test_context_model_learns_a_per_patch_activity() -> None:
    # the prior knows the position's scale but not the patch's activity: the context model infers
    # it from the already coded neighbours and beats the static model by a wide margin
    q, s, a = _planted(2000, (4, 6, 6), activity=1.2)
    static = 8 * len(entropy.encode_laplace(q, 0.0, s))
    ctx = 8 * len(entropy.encode_context_laplace(q, s))
    oracle = float(entropy.laplace_code_length(q, s * a).sum())  # knows every activity
    assert ctx < 0.85 * static
    assert ctx < 1.2 * oracle


def test_fitted_multipliers_recover_a_mis_scaled_prior() -> None:
    # a prior 4x too small: every used context's multiplier comes out near 4 (= 2^(16/8))
    rng = np.random.default_rng(3)
    s = np.full((1, 1, 1), 2.0)
    q = np.rint(rng.laplace(0.0, 8.0, size=(20000, 1, 1, 1))).astype(np.int32)
    codes = entropy.fit_context_model(q, s)
    assert codes[entropy._n_contexts() - 1] == pytest.approx(16, abs=1)  # the no-neighbour context


def test_context_coder_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="integers"):
        entropy.encode_context_laplace(np.zeros((2, 3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\(P, R_1, \.\.\., R_N\)"):
        entropy.encode_context_laplace(np.zeros((2, 3, 3), np.int32), np.ones((3, 4)))
    with pytest.raises(ValueError, match="every R_n >= 1"):
        entropy.context_plan((3, 0))


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 9), (4, 9, 1), (6, 5, 7), (12, 32, 32)])
def test_mask_coder_round_trips_any_shape(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.4
    assert np.array_equal(entropy.decode_mask(entropy.encode_mask(mask), shape), mask)
    anchors = rng.random((shape[0], *shape[1:])) > 0.5
    coded = entropy.encode_mask(mask, anchors=anchors)
    assert np.array_equal(entropy.decode_mask(coded, shape, anchors=anchors), mask)
    assert entropy.decode_mask(entropy.encode_mask(mask[:0]), (0, *shape[1:])).shape == (0, *shape[1:])


def test_mask_coder_learns_blobs_and_anchor_frames() -> None:
    """Cloud-like blobs cost a fraction of what the old row coder (three pixels above, no left
    neighbour) spent; a (T x C) NaN mask whose bands go missing with valid, coded with valid as
    each date's anchor, costs next to nothing."""
    rng = np.random.default_rng(0)
    t, c, h, w = 6, 4, 32, 40
    yy, xx = np.mgrid[0:h, 0:w]
    valid = np.stack([(yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 > rng.uniform(50, 200)
                      for _ in range(t)])  # a round cloud per date
    coded = entropy.encode_mask(valid)
    assert np.array_equal(entropy.decode_mask(coded, valid.shape), valid)
    assert 2 * len(coded) < len(entropy.encode_mask_rows(valid)) - 32  # beyond the rows coder's table
    assert np.array_equal(entropy.decode_mask_rows(entropy.encode_mask_rows(valid), valid.shape), valid)
    finite = np.repeat(valid[:, None], c, axis=1)
    finite[2, 3, 5, 7] = not finite[2, 3, 5, 7]  # one band off on its own: still lossless
    frames = finite.reshape(t * c, h, w)
    anchored = entropy.encode_mask(frames, anchors=valid, period=c)
    assert np.array_equal(entropy.decode_mask(anchored, frames.shape, anchors=valid, period=c), frames)
    assert 8 * len(anchored) < 0.01 * frames.size
    assert len(entropy.encode_mask(frames)) > 4 * len(anchored)
    with pytest.raises(ValueError, match="anchors"):
        entropy.encode_mask(frames, anchors=valid[:-1], period=c)
    with pytest.raises(ValueError, match="period"):
        entropy.encode_mask(frames, anchors=valid, period=0)


def test_mask_coder_runs_of_frames_round_trip(monkeypatch) -> None:
    """A long stack is coded in runs of frames (bounded working arrays); the counts carry over from
    run to run, so the runs decode back to the stack, anchored or not."""
    rng = np.random.default_rng(3)
    mask = rng.random((10, 9, 11)) > 0.5
    anchors = rng.random((5, 9, 11)) > 0.5
    whole = entropy.encode_mask(mask, anchors=anchors, period=2)
    monkeypatch.setattr(entropy, "_CHUNK_PIXELS", 3 * 9 * 11)  # runs of 3 frames, across the period
    assert entropy._frame_chunks(mask.shape) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    coded = entropy.encode_mask(mask, anchors=anchors, period=2)
    assert np.array_equal(entropy.decode_mask(coded, mask.shape, anchors=anchors, period=2), mask)
    assert abs(len(coded) - len(whole)) <= 8  # the same model: only the wavefronts' order differs
