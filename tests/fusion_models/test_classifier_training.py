"""Training helpers of the classifiers: symmetries, test-time augmentation, weight averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fusion_models.classifier_training import (
    _augment,
    average_weights,
    dihedral,
    fit_classifier,
    predict_proba,
    refresh_batchnorm,
    shuffled_batches,
    undo_dihedral,
)
from fusion_models.classifiers import CNN3D, CNN4D


def _toy(n: int = 4, t: int = 3, c: int = 2, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, (n, size, size))
    x = (y[:, None, None] + 0.2 * rng.standard_normal((n, t, c, size, size))).astype(np.float32)
    valid = rng.random((n, t, size, size)) > 0.1
    return x, valid, y


def test_dihedral_views_are_the_eight_symmetries_and_undo_inverts_them() -> None:
    a = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    views = {tuple(dihedral(a, k, f).flatten().tolist()) for k in range(4) for f in (False, True)}
    assert len(views) == 8  # a generic square has 8 distinct images under the dihedral group
    for k in range(4):
        for f in (False, True):
            torch.testing.assert_close(undo_dihedral(dihedral(a, k, f), k, f), a)
    torch.testing.assert_close(dihedral(a, 1, False)[0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))
    torch.testing.assert_close(dihedral(a, 0, True)[0], torch.tensor([[2.0, 1, 0], [5, 4, 3], [8, 7, 6]]))


def test_per_sample_augmentation_keeps_labels_on_their_pixels() -> None:
    n, size = 16, 6
    y = torch.arange(n * size * size).reshape(n, size, size)
    x = y[:, None, None].float().expand(n, 2, 3, size, size).clone()  # x encodes its label
    valid = (y % 2 == 0)[:, None].expand(n, 2, size, size).clone()
    gen = torch.Generator().manual_seed(0)
    xa, va, ya = _augment(x, valid, y, 4, gen, per_sample=True)
    assert xa.shape == (n, 2, 3, 4, 4) and ya.shape == (n, 4, 4)
    torch.testing.assert_close(xa, ya[:, None, None].float().expand_as(xa))
    assert torch.equal(va, (ya % 2 == 0)[:, None].expand_as(va))
    # the 16 samples did not all get the same symmetry: their first-row patterns differ
    steps = {tuple((ya[i] - ya[i].min()).flatten().tolist()) for i in range(n)}
    assert len(steps) > 1


def test_tta_is_the_mean_over_the_eight_views() -> None:
    x, valid, y = _toy()
    torch.manual_seed(0)
    model = CNN3D(n_times=3, n_bands=2, n_classes=3, width=4, hidden=8).eval()
    got = next(predict_proba(model, [(x, valid, y)], tta=True))
    xt, vt = torch.from_numpy(x), torch.from_numpy(valid)
    want = torch.zeros(4, 3, 8, 8)
    with torch.no_grad():
        for k in range(4):
            for f in (False, True):
                p = torch.softmax(model(dihedral(xt, k, f), dihedral(vt, k, f)), dim=1)
                want += undo_dihedral(p, k, f) / 8
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    plain = next(predict_proba(model, [(x, valid, y)]))
    assert not np.allclose(plain, got)  # a 3x3-kernel CNN is not symmetric by itself


def test_average_weights_known_values() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    avg = average_weights([a, b])
    torch.testing.assert_close(avg["w"], torch.tensor([2.0, 4.0]))
    assert int(avg["n"]) == 5  # integer buffers come from the last state
    with pytest.raises(ValueError, match="at least one"):
        average_weights([])
    with pytest.raises(ValueError, match="same keys"):
        average_weights([a, {"w": torch.zeros(2)}])


class _BNOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.bn(x[:, 0])  # (B, C, H, W)


def test_refresh_batchnorm_sets_the_plain_mean_and_variance_of_all_batches() -> None:
    rng = np.random.default_rng(1)
    batches = [(rng.normal(3.0, 2.0, (n, 1, 2, 4, 4)).astype(np.float32), np.ones((n, 1, 4, 4), bool),
                np.zeros((n, 4, 4), np.int64)) for n in (2, 5, 1)]
    model = _BNOnly()
    model.bn.running_mean.fill_(100.0)
    assert refresh_batchnorm(model, batches) == 3
    assert not model.training and model.bn.momentum == 0.1
    per_batch = [b[0][:, 0].transpose(1, 0, 2, 3).reshape(2, -1) for b in batches]
    # cumulative average over batches of each batch's mean and unbiased variance
    want_mean = np.mean([p.mean(axis=1) for p in per_batch], axis=0)
    want_var = np.mean([p.var(axis=1, ddof=1) for p in per_batch], axis=0)
    np.testing.assert_allclose(model.bn.running_mean.numpy(), want_mean, rtol=1e-5)
    np.testing.assert_allclose(model.bn.running_var.numpy(), want_var, rtol=1e-5)


def test_fit_with_weight_averaging_and_label_smoothing() -> None:
    x, valid, y = _toy(n=4, t=4, c=2)
    torch.manual_seed(0)
    model = CNN4D(n_times=4, n_bands=2, n_classes=3, width=2, hidden=8, dropout=0.0)
    batches = [(x[:2], valid[:2], y[:2]), (x[2:], valid[2:], y[2:])]
    fit = fit_classifier(model, lambda: batches, val=lambda: batches, epochs=6, lr=3e-2, crop=None,
                         average=3, label_smoothing=0.1)
    assert len(fit.val_f1) == 6 and np.isfinite(fit.averaged_val_f1)
    # the average is kept exactly when it is at least as good as the best epoch on validation
    assert fit.averaged == (fit.averaged_val_f1 >= max(fit.val_f1))
    assert (fit.best_epoch == -1) == fit.averaged
    for bad, match in (({"average": 7}, r"average must be an integer in \[0, epochs=6\]"),
                       ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=match):
            fit_classifier(model, lambda: batches, epochs=6, **bad)


def test_shuffled_batches_draw_new_members_every_epoch() -> None:
    n = 10
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1, 1)
    valid = np.ones((n, 1, 1, 1), bool)
    y = np.arange(n).reshape(n, 1, 1)
    rng = np.random.default_rng(0)
    epochs = [shuffled_batches(x, valid, y, batch=4, rng=rng) for _ in range(3)]
    for batches in epochs:
        assert [len(b[0]) for b in batches] == [4, 3, 3]  # ceil(10 / 4) batches of almost equal size
        seen = np.concatenate([b[0].ravel() for b in batches])
        assert sorted(seen.tolist()) == list(range(n))  # every patch once per epoch
        for bx, _, by in batches:
            assert np.array_equal(bx.ravel(), by.ravel())  # inputs and labels stay paired
    members = [{frozenset(b[2].ravel().tolist()) for b in batches} for batches in epochs]
    assert members[0] != members[1] or members[1] != members[2]
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        shuffled_batches(x, valid, y, batch=0, rng=rng)
    with pytest.raises(ValueError, match="same number"):
        shuffled_batches(x, valid[:3], y, batch=2, rng=rng)
