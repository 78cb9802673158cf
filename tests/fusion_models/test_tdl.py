"""Tensor Decomposition Learning, the quantizer and the entropy coders on tiny planted tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_models import entropy, tdl

SHAPE, RANKS = (6, 3, 8, 8), (2, 2, 3, 3)


def _low_rank(s: int = 24, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
             for n, r in zip(SHAPE, RANKS, strict=True)]
    core = torch.randn(s, *RANKS, generator=g, dtype=torch.float64)
    return tdl.reconstruct(core, bases), bases


def test_exact_low_multilinear_rank_is_recovered() -> None:
    x, _ = _low_rank()
    res = tdl.tdl_fit(x, RANKS, iters=5)
    rec = tdl.reconstruct(tdl.project(x, res.bases), res.bases)
    assert float(torch.linalg.norm(rec - x) / torch.linalg.norm(x)) < 1e-10
    # and on samples it never saw (same subspaces)
    x2, _ = _low_rank(seed=0)
    assert torch.allclose(tdl.reconstruct(tdl.project(x2, res.bases), res.bases), x2, atol=1e-9)


def test_bases_are_orthonormal_and_objective_decreases() -> None:
    x, _ = _low_rank()
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    res = tdl.tdl_fit(noisy, (3, 2, 4, 4), iters=8, lam=1.0)
    for b in res.bases:
        assert torch.allclose(b.T @ b, torch.eye(b.shape[1], dtype=b.dtype), atol=1e-10)
    obj = np.array(res.objective)
    assert len(obj) == res.iterations + 1
    assert obj[-1] < obj[0]
    assert np.all(np.diff(obj[1:]) <= 1e-9 * obj[0])  # monotone after the first step
    # the objective leaves out the constraint A = D_{N+1}: with the default weight the iterate
    # also grows feasible (a weight of 1 thresholds A to 0 each step and closes the gap slowly)
    res = tdl.tdl_fit(noisy, (3, 2, 4, 4), iters=8)
    assert res.residual[-1] < 0.01 * max(res.residual[1:])


def test_at_full_ranks_the_codec_bases_are_the_training_klt_whatever_the_admm_found() -> None:
    """Documented behaviour (``fit_codec``): square bases span everything, and the rotation to an
    all-orthogonal training core makes them the per-mode KLT of the training patches."""
    x, _ = _low_rank(s=16)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3),
                                   dtype=x.dtype)).numpy()
    one, _ = tdl.fit_codec(noisy, SHAPE, iters=1)
    many, _ = tdl.fit_codec(noisy, SHAPE, iters=12)
    xn = (noisy - noisy.mean()) / noisy.std()
    for n, size in enumerate(SHAPE):
        unfolded = np.moveaxis(xn, n + 1, 0).reshape(size, -1)
        klt = np.linalg.eigh(unfolded @ unfolded.T)[1][:, ::-1]
        for basis in (one.bases[n], many.bases[n]):
            assert np.abs(np.abs((klt * basis).sum(axis=0)) - 1).max() < 1e-3


@pytest.mark.parametrize("ranks", [(3, 2, 4, 4), SHAPE])
def test_the_loop_objective_equals_the_direct_one(ranks: tuple[int, ...]) -> None:
    # the ADMM loop scores each iteration from X x_n D_n^T (Pythagoras, orthonormal bases); it must
    # be the objective itself, at truncated ranks and at full ranks (where the part of X outside
    # the bases' span is exactly 0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, *SHAPE, generator=g, dtype=torch.float64)
    bases = [torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
             for n, r in zip(SHAPE, ranks, strict=True)]
    core = torch.randn(7, *ranks, generator=g, dtype=torch.float64)
    sample = torch.randn(7, 7, generator=g, dtype=torch.float64)
    aux = torch.randn(7, 7, generator=g, dtype=torch.float64)
    z = tdl.project(x, bases)
    x_sq = None if ranks == SHAPE else float(torch.sum(x * x))
    direct = tdl.objective(x, core, bases, sample, aux, 0.3)
    assert tdl._objective_projected(x_sq, z, core, sample, aux, 0.3) == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("ranks", [(2, 2, 3, 3), SHAPE])
def test_rank_deficient_training_tensor_is_fitted_not_refused(ranks: tuple[int, ...]) -> None:
    """Identical dates and bands that are one band plus a constant (mode ranks 1 and 2 below the
    requested ones; full ranks as the stage's default asks): C C^T is singular, the fit must still
    give orthonormal bases that reproduce the (exactly low rank) tensor; so must a constant one."""
    g = torch.Generator().manual_seed(7)
    ones = torch.ones(8, 1, dtype=torch.float64)
    p, q = (torch.linalg.qr(torch.cat([ones, torch.randn(8, 2, generator=g, dtype=torch.float64)], 1))[0]
            for _ in range(2))  # spatial subspaces of rank 3 holding the constants
    field = p @ torch.randn(24, 3, 3, generator=g, dtype=torch.float64) @ q.T  # (S, 8, 8), one band
    offsets = torch.tensor([0.0, 3.0, -2.0], dtype=torch.float64)[:, None, None]
    x = field[:, None, None] + offsets  # (S, 1, 3, 8, 8): band b_i = b_1 + c_i
    x = x.expand(24, SHAPE[0], 3, 8, 8).contiguous()  # the same field at every date
    for data in (x, torch.full_like(x, 0.25)):
        res = tdl.tdl_fit(data, ranks, iters=4)
        for b, r in zip(res.bases, ranks, strict=True):
            assert b.shape[1] == r and torch.isfinite(b).all()
            assert torch.allclose(b.T @ b, torch.eye(r, dtype=b.dtype), atol=1e-10)
        rec = tdl.reconstruct(tdl.project(data, res.bases), res.bases)
        assert float(torch.linalg.norm(rec - data) / torch.linalg.norm(data)) < 1e-9
    codec, _ = tdl.fit_codec(x.numpy().astype(np.float32), ranks, iters=2)  # the stage's path
    out = tdl.decode(codec, tdl.encode(codec, x.numpy().astype(np.float32), 0.01), len(x))
    assert np.abs(out - x.numpy()).max() < 0.05 * np.abs(x.numpy()).max()


def test_hosvd_batch_is_exact_at_the_true_ranks() -> None:
    x, _ = _low_rank(s=5)
    core, factors = tdl.hosvd_batch(x, RANKS)
    assert core.shape == (5, *RANKS) and factors[2].shape == (5, 8, 3)
    assert torch.allclose(tdl.hosvd_reconstruct(core, factors), x, atol=1e-9)


@pytest.mark.parametrize("deadzone", [0.0, 0.2])
def test_quantization_error_is_bounded_by_the_step(deadzone: float) -> None:
    v = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 5
    step = 0.37
    q = tdl.quantize(v, step, deadzone=deadzone)
    assert q.dtype == np.int32
    err = (tdl.dequantize(q, step) - v).abs().max()
    assert float(err) <= step * (0.5 + deadzone) + 1e-12
    assert tdl.step_for_bits(v, 8) == pytest.approx(2 * float(v.abs().max()) / 254)


def test_codec_round_trip_shapes_dtypes_and_rate_3d_and_4d() -> None:
    x, _ = _low_rank(s=16)
    x32 = x.numpy().astype(np.float32)
    codec, _ = tdl.fit_codec(x32, RANKS, iters=2)
    stream = tdl.encode(codec, x32, 0.01)
    out = tdl.decode(codec, stream, len(x32))
    assert out.shape == x32.shape and out.dtype == np.float32
    assert np.abs(out - x32).max() < 0.05 * np.abs(x32).max()
    coarse = tdl.encode(codec, x32, 1.0)
    assert len(coarse) < len(stream)  # a coarser step costs fewer bits
    q = tdl.quantize_core(codec, x32, 0.01)  # the encoder's own reconstruction is the decoder's
    np.testing.assert_array_equal(tdl.dequantize_core(codec, q, 0.01), out)
    three = x32[:, :, 0]  # (S, T, H, W): 3D patches
    c3, _ = tdl.fit_codec(three, (2, 3, 3), iters=2)
    assert tdl.decode(c3, tdl.encode(c3, three, 0.05), len(three)).shape == three.shape
    for wrong in (len(x32) - 1, len(x32) + 1, 40, 1, 0):  # QA9: more patches than encoded decoded garbage
        with pytest.raises(ValueError, match=f"holds {len(x32)} patch\\(es\\), not {wrong}$"):
            tdl.decode(codec, stream, wrong)
    for damaged in (stream[:len(stream) // 2], stream[:-4], stream[:-1] + bytes([stream[-1] ^ 1]), stream[:10],
                    stream[:3], b""):
        with pytest.raises(ValueError, match="corrupt bitstream"):
            tdl.decode(codec, damaged, len(x32))
    legacy = tdl._STEP.pack(0.01) + stream[tdl._HEAD.size:]  # a stream written before the header held the count
    np.testing.assert_array_equal(tdl.decode(codec, legacy, len(x32)), out)
    with pytest.raises(ValueError, match=f"exactly {len(x32) - 1} item"):
        tdl.decode(codec, legacy, len(x32) - 1)
    holed = x32.copy()
    holed[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite entries; fill them first"):
        tdl.encode(codec, holed, 0.01)


def test_fill_missing_keeps_observed_and_uses_patch_date_means() -> None:
    x = np.arange(2 * 2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 2, 1, 2, 2)
    obs = np.ones_like(x, dtype=bool)
    obs[0, 0, 0, 0, 0] = False
    obs[1, 1] = False  # a whole date missing in patch 1
    filled = tdl.fill_missing(np.where(obs, x, np.nan), obs)
    assert np.array_equal(filled[obs], x[obs])
    assert filled[0, 0, 0, 0, 0] == pytest.approx(np.mean([1, 2, 3]))
    assert np.allclose(filled[1, 1], x[1, 0].mean())


def test_entropy_coders_round_trip_and_beat_zstd() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([8.0, 2.0, 0.5, 0.05])
    q = np.rint(rng.laplace(0, scale, size=(2000, 4))).astype(np.int32)
    data = entropy.encode_laplace(q, 0.0, scale)
    assert np.array_equal(entropy.decode_laplace(data, 0.0, scale, q.shape), q)
    assert len(data) < len(entropy.zstd_encode(q))
    assert np.array_equal(entropy.zstd_decode(entropy.zstd_encode(q), q.shape), q)
    mask = np.zeros((3, 60, 90), bool)
    mask[:, 4:45, 7:62] = True
    mask[1, 0, 0] = True
    coded = entropy.encode_mask(mask)
    assert np.array_equal(entropy.decode_mask(coded, mask.shape), mask)
    assert len(coded) * 8 < mask.size / 8


def test_separable_profiles_fit_a_separable_scale() -> None:
    a, b = np.array([4.0, 1.0, 0.25]), np.array([2.0, 0.5])
    prof = entropy.separable_profiles(np.outer(a, b))
    assert np.allclose(entropy.separable_scale(prof), np.outer(a, b), rtol=1e-2)


def test_bad_arguments_raise_with_the_rule() -> None:
    x, _ = _low_rank(s=4)
    with pytest.raises(ValueError, match="ranks needs one entry per sample mode"):
        tdl.tdl_fit(x, (2, 2, 3))
    with pytest.raises(ValueError, match="each in 1..I_n"):
        tdl.tdl_fit(x, (7, 2, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        tdl.tdl_fit(torch.full((3, 4, 4, 4), float("nan")), (2, 2, 2))
    with pytest.raises(ValueError, match="step must be finite and > 0"):
        tdl.quantize(x, 0.0)
    with pytest.raises(ValueError, match="deadzone must be in"):
        tdl.quantize(x, 1.0, deadzone=0.5)
    with pytest.raises(TypeError, match="floating-point"):
        tdl.tdl_fit(torch.ones((3, 4, 4), dtype=torch.int64), (2, 2))


@pytest.mark.parametrize("shape", [(7, 3), (5, 5), (6, 1)])
def test_givens_angles_rebuild_the_basis_up_to_column_signs(shape: tuple[int, int]) -> None:
    rows, cols = shape
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(4),
                                       dtype=torch.float64))
    angles = tdl.givens_angles(q.numpy())
    assert len(angles) == rows * cols - cols * (cols + 1) // 2
    assert np.all(np.abs(angles) <= np.pi / 2 + 1e-12)
    rebuilt = tdl.givens_basis(angles, rows, cols)
    signs = np.sign(np.sum(rebuilt * q.numpy(), axis=0))
    assert np.allclose(rebuilt * signs, q.numpy(), atol=1e-12)
    # quantized angles still give an exactly orthonormal basis, close to the original
    coarse = tdl.givens_basis(np.round(angles * 64) / 64, rows, cols)
    assert np.allclose(coarse.T @ coarse, np.eye(cols), atol=1e-12)
    assert np.abs(coarse * signs - q.numpy()).max() < 0.1


def test_codec_bytes_round_trip_and_all_orthogonal_core() -> None:
    x, _ = _low_rank(s=20)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5),
                                    dtype=x.dtype)).numpy().astype(np.float32)
    codec, _ = tdl.fit_codec(noisy, (3, 3, 5, 5), iters=2)
    back = tdl.TDLCodec.from_bytes(codec.to_bytes())
    assert all(np.array_equal(a, b) for a, b in zip(codec.bases, back.bases, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(codec.profiles, back.profiles, strict=True))
    assert (back.offset, back.scale, back.ranks) == (codec.offset, codec.scale, codec.ranks)
    assert codec.side_bits() == 8 * len(codec.to_bytes())
    for b in codec.bases:
        assert np.allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-6)
    # the training core is all-orthogonal with the energy in decreasing order along every mode
    core = tdl.project(torch.from_numpy((noisy - np.float32(codec.offset)) / np.float32(codec.scale)),
                       [torch.from_numpy(b) for b in codec.bases]).double()
    for n in range(4):
        mat = torch.movedim(core, n + 1, 0).reshape(core.shape[n + 1], -1)
        gram = (mat @ mat.T).numpy()
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() < 0.05 * np.diag(gram).max()
        assert np.all(np.diff(np.diag(gram)) <= 0.05 * np.diag(gram).max())


def test_rdo_quantization_trades_rate_for_distortion() -> None:
    rng = np.random.default_rng(6)
    prior = np.exp(-0.4 * np.indices((4, 6, 6)).sum(axis=0)) * 3.0
    core = torch.from_numpy(rng.laplace(0.0, prior, size=(300, *prior.shape)))
    step = 1.0
    plain = tdl.rdo_quantize(core, step, prior, lam=0.0)
    assert np.array_equal(plain, tdl.quantize(core, step))  # lam = 0: rounding
    rates, dists = [], []
    for lam in (0.0, tdl.RDO_LAMBDA, 0.5):
        q = tdl.rdo_quantize(core, step, prior, lam=lam)
        a = core.numpy() / step
        assert np.all((q == 0) | (np.abs(q - a) < 1.0))  # zero, or a neighbouring level
        rates.append(len(entropy.encode_context_laplace(q, prior)))
        dists.append(float(((core.numpy() / step - q) ** 2).sum()))
    assert rates[0] > rates[1] > rates[2] and dists[0] < dists[1] < dists[2]
    strided = core.transpose(1, 3).contiguous().transpose(1, 3)  # same values, not C-contiguous
    assert np.array_equal(tdl.rdo_quantize(strided, step, prior), tdl.rdo_quantize(core, step, prior))
    # at the default multiplier the Lagrangian cost beats the dead-zone quantizer's
    dz = tdl.quantize(core, step, deadzone=0.2)
    j_dz = float(((core.numpy() - dz) ** 2).sum()) + tdl.RDO_LAMBDA * 8 * len(entropy.encode_context_laplace(dz, prior))
    assert dists[1] + tdl.RDO_LAMBDA * 8 * rates[1] < j_dz
