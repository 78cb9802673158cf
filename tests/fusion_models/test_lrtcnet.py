"""LRTC-Net and the classical completion baselines: layer algebra, exactness, recovery, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_models.completion import (
    default_ranks,
    halrtc,
    hosvd,
    linear_interpolation,
    tucker_completion,
)
from fusion_models.lrtcnet import LRTCNet, tucker_project
from fusion_models.tensor_ops import mode_dot

torch.set_num_threads(1)

SHAPE = (12, 3, 10, 10)
RANKS = (3, 2, 3, 3)


def low_rank(shape=SHAPE, ranks=RANKS, seed=0) -> np.ndarray:
    """An exactly low-multilinear-rank tensor: a random core times orthonormal factors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=ranks)
    for n, (size, rank) in enumerate(zip(shape, ranks, strict=True)):
        q, _ = np.linalg.qr(rng.normal(size=(size, rank)))
        x = mode_dot(x, q, n)
    return x / np.abs(x).max()


def nrmse(est, truth, missing) -> float:
    return float(np.linalg.norm((est - truth)[missing]) / np.linalg.norm(truth[missing]))


def test_full_observation_layer_is_the_projection():
    torch.manual_seed(0)
    net = LRTCNet(SHAPE, ranks=RANKS, layers=1)
    z = torch.randn(2, *SHAPE)
    # with W = 1 a layer returns X itself; the projection part is T = Z x_n D_n D_n^T
    t = tucker_project(z, net.factors())
    expected = z
    for n, d in enumerate(net.factors()):
        expected = torch.movedim(torch.tensordot(d @ d.T, expected, dims=([1], [n + 1])), 0, n + 1)
    torch.testing.assert_close(t, expected, rtol=1e-5, atol=1e-5)
    full = torch.ones(2, *SHAPE, dtype=torch.bool)
    torch.testing.assert_close(net(z, full), z, rtol=0, atol=0)
    # with nothing observed the layer is exactly the projection
    none = torch.zeros(2, *SHAPE, dtype=torch.bool)
    torch.testing.assert_close(net.layer(z, torch.zeros_like(z), none.float()), t)


def test_observed_entries_reproduced_after_every_layer():
    torch.manual_seed(1)
    net = LRTCNet(SHAPE, ranks=RANKS, layers=5)
    x = torch.randn(3, *SHAPE)
    mask = torch.rand(3, SHAPE[0], 1, *SHAPE[2:]) > 0.3  # broadcast over bands
    w = mask.float().expand_as(x)
    z = torch.zeros_like(x)
    for _ in range(net.layers):
        z = net.layer(z, x * w, w)
        assert torch.equal(z[w > 0], x[w > 0])
    assert torch.equal(net(x, mask)[w > 0], x[w > 0])


def test_bad_shapes_raise():
    net = LRTCNet(SHAPE, ranks=RANKS)
    with pytest.raises(ValueError, match=r"x must be \(B, 12, 3, 10, 10\)"):
        net(torch.zeros(SHAPE), torch.ones(SHAPE, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have the shape of x"):
        net(torch.zeros(1, *SHAPE), torch.ones(1, 12, 2, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="ranks needs one entry per mode"):
        LRTCNet(SHAPE, ranks=(3, 2))
    with pytest.raises(ValueError, match="layers must be an integer"):
        LRTCNet(SHAPE, layers=0)


def test_orthonormal_and_default_ranks():
    net = LRTCNet((100, 3, 32, 32))
    assert net.ranks == (10, 1, 4, 4) == default_ranks((100, 3, 32, 32))
    for d in net.factors():
        torch.testing.assert_close(d.T @ d, torch.eye(d.shape[1]), atol=1e-5, rtol=0)


def test_gradients_reach_every_factor():
    torch.manual_seed(2)
    net = LRTCNet(SHAPE, ranks=RANKS, layers=3)
    x = torch.randn(2, *SHAPE)
    mask = torch.rand(2, *SHAPE) > 0.2
    loss = ((net(x, mask) - x)[~mask] ** 2).mean()
    loss.backward()
    params = [p for p in net.parameters() if p.requires_grad]
    assert len(params) >= len(SHAPE)
    for n, lin in enumerate(net.bases):
        grads = [p.grad for p in lin.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient to D_{n}"


def test_tucker_baseline_recovers_low_rank_tensor():
    x = low_rank()
    rng = np.random.default_rng(3)
    mask = rng.random(x.shape) > 0.2
    res = tucker_completion(np.where(mask, x, np.nan), mask, ranks=RANKS, iters=300, tol=1e-10)
    assert np.array_equal(res.filled[mask], x[mask])
    assert nrmse(res.filled, x, ~mask) < 1e-4
    assert res.iterations == len(res.history)


def test_trained_net_recovers_low_rank_tensor():
    torch.manual_seed(4)
    rng = np.random.default_rng(4)
    mask = rng.random((4, *SHAPE)) > 0.2  # 4 samples, 20 % missing each
    # the samples share the subspaces of one low-rank tensor (different cores)
    samples = []
    base = [np.linalg.qr(rng.normal(size=(s, r)))[0] for s, r in zip(SHAPE, RANKS, strict=True)]
    for _ in range(4):
        y = rng.normal(size=RANKS)
        for n, d in enumerate(base):
            y = mode_dot(y, d, n)
        samples.append(y / np.abs(y).max())
    x = np.stack(samples)
    xt = torch.tensor(x, dtype=torch.float32)
    mt = torch.tensor(mask)
    filled0 = np.where(mask, x, 0.0)
    init = hosvd(filled0.mean(0) + filled0[0], RANKS)  # observed-filled starting subspaces
    net = LRTCNet(SHAPE, ranks=RANKS, layers=20, factors=[torch.tensor(d.copy()) for d in init])
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    before = nrmse(net(xt, mt).detach().numpy(), x, ~mask)
    for _ in range(150):
        opt.zero_grad()
        loss = ((net(xt, mt) - xt)[~mt] ** 2).mean()
        loss.backward()
        opt.step()
    after = nrmse(net(xt, mt).detach().numpy(), x, ~mask)
    assert after < 1e-2 and after < before / 5, (before, after)


def test_halrtc_completes_low_rank_tensor():
    x = low_rank(shape=(10, 10, 10), ranks=(2, 2, 2), seed=6)
    rng = np.random.default_rng(6)
    mask = rng.random(x.shape) > 0.2
    res = halrtc(x, mask, iters=300, tol=1e-9)
    assert np.array_equal(res.filled[mask], x[mask])
    assert nrmse(res.filled, x, ~mask) < 1e-3
    with pytest.raises(ValueError, match="alpha needs one weight per mode"):
        halrtc(x, mask, alpha=(0.5, 0.5))


def test_linear_interpolation_known_case():
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, np.nan], [np.nan, np.nan], [7.0, np.nan]])
    mask = np.isfinite(x)
    out = linear_interpolation(x, mask)
    expected = np.array([[1, 2], [2, 4], [3, 4], [5, 4], [7, 4]], dtype=float)
    np.testing.assert_allclose(out, expected)
    # a series with no observation takes that date's observed mean
    x2 = np.array([[1.0, np.nan], [3.0, np.nan]])
    np.testing.assert_allclose(linear_interpolation(x2, np.isfinite(x2)), [[1, 1], [3, 3]])
    # linear signals along time are recovered exactly
    t = np.arange(9, dtype=float)[:, None, None] * np.ones((1, 2, 3))
    m = np.ones(t.shape, bool)
    m[[2, 3, 6]] = False
    np.testing.assert_allclose(linear_interpolation(np.where(m, t, np.nan), m), t)
    # irregular dates: weighted by acquisition time (days or datetime64), not by date index
    days = np.array([0.0, 1.0, 10.0])
    series = np.array([0.0, np.nan, 10.0])
    np.testing.assert_allclose(linear_interpolation(series, np.isfinite(series)), [0, 5, 10])
    np.testing.assert_allclose(linear_interpolation(series, np.isfinite(series), times=days), [0, 1, 10])
    dates = np.datetime64("2021-01-01") + days.astype("timedelta64[D]")
    np.testing.assert_allclose(linear_interpolation(series, np.isfinite(series), times=dates), [0, 1, 10])
    with pytest.raises(ValueError, match="times must be 3 increasing"):
        linear_interpolation(series, np.isfinite(series), times=days[::-1])
    # one mask for every band (size 1 on the band axis) is the same as the mask repeated, along
    # any time axis; a mask of another shape is refused with both shapes
    rng = np.random.default_rng(3)
    x3 = rng.normal(size=(4, 7, 3, 5))  # (patch, time, band, pixel)
    per_pixel = rng.random((4, 7, 1, 5)) > 0.4
    per_pixel[:, 0] = True
    np.testing.assert_array_equal(linear_interpolation(x3, per_pixel, axis=1),
                                  linear_interpolation(x3, np.broadcast_to(per_pixel, x3.shape), axis=1))
    with pytest.raises(ValueError, match=r"mask must have the shape of x.*\(4, 6, 1, 5\)"):
        linear_interpolation(x3, per_pixel[:, :6], axis=1)


def test_cloud_masks_are_blobs_with_the_asked_share():
    from scipy import ndimage

    from fusion_models.lrtcnet_training import cloud_masks

    rng = np.random.default_rng(0)
    masks = cloud_masks((200, 32, 32), share=0.3, rng=rng)
    assert masks.dtype == bool and abs(masks.mean() - 0.3) < 0.05
    # cloud-shaped: few connected components per image, unlike independent pixels
    n_blobs = np.mean([ndimage.label(m)[1] for m in masks[:20] if m.any()])
    n_random = np.mean([ndimage.label(m)[1] for m in cloud_masks((20, 32, 32), share=0.3, rng=rng, kind="random")])
    assert n_blobs < n_random / 10
    with pytest.raises(ValueError, match="share must be in"):
        cloud_masks((2, 8, 8), share=1.5, rng=rng)


def test_fit_and_complete_keep_observed_entries():
    from fusion_models.lrtcnet_training import DECK, OURS, complete, fit_lrtcnet

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 2, 8, 8)).astype(np.float32)
    observed = rng.random((2, 6, 8, 8)) > 0.3
    obs = np.broadcast_to(observed[:, :, None], x.shape)
    for variant in (DECK, OURS):
        fit = fit_lrtcnet(x, observed, ranks=(2, 2, 8, 8), layers=2, epochs=2, batch=2,
                          steps_per_epoch=2, device="cpu", **variant)
        assert len(fit.history) == 2 and np.isfinite(fit.history).all()
        out = complete(fit.net, x, observed, init=variant["init"])
        np.testing.assert_array_equal(out[obs], x[obs])
        assert np.isfinite(out).all()
        # the start is interpolated by acquisition time when given: equally spaced dates give
        # the same fill as the date index, irregular ones another
        even = np.datetime64("2021-01-01") + 5 * np.arange(6).astype("timedelta64[D]")
        np.testing.assert_array_equal(complete(fit.net, x, observed, init=variant["init"], times=even), out)
        if variant["init"] == "linear":
            odd = even + np.array([0, 1, 2, 9, 10, 11]).astype("timedelta64[D]")
            assert not np.array_equal(complete(fit.net, x, observed, init=variant["init"], times=odd), out)
    with pytest.raises(ValueError, match="observed"):
        fit_lrtcnet(x, observed[:, :3], device="cpu")
    with pytest.raises(ValueError, match="init must be one of"):
        fit_lrtcnet(x, observed, init="mean", device="cpu")


def test_normalized_convolution_known_cases():
    from fusion_models.lrtcnet import normalized_convolution

    torch.manual_seed(5)
    w = (torch.rand(2, 1, 12, 12) > 0.5).float()
    const = torch.full((2, 3, 12, 12), 2.5)
    out, support = normalized_convolution(const, w, 2.0)
    torch.testing.assert_close(out, const)  # a constant is interpolated exactly from any support
    assert support.shape == (2, 1, 12, 12) and (support > 0).all() and (support <= 1 + 1e-6).all()
    # one known pixel: everything within reach takes its value, weights sum to 1 in the interior
    w1 = torch.zeros(1, 1, 9, 9)
    w1[..., 4, 4] = 1
    v = torch.zeros(1, 1, 9, 9)
    v[..., 4, 4] = 7.0
    out1, sup1 = normalized_convolution(v, w1, 1.0)
    torch.testing.assert_close(out1[..., 3:6, 3:6], torch.full((1, 1, 3, 3), 7.0))
    assert float(sup1.sum()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        normalized_convolution(v, w1, 0.0)


def test_our_additions_start_as_the_deck_net():
    torch.manual_seed(7)
    plain = LRTCNet(SHAPE, ranks=RANKS, layers=4)
    ours = LRTCNet(SHAPE, ranks=RANKS, layers=4, step_sizes=True, refine=8,
                   factors=[d.detach() for d in plain.factors()])
    x = torch.randn(2, *SHAPE)
    mask = torch.rand(2, SHAPE[0], 1, *SHAPE[2:]) > 0.3
    # steps at 1 and a zero-initialised refiner: exactly the deck's layers
    torch.testing.assert_close(ours(x, mask), plain(x, mask), rtol=1e-5, atol=1e-5)
    # a step a moves the missing entries a of the way to the projection
    z = torch.randn(2, *SHAPE)
    w = mask.float().expand_as(x)
    t = tucker_project(z, plain.factors())
    half = ours.layer(z, x * w, w, step=torch.tensor(0.5))
    torch.testing.assert_close(half[w == 0], (z + 0.5 * (t - z))[w == 0])
    assert torch.equal(half[w > 0], x[w > 0])
    # gradients reach the steps and the refiner; observed entries stay exact with refinement
    with torch.no_grad():
        ours.refiner.body[-1].weight.normal_()
    out = ours(x, mask)
    assert torch.equal(out[w > 0], x[w > 0])
    ((out - x)[w == 0] ** 2).mean().backward()
    assert ours.steps.grad is not None and ours.steps.grad.abs().sum() > 0
    assert ours.refiner.body[0].weight.grad.abs().sum() > 0
    # a date with no observed pixel gets no refinement (nothing to spread): the plain layers' value
    blind = mask.clone()
    blind[0, 3] = False
    with torch.no_grad():
        torch.testing.assert_close(ours(x, blind)[0, 3], plain(x, blind)[0, 3], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours(x, blind)[0, 4], plain(x, blind)[0, 4])
    with pytest.raises(ValueError, match="refine needs"):
        LRTCNet((4, 5, 6), refine=4)


def test_fit_with_the_datas_own_gap_masks():
    from fusion_models.lrtcnet_training import fit_lrtcnet

    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 1, 8, 8)).astype(np.float32)
    observed = rng.random((2, 5, 8, 8)) > 0.25
    fit = fit_lrtcnet(x, observed, ranks=(2, 1, 8, 8), layers=2, epochs=2, batch=2,
                      hide_kind="gaps", device="cpu")
    assert np.isfinite(fit.history).all()
    with pytest.raises(ValueError, match="needs gaps in the data"):
        fit_lrtcnet(x, np.ones_like(observed), hide_kind="gaps", device="cpu")


def test_gaussian_band_is_the_zero_padded_convolution():
    from fusion_models.lrtcnet import gaussian_band

    band = gaussian_band(9, 1.0)  # radius 3
    taps = torch.exp(-0.5 * torch.arange(-3, 4, dtype=torch.float64) ** 2)
    taps = (taps / taps.sum()).float()
    torch.testing.assert_close(band[4, 1:8], taps)  # an interior row holds all the taps
    assert float(band[0, 4]) == 0.0 and float(band[0, 3]) > 0  # nothing beyond the radius
    torch.testing.assert_close(band, band.T)
    v = torch.randn(9)
    conv = torch.nn.functional.conv1d(v.view(1, 1, -1), taps.view(1, 1, -1), padding=3).view(-1)
    torch.testing.assert_close(band @ v, conv)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_band(5, -1.0)


def test_lr_factor_schedule_and_callback():
    from fusion_models.lrtcnet_training import fit_lrtcnet, lr_factor

    assert lr_factor(7, 10, schedule="constant") == 1.0
    # 20 steps, warm-up 1 step: 1 at the first step, 1/2 half way through the rest, -> 0
    assert lr_factor(0, 20, warmup=0.05) == pytest.approx(1.0)
    assert lr_factor(1, 20, warmup=0.05) == pytest.approx(1.0)
    assert lr_factor(1 + 19 // 2, 20, warmup=0.05) == pytest.approx(0.5 * (1 + np.cos(np.pi * 9 / 19)))
    assert lr_factor(20, 20, warmup=0.05) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 20, warmup=0.2) == pytest.approx(0.25)  # linear warm-up over 4 steps
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor(0, 10, schedule="step")
    rng = np.random.default_rng(0)
    x = low_rank((8, 1, 6, 6), (2, 1, 6, 6))[None].repeat(2, 0).astype(np.float32)
    observed = rng.random((2, 8, 6, 6)) > 0.2
    seen: list[int] = []
    steps: list[int] = []
    x3 = np.concatenate([x, x[:1]])  # 3 patches: batches of 2 and 1
    fit = fit_lrtcnet(x3, np.concatenate([observed, observed[:1]]), ranks=(2, 1, 6, 6), layers=2, epochs=3,
                      batch=2, lr=1e-2, schedule="cosine", device="cpu", callback=lambda e, net: seen.append(e),
                      on_step=lambda: steps.append(1), steps_per_epoch=2)
    assert seen == [1, 2, 3] and len(fit.history) == 3
    assert len(steps) == 3 * 2 * 2  # epochs x steps_per_epoch x batches
    # the stacking head's fit after the epochs reports its own batches: draws x batches
    stacked: list[int] = []
    fit_lrtcnet(x3, np.concatenate([observed, observed[:1]]), ranks=(2, 1, 6, 6), layers=2, epochs=1,
                batch=2, device="cpu", stack=True, stack_draws=2, on_stack_batch=lambda: stacked.append(1))
    assert len(stacked) == 2 * 2
    with pytest.raises(ValueError, match="warmup"):
        fit_lrtcnet(x, observed, epochs=1, warmup=1.5, device="cpu")


def test_temporal_interpolation_known_case():
    from fusion_models.completion import linear_interpolation
    from fusion_models.lrtcnet import temporal_interpolation

    # one series: observed at dates 1 and 4 -> held before 1, linear between, held after 4
    v = torch.zeros(1, 6, 1, 1, 1)
    v[0, 1], v[0, 4] = 2.0, 8.0
    w = torch.zeros(1, 6, 1, 1, 1)
    w[0, 1] = w[0, 4] = 1
    out = temporal_interpolation(v, w).view(-1)
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, 4.0, 6.0, 8.0, 8.0]))
    # matches the numpy baseline on random series that all have an observation
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, 3, 5, 5))
    m = rng.random((2, 9, 1, 5, 5)) > 0.5
    m[:, 0] = True
    ref = np.stack([linear_interpolation(x[b], np.broadcast_to(m[b], x[b].shape)) for b in range(2)])
    got = temporal_interpolation(torch.from_numpy(x), torch.from_numpy(m).double())
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)
    # a per-pixel mask gives what the same mask repeated over the bands gives, and a per-band mask
    # (another gap on each band) fills each band from its own dates
    wide = torch.from_numpy(np.broadcast_to(m, x.shape).copy()).double()
    assert torch.equal(temporal_interpolation(torch.from_numpy(x), wide), got)
    per_band = rng.random(x.shape) > 0.5
    per_band[:, 0] = True
    ref = np.stack([linear_interpolation(x[b], per_band[b]) for b in range(2)])
    got = temporal_interpolation(torch.from_numpy(x), torch.from_numpy(per_band).double())
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)
    with pytest.raises(RuntimeError, match="expanded size"):
        temporal_interpolation(torch.from_numpy(x), torch.ones(2, 9, 2, 5, 5))
    # a series with no observation is 0
    assert float(temporal_interpolation(v, torch.zeros_like(w)).abs().sum()) == 0.0
    with pytest.raises(ValueError, match="same number of dims"):
        temporal_interpolation(v, w[0])


def test_stacking_head_starts_as_identity_and_is_fitted_in_closed_form():
    from fusion_models.lrtcnet import StackingHead
    from fusion_models.lrtcnet_training import DECK, OURS, complete, fit_lrtcnet, fit_stacking

    torch.manual_seed(3)
    plain = LRTCNet(SHAPE, ranks=RANKS, layers=3, step_sizes=True, refine=4)
    stacked = LRTCNet(SHAPE, ranks=RANKS, layers=3, step_sizes=True, refine=4, stack=True)
    stacked.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, *SHAPE)
    mask = torch.rand(2, SHAPE[0], 1, *SHAPE[2:]) > 0.3
    with torch.no_grad():  # zero weights: the head adds nothing
        torch.testing.assert_close(stacked(x, mask), plain(x, mask))
    # ... and so in training, where its weights are zero: the same gradients
    for net in (plain, stacked):
        net.zero_grad()
        net(x, mask).pow(2).mean().backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in stacked.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])
    stacked.stacker.weights.fill_(0.5)  # fitted weights: the head acts
    with torch.no_grad():
        assert not torch.allclose(stacked(x, mask), plain(x, mask))
    head = StackingHead()
    w = mask.float().expand_as(x)
    feats = head.features(x, x, x * w, w)
    assert feats.shape == (2, SHAPE[0], head.N_FEATURES, *SHAPE[1:])
    # class of each date image by its missing share: all seen -> 0, nothing seen -> last
    w2 = w.clone()
    w2[0, 0], w2[0, 1] = 1, 0
    cls = head.classes(w2)
    assert int(cls[0, 0]) == 0 and int(cls[0, 1]) == len(head.EDGES)
    with pytest.raises(ValueError, match="must all be"):
        head.features(x, x[:1], x, w)
    with pytest.raises(ValueError, match="stack needs"):
        LRTCNet((4, 5, 6), stack=True)
    # a known relation: the hidden truth is the temporal interpolation of its neighbours, which
    # the net's low-rank part misses; the fitted head finds it and beats the net without it
    rng = np.random.default_rng(6)
    t = np.linspace(0, 1, 16)
    base = np.stack([np.ones(16), t])[:, :, None, None, None] * rng.normal(size=(2, 1, 1, 8, 8))
    wiggle = np.cumsum(rng.normal(scale=0.3, size=(3, 16, 1, 8, 8)), axis=1)  # smooth in time
    xs = (base.sum(0)[None] + wiggle).astype(np.float32)  # (3, 16, 1, 8, 8)
    observed = rng.random((3, 16, 8, 8)) > 0.3
    kw = dict(ranks=(2, 1, 8, 8), layers=4, epochs=3, batch=4, lr=1e-2, device="cpu", seed=0)
    fit = fit_lrtcnet(xs, observed, **{**OURS, "stack": False}, **kw)
    fit_s = fit_lrtcnet(xs, observed, **OURS, **kw)
    assert fit_s.net.stacker is not None and float(fit_s.net.stacker.weights.abs().sum()) > 0
    gaps = np.broadcast_to(~observed[:, :, None], xs.shape)
    hide = rng.random(observed.shape) < 0.3
    seen = observed & ~hide
    scored = np.broadcast_to((hide & observed)[:, :, None], xs.shape)
    err = [nrmse(complete(f.net, xs, seen), xs, scored) for f in (fit, fit_s)]
    assert err[1] < err[0]
    out = complete(fit_s.net, xs, observed)
    np.testing.assert_array_equal(out[~gaps], xs[~gaps])
    # supervised mode and bad calls
    weights = fit_stacking(fit_s.net, xs, seen, truth=xs, rng=rng)
    assert weights.shape == (len(StackingHead.EDGES) + 1, StackingHead.N_FEATURES)
    with pytest.raises(ValueError, match="needs a net with a stacking head"):
        fit_stacking(fit.net, xs, observed)
    with pytest.raises(ValueError, match="draws must be"):
        fit_stacking(fit_s.net, xs, observed, draws=0)
    assert DECK["stack"] is False and OURS["stack"] is True
