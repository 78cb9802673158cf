"""UNet + LRTD layer: exact Tucker reconstruction at the chosen rank, the loss, shapes, overfitting."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import tucker

from fusion_models.unet_lrtd import (
    LRTDLayer,
    UNet,
    UNetLRTD,
    hooi,
    lrtd_loss,
    stack_time,
    tucker_reconstruct,
)
from fusion_models.unet_lrtd_training import (
    FitResult,
    augment_patches,
    class_weights,
    fit_unet_lrtd,
    fuse_prior,
    local_class_share,
    miou_index,
    predict_proba,
)

torch.set_num_threads(1)


def low_rank(batch: int, shape: tuple[int, ...], ranks: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    core = torch.randn(batch, *ranks, generator=gen, dtype=torch.float64)
    factors = [torch.randn(batch, n, r, generator=gen, dtype=torch.float64) for n, r in zip(shape, ranks, strict=True)]
    return tucker_reconstruct(core, factors)


def test_hooi_exact_at_the_multilinear_rank() -> None:
    s = low_rank(3, (5, 8, 8), (3, 2, 4))
    fit = hooi(s, (3, 2, 4), iters=3)
    assert fit.core.shape == (3, 3, 2, 4)
    torch.testing.assert_close(tucker_reconstruct(fit.core, fit.factors), s, rtol=1e-8, atol=1e-8)
    for d in fit.factors:
        eye = torch.eye(d.shape[-1], dtype=d.dtype).expand(3, -1, -1)
        torch.testing.assert_close(d.transpose(1, 2) @ d, eye, rtol=1e-8, atol=1e-8)


def test_hooi_matches_tensorly_error_on_a_noisy_tensor() -> None:
    s = low_rank(1, (6, 10, 9), (3, 3, 3), seed=1)
    s = s + 0.05 * torch.randn(s.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fit = hooi(s, (3, 3, 3), iters=20, tol=1e-10)
    ours = float((tucker_reconstruct(fit.core, fit.factors) - s).norm())
    with tl.backend_context("numpy"):
        core, factors = tucker(s[0].numpy(), rank=[3, 3, 3], n_iter_max=50, tol=1e-12, init="svd")
        theirs = float(np.linalg.norm(tl.tucker_to_tensor((core, factors)) - s[0].numpy()))
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert fit.history[-1] < fit.history[0]


def test_lrtd_layer_exact_for_low_rank_probabilities() -> None:
    s = low_rank(2, (4, 8, 8), (2, 3, 3)).float()
    layer = LRTDLayer((4, 8, 8), (2, 3, 3), variant="hooi")
    torch.testing.assert_close(layer(s), s, rtol=1e-4, atol=1e-4)
    # the trainable variant is exact when its factors span the data's subspaces (shared factors)
    core = torch.randn(2, 2, 3, 3)
    factors = [torch.randn(n, r) for n, r in ((4, 2), (8, 3), (8, 3))]
    shared = tucker_reconstruct(core, [f.expand(2, -1, -1) for f in factors])
    trained = LRTDLayer((4, 8, 8), (2, 3, 3), variant="factors")
    trained.set_factors([2.0 * f for f in factors])  # any basis of the span: the core is refitted
    torch.testing.assert_close(trained(shared), shared, rtol=1e-4, atol=1e-4)
    assert len(list(trained.parameters())) == 3 and not list(layer.parameters())
    # and not exact (a real reduction) when the data has a higher rank
    full = torch.rand(2, 4, 8, 8)
    assert float((layer(full) - full).norm()) > 0.1


def test_lrtd_layer_gradient_reaches_s_only_through_the_projection() -> None:
    s = torch.rand(2, 3, 8, 8, requires_grad=True)
    shat = LRTDLayer((3, 8, 8), (2, 2, 2), variant="hooi")(s)
    (s - shat).pow(2).sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="ranks needs one entry per mode"):
        LRTDLayer((3, 8, 8), (4, 2, 2))
    with pytest.raises(ValueError, match=r"s must be \(B, 3, 8, 8\)"):
        LRTDLayer((3, 8, 8), (2, 2, 2))(torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet(6, 3, depth=2)(torch.rand(1, 6, 10, 12))
    with pytest.raises(ValueError, match=r"sample H, W \(30, 30\) must be multiples of 2\*\*depth = 4"):
        UNetLRTD((6, 4, 30, 30), 5, width=8)  # QA9: refused when built, not at the first forward
    with pytest.raises(ValueError, match="variant"):
        LRTDLayer((3, 8, 8), (2, 2, 2), variant="svd")  # type: ignore[arg-type]


def test_loss_ignores_unlabelled_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    s = logits.softmax(1)
    labels = torch.full((2, 4, 4), -1, dtype=torch.int64)
    labels[0, 1, 2] = 2
    labels[1, 3, 0] = 0
    parts = lrtd_loss(logits, labels, s, s, lam=5.0)
    want = -(torch.log(s[0, 2, 1, 2]) + torch.log(s[1, 0, 3, 0])) / 2
    torch.testing.assert_close(parts.ce, want)
    assert float(parts.lowrank) == 0.0
    # changing the scores at unlabelled pixels does not change the CE
    other = logits.clone()
    other[0, :, 0, 0] += 10
    torch.testing.assert_close(lrtd_loss(other, labels, s, s, lam=0.0).ce, want)
    # the low-rank term is lambda/2 * ||S - Shat||_F^2 per pixel
    shat = s + 0.1
    parts = lrtd_loss(logits, labels, s, shat, lam=4.0)
    torch.testing.assert_close(parts.total - parts.ce, torch.tensor(2.0 * 0.01 * 3))
    # no labelled pixel: CE is 0, not NaN
    none = lrtd_loss(logits, torch.full((2, 4, 4), -1), s, s, lam=1.0)
    assert float(none.ce) == 0.0


def test_stack_time_zeroes_gaps_and_adds_the_mask() -> None:
    x = torch.ones(1, 2, 3, 4, 4)
    x[0, 1, 0, 0, 0] = float("nan")
    valid = torch.ones(1, 2, 4, 4, dtype=torch.bool)
    valid[0, 0, 1, 1] = False
    out = stack_time(x, valid)
    assert out.shape == (1, 8, 4, 4)
    assert torch.isfinite(out).all()
    assert out[0, 3, 1, 1] == 0 and out[0, 0, 1, 1] == 0  # date 0: mask channel 3
    assert out[0, 7, 0, 0] == 0 and out[0, 4, 0, 0] == 0  # date 1: NaN band -> not valid


def test_tiny_model_overfits_a_tiny_labelled_patch() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 16, 16), np.int64)
    labels[:, :, 8:] = 1
    labels[:, 10:, :] = 2
    x = rng.normal(0, 0.3, (2, 3, 2, 16, 16)).astype(np.float32)
    x[:, :, 0] += labels[:, None] * 1.0  # band 0 carries the class
    valid = np.ones((2, 3, 16, 16), bool)
    sparse = np.full_like(labels, -1)
    pick = rng.random(labels.shape) < 0.3
    sparse[pick] = labels[pick]
    fit = fit_unet_lrtd(x, valid, sparse, classes=3, lam=1.0, ranks=(3, 4, 4), epochs=40, batch=2,
                        lr=1e-2, width=8, depth=1, seed=0, device="cpu")
    prob = predict_proba(fit.net, x, valid)
    assert prob.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)
    assert (prob.argmax(1) == labels).mean() > 0.95
    assert fit.history[-1][1] < 0.5 * fit.history[0][1]
    # warm-up: lambda ramps linearly, lam * (epoch + 1) / (lam_warmup * epochs), capped at lam
    steps: list[int] = []
    warm = fit_unet_lrtd(x, valid, sparse, classes=3, lam=4.0, ranks=(3, 4, 4), epochs=4, batch=2,
                         lr=1e-2, width=8, depth=1, seed=0, device="cpu", lam_warmup=0.5,
                         on_step=lambda: steps.append(1))
    assert len(steps) == 4 * -(-len(x) // 2)  # epochs x batches: the stage's progress bar
    for epoch, (total, ce, low) in enumerate(warm.history):
        lam_now = 4.0 * min(1.0, (epoch + 1) / 2)
        assert total == pytest.approx(ce + 0.5 * lam_now * low, rel=1e-5)
    with pytest.raises(ValueError, match=r"lam_warmup must be in \[0, 1\)"):
        fit_unet_lrtd(x, valid, sparse, classes=3, lam=1.0, epochs=1, lam_warmup=1.0, device="cpu")


def test_unet_lrtd_shapes_and_determinism() -> None:
    torch.manual_seed(0)
    net = UNetLRTD((3, 2, 16, 16), 4, variant="factors", width=8, depth=2).eval()
    x = torch.randn(2, 3, 2, 16, 16)
    valid = torch.ones(2, 3, 16, 16, dtype=torch.bool)
    logits, s, shat = net(x, valid)
    assert logits.shape == s.shape == shat.shape == (2, 4, 16, 16)
    torch.testing.assert_close(net(x, valid)[0], logits)
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 2, 16, 16\)"):
        net(torch.randn(2, 4, 2, 16, 16), torch.ones(2, 4, 16, 16, dtype=torch.bool))


def test_class_weights_inverse_square_root() -> None:
    labels = np.array([[0, 0, 0, 0], [1, -1, -1, -1]])  # class 0: 4 px, class 1: 1 px, class 2: none
    w = class_weights(labels, 3)
    np.testing.assert_allclose(w, np.array([0.5, 1.0, 0.0]) / 0.75, rtol=1e-6)
    np.testing.assert_allclose(class_weights(labels, 3, power=0.0), [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_weights(np.full((2, 2), -1), 3)


def test_local_class_share_box_means_of_the_one_hot_map() -> None:
    index = np.zeros((5, 6), dtype=np.int64)
    index[:, 3:] = 1
    index[0, 0] = -1  # unknown: counts as no class
    np.testing.assert_array_equal(local_class_share(index, 3, window=1)[1], (index == 1).astype(np.float32))
    q = local_class_share(index, 3, window=3)
    assert q.shape == (3, 5, 6)
    np.testing.assert_allclose(q[1, 2], [0, 0, 1 / 3, 2 / 3, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(q[2], 0.0)
    # the corner window (edges replicated) holds the unknown pixel 4 times out of 9
    assert q[0, 0, 0] == pytest.approx(5 / 9)
    np.testing.assert_allclose(q.sum(0)[2:, 2:], 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="window must be an odd integer"):
        local_class_share(index, 3, window=4)
    with pytest.raises(ValueError, match=r"index must be in -1..2"):
        local_class_share(index + 2, 3, window=3)


def test_fuse_prior_picks_among_the_prior_classes() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], dtype=np.float32)  # (pixels, K)
    prior = np.array([[0.0, 0.5, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    out = fuse_prior(prob, prior, power=1.0, axis=1)
    np.testing.assert_allclose(out[0], [0.0, 2 / 3, 1 / 3], rtol=1e-6)  # class 0 excluded by the prior
    np.testing.assert_allclose(out[1], prob[1], rtol=1e-6)  # no prior: the network's probabilities
    flat = fuse_prior(prob[:1], prior[:1], power=0.5, axis=1)[0]
    np.testing.assert_allclose(flat[1] / flat[2], np.sqrt(2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="power must be > 0"):
        fuse_prior(prob, prior, power=0.0)
    with pytest.raises(ValueError, match="same shape"):
        fuse_prior(prob, prior[:1])


def test_miou_index_known_case() -> None:
    labels = np.array([[0, 0, 0, 1], [1, 2, -1, -1]])
    pred = np.array([[0, 0, 1, 1], [1, 1, 2, 0]])
    # on the 6 labelled pixels: IoU 0 = 2/3, 1 = 2/4, 2 = 0/1 (present, never predicted there)
    assert miou_index(pred, labels, 3) == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    # a class absent from the labels is not averaged
    assert miou_index(np.array([0, 3]), np.array([0, 0]), 4) == pytest.approx(0.5)
    assert np.isnan(miou_index(pred, np.full_like(labels, -1), 3))
    with pytest.raises(ValueError, match="same shape"):
        miou_index(pred, labels[:1], 3)


def test_predict_proba_blends_s_with_the_lrtd_reconstruction() -> None:
    torch.manual_seed(0)
    net = UNetLRTD((2, 2, 16, 16), 3, ranks=(3, 2, 2), width=8, depth=1).eval()
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 16, 16)).astype(np.float32)
    valid = np.ones((3, 2, 16, 16), bool)
    s = predict_proba(net, x, valid)
    low = predict_proba(net, x, valid, blend=1.0)
    np.testing.assert_allclose(low, predict_proba(net, x, valid, use_lrtd=True), atol=1e-6)
    np.testing.assert_allclose(predict_proba(net, x, valid, blend=0.25), 0.75 * s + 0.25 * low, atol=1e-5)
    np.testing.assert_allclose(low.sum(1), 1.0, atol=1e-5)
    assert np.abs(low - s).max() > 1e-3  # rank (2, 2) in space is a real reduction
    with torch.no_grad():  # blend 1 is the clipped, renormalised Shat of the layer
        _, _, shat = net(torch.as_tensor(x), torch.as_tensor(valid))
    want = shat.clamp(min=0)
    np.testing.assert_allclose(low, (want / want.sum(1, keepdim=True)).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"blend must be in \[0, 1\]"):
        predict_proba(net, x, valid, blend=1.5)


def _toy(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, 16, 16), np.int64)
    truth[:, :, 8:] = 1
    truth[:, 10:, :] = 2
    x = rng.normal(0, 1.0, (n, 2, 2, 16, 16)).astype(np.float32)
    x[:, :, 0] += truth[:, None] * 0.8
    return x, np.ones((n, 2, 16, 16), bool), truth


def test_unlabelled_patches_carry_the_low_rank_term() -> None:
    x, valid, truth = _toy(0, 2)
    ux, uv, _ = _toy(1, 4)
    sparse = np.full_like(truth, -1)
    sparse[:, ::5, ::5] = truth[:, ::5, ::5]
    kw = {"classes": 3, "ranks": (3, 2, 2), "epochs": 8, "batch": 3, "lr": 1e-2, "width": 8, "depth": 1,
          "seed": 0, "device": "cpu"}

    def residual(fit: FitResult) -> float:  # ||S - Shat||^2 per pixel on the unlabelled patches
        with torch.no_grad():
            _, s, shat = fit.net(torch.as_tensor(ux), torch.as_tensor(uv))
        return float((s - shat).pow(2).sum() / (len(ux) * 16 * 16))

    off = fit_unet_lrtd(x, valid, sparse, lam=0.0, unlabelled=(ux, uv), **kw)  # type: ignore[arg-type]
    on = fit_unet_lrtd(x, valid, sparse, lam=50.0, unlabelled=(ux, uv), **kw)  # type: ignore[arg-type]
    assert residual(on) < 0.5 * residual(off)
    # the CE is averaged over labelled pixels only: an unlabelled-only batch adds 0, not NaN
    assert all(np.isfinite(h).all() for h in on.history)
    with pytest.raises(ValueError, match="unlabelled must be"):
        fit_unet_lrtd(x, valid, sparse, unlabelled=(ux[:, :1], uv[:, :1]), **kw)  # type: ignore[arg-type]


def test_validation_selects_the_best_epoch() -> None:
    x, valid, truth = _toy(0, 3)
    vx, vv, vt = _toy(2, 2)
    sparse = np.full_like(truth, -1)
    sparse[:, ::4, ::4] = truth[:, ::4, ::4]
    fit = fit_unet_lrtd(x, valid, sparse, classes=3, lam=1.0, ranks=(3, 4, 4), epochs=6, batch=2, lr=1e-2,
                        width=8, depth=1, seed=0, device="cpu", val=(vx, vv, vt), select_from=0.5)
    assert len(fit.val_history) == 6
    best = 3 + int(np.argmax(fit.val_history[3:]))  # epochs 4..6 (0-based 3..5) are eligible
    assert fit.best_epoch == best + 1
    pred = predict_proba(fit.net, vx, vv).argmax(1)
    assert miou_index(pred, vt, 3) == pytest.approx(fit.val_history[best])
    plain = fit_unet_lrtd(x, valid, sparse, classes=3, lam=1.0, ranks=(3, 4, 4), epochs=2, batch=2,
                          width=8, depth=1, device="cpu")
    assert plain.val_history == () and plain.best_epoch == 2


def test_augment_patches_one_dihedral_transform_per_patch() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(16 * 5 * 5).reshape(16, 5, 5)
    x = torch.stack([y, -y], dim=1).reshape(16, 2, 1, 5, 5).float()  # (B, T, C, H, W)
    v = (y % 3 == 0)[:, None].expand(16, 2, 5, 5)
    xa, va, ya = augment_patches(x, v, y, gen)
    assert xa.shape == x.shape and va.shape == v.shape and ya.shape == y.shape
    used = set()
    for i in range(16):
        hits = [d for d in range(8)
                if torch.equal(ya[i], (lambda t: t.flip(-1) if d >= 4 else t)(torch.rot90(y[i], d % 4, (-2, -1))))]
        assert len(hits) == 1
        d = hits[0]
        used.add(d)
        rot = torch.rot90(x[i], d % 4, (-2, -1))
        torch.testing.assert_close(xa[i], rot.flip(-1) if d >= 4 else rot)  # x and valid follow y
        vr = torch.rot90(v[i], d % 4, (-2, -1))
        assert torch.equal(va[i], vr.flip(-1) if d >= 4 else vr)
    assert len(used) > 2  # drawn per patch, not once per batch
    with pytest.raises(ValueError, match="square"):
        augment_patches(x[..., :4], v[..., :4], y[..., :4], gen)
