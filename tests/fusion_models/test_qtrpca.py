"""Q-TRPCA, its baselines and the t-SVD operators: planted low-rank + sparse structure is recovered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fusion_models.qtrpca import (
    _trimmed_set,
    bin_bounds,
    cluster_score,
    default_lambda,
    dequantize,
    matrix_rpca,
    optimal_shrinkage,
    qtrpca,
    quantize,
    robust_threshold,
    robust_zscore,
    trpca,
    tubal_shrink,
    tubal_truncate,
)
from fusion_models.statistics import masked_median
from fusion_models.tensor_ops import (
    singular_values,
    soft_threshold,
    spectral_map,
    svt,
    tnn,
    tnn_prox,
    tprod,
    tsvd,
    ttranspose,
)


def _planted(seed: int = 0, shape: tuple[int, int, int] = (20, 20, 10), rank: int = 2, share: float = 0.05):
    rng = np.random.default_rng(seed)
    n1, n2, n3 = shape
    # low tubal rank with the FFT along x (the solvers' orientation: (y, time, x) internally)
    low = np.swapaxes(tprod(rng.standard_normal((n1, rank, n2)), rng.standard_normal((rank, n3, n2))), 1, 2)
    sparse = np.zeros(shape)
    hit = rng.random(shape) < share
    sparse[hit] = rng.choice([-1.0, 1.0], hit.sum()) * rng.uniform(3, 6, hit.sum())
    return low, sparse


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_exact_recovery_without_quantization_full_observation():
    low, sparse = _planted()
    res = trpca(low + sparse, tol=1e-8)
    assert res.converged
    assert _rel(res.L, low) < 1e-5
    assert _rel(res.S, sparse) < 1e-5
    assert res.history[-1] < res.history[0]


def test_qtrpca_at_16_bits_recovers_like_trpca():
    low, sparse = _planted(seed=1)
    y = low + sparse
    codes, edges = quantize(y, 16, y.min(), y.max())
    res = qtrpca(codes, edges)
    assert _rel(res.L, low) < 1e-3


def test_error_falls_as_bits_increase():
    low, sparse = _planted(seed=2)
    y = low + sparse
    omega = np.random.default_rng(3).random(y.shape) > 0.2
    errors = []
    for bits in (3, 5, 8):
        codes, edges = quantize(y, bits, y.min(), y.max())
        errors.append(_rel(qtrpca(codes, edges, omega).L, low))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


def test_recovered_entries_on_omega_stay_in_their_bins():
    low, sparse = _planted(seed=4)
    y = low + sparse
    omega = np.random.default_rng(5).random(y.shape) > 0.3
    codes, edges = quantize(y, 4, y.min(), y.max())
    res = qtrpca(codes, edges, omega)
    lower, upper = bin_bounds(codes, edges)
    est = (res.L + res.S)[omega]
    slack = 1e-4 * (edges[-1] - edges[0])
    assert np.all(est >= lower[omega] - slack)
    assert np.all(est <= upper[omega] + slack)
    assert np.all(res.S[~omega] == 0)


def test_tnn_prox_matches_direct_per_frequency_svd():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 5, 7))
    tau = 1.3
    fx = np.fft.fft(x, axis=2)
    direct = np.empty_like(fx)
    for k in range(x.shape[2]):
        u, s, vh = np.linalg.svd(fx[:, :, k], full_matrices=False)
        direct[:, :, k] = (u * np.maximum(s - tau, 0)) @ vh
    expected = np.fft.ifft(direct, axis=2).real
    got, rank = tnn_prox(x, tau)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert 0 < rank <= 5
    # it is the prox: no perturbation lowers tau * TNN(z) + 0.5 ||z - x||^2
    obj = lambda z: tau * tnn(z) + 0.5 * np.sum((z - x) ** 2)  # noqa: E731
    for _ in range(5):
        assert obj(got) <= obj(got + 1e-3 * rng.standard_normal(x.shape)) + 1e-12


def _lapack_map(a: np.ndarray, gain) -> np.ndarray:
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return (u * (gain(s) * s)[..., None, :]) @ vh


@pytest.mark.parametrize("shape", [(6, 40), (40, 6), (5, 5), (3, 64, 27), (3, 27, 64)])
@pytest.mark.parametrize("complex_", [False, True])
def test_spectral_map_equals_the_svd_of_the_long_side(shape, complex_):
    rng = np.random.default_rng(11)
    a = rng.normal(size=shape) + (1j * rng.normal(size=shape) if complex_ else 0)
    s_ref = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(singular_values(a), s_ref, rtol=1e-9, atol=1e-9)
    for tau in (0.0, float(s_ref.min()) + 1e-3, float(s_ref.max()) * 0.5, float(s_ref.max()) + 1.0):
        np.testing.assert_allclose(svt(a, tau), _lapack_map(a, lambda s, tau=tau: np.maximum(s - tau, 0) / s), atol=1e-9)
    rank_two = lambda s: (np.arange(s.shape[-1]) < 2) * np.ones_like(s)  # noqa: E731
    z, s = spectral_map(a, rank_two)
    np.testing.assert_allclose(z, _lapack_map(a, rank_two), atol=1e-9)
    np.testing.assert_allclose(s, s_ref, rtol=1e-9, atol=1e-9)
    assert np.all(np.linalg.matrix_rank(z) == 2)


def test_spectral_map_known_cases():
    # diag(3, 1) thresholded at 2 keeps diag(1, 0); every gain 0 gives zeros; identity gains give A
    np.testing.assert_allclose(svt(np.diag([3.0, 1.0]), 2.0), np.diag([1.0, 0.0]), atol=1e-12)
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(spectral_map(a, np.zeros_like)[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(spectral_map(a, lambda s: (s > 0).astype(float))[0], a, atol=1e-10)
    with pytest.raises(ValueError, match="tau must be finite and >= 0"):
        svt(np.eye(2), -1.0)
    with pytest.raises(ValueError, match="matrix"):
        svt(np.ones(3), 1.0)


def test_masked_median_equals_nanmedian():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 8, 6))
    mask = rng.random(x.shape) > 0.4
    mask[0, :, 0] = False  # a line with no entry
    mask[1, :, 1] = True  # a full line (even count)
    for axis in range(3):
        got = masked_median(x, mask, axis, empty=-7.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN line
            ref = np.nanmedian(np.where(mask, x, np.nan), axis=axis, keepdims=True)
        np.testing.assert_allclose(got, np.where(np.isnan(ref), -7.0, ref), atol=1e-15)
    # known answers: odd and even counts, masked-out values ignored however large
    v = np.array([[1.0, 9.0, 3.0, 100.0], [4.0, 2.0, 8.0, 6.0]])
    m = np.array([[True, True, True, False], [True, True, True, True]])
    assert masked_median(v, m, axis=1).ravel().tolist() == [3.0, 5.0]


def test_tsvd_reconstructs_and_matrix_operators():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3, 5))
    u, s, v = tsvd(x)
    np.testing.assert_allclose(tprod(tprod(u, s), ttranspose(v)), x, atol=1e-10)
    m = rng.standard_normal((5, 4))
    np.testing.assert_allclose(svt(m, 0.0), m, atol=1e-12)
    assert np.linalg.matrix_rank(svt(m, np.linalg.svd(m, compute_uv=False)[1])) == 1
    np.testing.assert_allclose(soft_threshold(np.array([-2.0, 0.5, 3.0]), 1.0), [-1.0, 0.0, 2.0])


def test_baselines_find_spikes():
    low, sparse = _planted(seed=9, rank=1)
    y = low + sparse
    omega = np.random.default_rng(10).random(y.shape) > 0.1
    res = matrix_rpca(y, omega)
    assert res.L.shape == y.shape and np.all(res.S[~omega] == 0)
    score, background = robust_zscore(y, omega)
    assert score.shape == background.shape == y.shape
    hit = (sparse != 0) & omega
    assert score[hit].mean() > score[omega & ~hit].mean()


def test_default_lambda_and_quantizer():
    assert default_lambda((20, 30, 10)) == pytest.approx(1 / np.sqrt(300))
    codes, edges = quantize(np.array([0.0, 0.49, 0.51, 1.0, 7.0]), 1, 0.0, 1.0)
    assert codes.tolist() == [0, 0, 1, 1, 1] and edges.tolist() == [0.0, 0.5, 1.0]
    assert dequantize(codes, edges).tolist() == [0.25, 0.25, 0.75, 0.75, 0.75]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="third-order tensor"):
        trpca(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="omega must have the shape"):
        trpca(np.zeros((4, 4, 3)), np.ones((4, 4, 2), bool))
    with pytest.raises(ValueError, match="omega must be bool or 0/1 .* with values other than 0 and 1"):
        trpca(np.zeros((4, 4, 3)), np.full((4, 4, 3), 0.5))
    with pytest.raises(ValueError, match="omega must be bool or 0/1"):
        trpca(np.zeros((4, 4, 3)), np.full((4, 4, 3), "yes"))
    y = np.random.default_rng(0).normal(size=(4, 4, 3))  # QA9: 0/1 masks, as the torch models take them
    np.testing.assert_array_equal(trpca(y, np.ones(y.shape, np.uint8)).L, trpca(y, np.ones(y.shape, bool)).L)
    with pytest.raises(ValueError, match="bits must be an integer"):
        quantize(np.zeros(3), 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        quantize(np.zeros(3), 4, 1.0, 1.0)
    with pytest.raises(ValueError, match="codes must be integer"):
        qtrpca(np.zeros((3, 3, 3)), np.linspace(0, 1, 3))
    edges = np.linspace(0.0, 1.0, 5)  # 4 bins: codes 0..3
    for bad in (-1, -2, 4):  # -2 used to index the top bins from the end, silently
        codes = np.zeros((3, 3, 2), np.int16)
        codes[1, 1, 1] = bad
        with pytest.raises(ValueError, match=f"codes must be in 0..3 .*got a code {bad}"):
            qtrpca(codes, edges)
        with pytest.raises(ValueError, match="codes must be in 0..3"):
            dequantize(codes, edges)
    with pytest.raises(ValueError, match=r"omega must have the scores' shape \(3, 3\)"):
        robust_threshold(np.ones((3, 3)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="third-order tensor"):
        tnn_prox(np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="matching n2 and n3"):
        tprod(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="tau"):
        tnn_prox(np.zeros((3, 3, 3)), -1.0)


def test_robust_threshold_ignores_zeros_and_respects_floor():
    score = np.zeros(100)
    score[:10] = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.05, 0.95, 9.0]
    tau = robust_threshold(score, k=6.0)
    assert 1.2 < tau < 9.0
    assert robust_threshold(score, k=6.0, floor=20.0) == 20.0
    assert robust_threshold(np.zeros(5), floor=0.5) == 0.5
    with pytest.raises(ValueError, match="k must be finite"):
        robust_threshold(score, k=0.0)


def test_robust_threshold_on_a_dense_residual_is_k_sigma():
    rng = np.random.default_rng(0)
    score = 0.5 * rng.standard_normal(20000)
    score[:5] = 10.0
    tau = robust_threshold(score, k=4.0)
    assert tau == pytest.approx(4 * 0.5, rel=0.05)  # 1.4826 median|s| estimates sigma = 0.5
    assert (np.abs(score) > tau).sum() < 20


def test_refit_removes_the_box_bias_at_coarse_bits():
    """At 4 bits the convex box solution is biased inside the bins; the bin-consistent refit is not."""
    low, sparse = _planted(seed=4, shape=(24, 24, 16), rank=2, share=0.02)
    y = low + sparse + 0.05 * np.random.default_rng(5).standard_normal(low.shape)
    codes, edges = quantize(y, 4, y.min(), y.max())
    lower, upper = bin_bounds(codes, edges)
    convex = qtrpca(codes, edges, refit=False)
    refit = qtrpca(codes, edges)
    assert _rel(refit.L, low) < 0.8 * _rel(convex.L, low)
    inside = refit.L + refit.S
    assert np.all((inside >= lower - 1e-9) & (inside <= upper + 1e-9))


def test_cluster_score_known_answers():
    """The score is the ML shift common to an entry (weight 1) and its neighbourhood (weight 1)."""
    r = np.zeros((7, 7, 5))
    r[3, 3, 2] = 4.0  # isolated spike: neighbours observed and zero -> (4 + 0) / 2
    score = cluster_score(r)
    assert score[3, 3, 2] == pytest.approx(2.0)
    assert score[2, 3, 2] == pytest.approx(4.0 / 26 / 2)  # a neighbour sees the spike once
    # a 3 x 3 x 3 block of +3 K: its centre and its neighbours all shifted -> 3
    block = np.zeros((7, 7, 5))
    block[2:5, 2:5, 1:4] = 3.0
    assert cluster_score(block)[3, 3, 2] == pytest.approx(3.0)
    # a corner entry has 7 neighbours inside the tensor; only the observed ones count
    corner = np.zeros((4, 4, 4))
    corner[0, 0, 0], corner[1, 0, 0] = 1.0, 5.0
    omega = np.zeros(corner.shape, bool)
    omega[0, 0, 0] = omega[1, 0, 0] = True
    got = cluster_score(corner, omega)
    assert got[0, 0, 0] == pytest.approx((1.0 + 5.0) / 2)
    assert got[1, 0, 0] == pytest.approx((5.0 + 1.0) / 2)
    assert np.all(got[~omega] == 0)
    lonely = np.zeros((3, 3, 3), bool)
    lonely[1, 1, 1] = True  # no observed neighbour: the entry's own residual
    assert cluster_score(np.full((3, 3, 3), -2.5), lonely)[1, 1, 1] == pytest.approx(2.5)
    # opposite-sign neighbours cancel: window (1, 3, 1) along x only
    line = np.array([1.0, 2.0, -4.0]).reshape(1, 3, 1)
    assert cluster_score(line, window=(1, 3, 1))[0, 1, 0] == pytest.approx(abs(2.0 + (1.0 - 4.0) / 2) / 2)
    with pytest.raises(ValueError, match="odd"):
        cluster_score(r, window=(2, 3, 3))
    bad = r.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        cluster_score(bad)


def test_trimmed_set_keeps_persistent_offsets_and_drops_short_spikes():
    """Outliers are measured from the pixel's median residual: a whole-series offset is background."""
    rng = np.random.default_rng(0)
    resid = 0.1 * rng.standard_normal((6, 6, 40))
    resid[2, 3, :] += 3.0  # a pixel the background misses on every date (a lake, a town)
    resid[4, 1, 7:9] += 3.0  # a two-day anomaly
    omega = np.ones(resid.shape, bool)
    omega[0, 0, ::2] = False
    fit = _trimmed_set(resid, omega, k_out=3.0, time_axis=2)
    assert fit[2, 3].all()
    assert not fit[4, 1, 7:9].any() and fit[4, 1, 10:].all()
    assert not fit[~omega].any()
    # the same along axis 1 (the solvers' (y, time, x) layout)
    moved = _trimmed_set(np.swapaxes(resid, 1, 2), np.swapaxes(omega, 1, 2), k_out=3.0, time_axis=1)
    assert np.array_equal(np.swapaxes(moved, 1, 2), fit)



@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_optimal_shrinkage_returns_each_spike_times_its_cosines(beta: float):
    # a spike of strength x shows as y(x) = sqrt((x + 1/x)(x + beta/x)) and the Frobenius-optimal
    # estimate of it is x c(x) c~(x) (Gavish and Donoho 2017, Lemma 1 and Eq. 7)
    x = np.array([1.2, 2.0, 5.0, 40.0])
    y = np.sqrt((x + 1 / x) * (x + beta / x))
    c = np.sqrt((x**4 - beta) / (x**4 + beta * x**2))
    c_tilde = np.sqrt((x**4 - beta) / (x**4 + x**2))
    np.testing.assert_allclose(optimal_shrinkage(y, beta), x * c * c_tilde, rtol=1e-12)
    # the noise bulk (up to its edge 1 + sqrt(beta)) is set to zero
    edge = 1 + np.sqrt(beta)
    np.testing.assert_array_equal(optimal_shrinkage(np.array([0.0, 0.5, edge]), beta), 0.0)
    with pytest.raises(ValueError, match="aspect ratio"):
        optimal_shrinkage(y, 1.5)


def test_tubal_shrink_beats_truncation_at_the_true_rank_in_noise():
    rng = np.random.default_rng(3)
    n1, n2, n3, rank, sigma = 40, 30, 16, 3, 1.0
    # spikes of a few noise widths: strong enough to be seen, weak enough that their noisy
    # singular vectors are off and should not be kept at full size
    low = tprod(rng.standard_normal((n1, rank, n3)), rng.standard_normal((rank, n2, n3))) * 0.1
    noisy = low + sigma * rng.standard_normal(low.shape)
    shrunk, kept = tubal_shrink(noisy, sigma)
    hard = tubal_truncate(noisy, np.full(n3 // 2 + 1, rank))
    assert 1 <= kept <= rank + 2
    assert _rel(shrunk, low) < 0.9 * _rel(hard, low) < _rel(noisy, low)
    # without noise nothing is shrunk: the tensor comes back as it is
    np.testing.assert_allclose(tubal_shrink(low, 1e-9)[0], low, atol=1e-6)
