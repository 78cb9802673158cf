"""Conv4d against direct references, its gradients, and the classifiers built on it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import signal

from fusion_models.classifier_training import class_weights, fit_classifier, predict_proba, scores
from fusion_models.classifiers import CNN2D, CNN3D, CNN4D, build_classifier
from fusion_models.conv4d import Conv4d, SeparableConv4d, conv4d, separable_conv4d


def naive_conv4d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride, padding) -> np.ndarray:
    """The definition, one output entry at a time (float64)."""
    s, p = stride, padding
    xp = np.pad(x, [(0, 0), (0, 0)] + [(q, q) for q in p])
    k = w.shape[2:]
    out_shape = [(x.shape[2 + n] + 2 * p[n] - k[n]) // s[n] + 1 for n in range(4)]
    out = np.zeros((x.shape[0], w.shape[0], *out_shape))
    for i in itertools.product(*(range(o) for o in out_shape)):
        window = xp[:, :, i[0] * s[0]:i[0] * s[0] + k[0], i[1] * s[1]:i[1] * s[1] + k[1],
                    i[2] * s[2]:i[2] * s[2] + k[2], i[3] * s[3]:i[3] * s[3] + k[3]]
        out[(slice(None), slice(None), *i)] = np.einsum("bcpqrs,ocpqrs->bo", window, w)
    if b is not None:
        out += b.reshape(1, -1, 1, 1, 1, 1)
    return out


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [
        ((3, 3, 3, 3), (1, 1, 1, 1), (1, 1, 1, 1)),
        ((2, 3, 1, 2), (1, 1, 1, 1), (0, 0, 0, 0)),
        ((3, 2, 3, 1), (2, 1, 2, 1), (1, 0, 1, 0)),
        ((1, 1, 1, 1), (1, 2, 1, 2), (0, 1, 0, 1)),
        ((3, 3, 2, 2), (2, 2, 2, 2), (2, 1, 1, 0)),
    ],
)
def test_conv4d_matches_naive_loop(kernel, stride, padding) -> None:
    rng = np.random.default_rng(sum(kernel) + 7 * sum(stride) + 31 * sum(padding))
    x = rng.standard_normal((2, 3, 5, 4, 6, 5))
    w = rng.standard_normal((4, 3, *kernel))
    b = rng.standard_normal(4)
    got = conv4d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride,
                 padding=padding).numpy()
    want = naive_conv4d(x, w, b, stride, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_conv4d_matches_scipy_correlate() -> None:
    """Single channel, stride 1, 'valid' and zero-padded 'full' against scipy.signal.correlate."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 7, 4))
    w = rng.standard_normal((3, 2, 3, 2))
    xt = torch.from_numpy(x)[None, None]
    wt = torch.from_numpy(w)[None, None]
    np.testing.assert_allclose(conv4d(xt, wt)[0, 0].numpy(), signal.correlate(x, w, mode="valid"),
                               rtol=1e-10, atol=1e-10)
    full = conv4d(xt, wt, padding=(2, 1, 2, 1))[0, 0].numpy()
    np.testing.assert_allclose(full, signal.correlate(x, w, mode="full"), rtol=1e-10, atol=1e-10)


def test_conv4d_gradients_match_finite_differences() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv4d(x, w, b, stride=(2, 1, 1, 2), padding=(1, 1, 0, 1)), (x, w, b)
    )


def test_conv4d_layer_checks_shapes() -> None:
    layer = Conv4d(2, 3, 3, padding=1)
    assert layer(torch.zeros(1, 2, 3, 4, 5, 6)).shape == (1, 3, 3, 4, 5, 6)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 2"):
        layer(torch.zeros(1, 3, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="kernel_size must be an int or 4 ints"):
        Conv4d(2, 3, (3, 3, 3))
    with pytest.raises(ValueError, match="stride entry must be >= 1"):
        Conv4d(2, 3, 3, stride=0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv4d(torch.zeros(1, 1, 2, 2, 2, 2), torch.zeros(1, 1, 3, 3, 3, 3))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [((3, 3, 3, 3), (1, 1, 1, 1), (1, 1, 1, 1)), ((3, 2, 3, 1), (2, 1, 2, 1), (1, 0, 1, 0)),
     ((2, 3, 3, 2), (1, 2, 1, 1), (0, 1, 2, 0))],
)
def test_separable_conv4d_equals_dense_conv_with_the_kronecker_kernel(kernel, stride, padding) -> None:
    """W[o, c, a1..a4] = sum_r B[o, r, a3, a4] A[r, c, a1, a2]: same output as the naive 4D loop."""
    rng = np.random.default_rng(sum(kernel) + 5 * sum(stride))
    x = rng.standard_normal((2, 3, 5, 4, 6, 5))
    a = rng.standard_normal((2, 3, *kernel[:2]))
    bk = rng.standard_normal((4, 2, *kernel[2:]))
    bias = rng.standard_normal(4)
    dense = np.einsum("orpq,rcab->ocabpq", bk, a)
    got = separable_conv4d(torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(bk),
                           torch.from_numpy(bias), stride=stride, padding=padding).numpy()
    np.testing.assert_allclose(got, naive_conv4d(x, dense, bias, stride, padding), rtol=1e-10, atol=1e-10)
    layer = SeparableConv4d(3, 4, kernel, rank=2, stride=stride, padding=padding).double()
    xt = torch.from_numpy(x)
    torch.testing.assert_close(layer(xt), conv4d(xt, layer.full_weight(), layer.bias, stride=stride,
                                                 padding=padding))


def test_separable_conv4d_gradients_and_checks() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    bk = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, bk: separable_conv4d(x, a, bk, stride=(2, 1, 1, 2), padding=(1, 1, 0, 1)), (x, a, bk)
    )
    with pytest.raises(ValueError, match=r"weight_b must have shape \(C_out, R=2"):
        separable_conv4d(x, a, torch.zeros(3, 5, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        SeparableConv4d(2, 3, 3, rank=0)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 2"):
        SeparableConv4d(2, 3, 3)(torch.zeros(1, 3, 3, 4, 5, 6))


def _toy(n: int = 6, t: int = 4, c: int = 3, size: int = 8, seed: int = 0):
    """Patches whose class (0, 1, 2) is the sign pattern of a per-pixel temporal profile."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, (n, size, size))
    y = np.kron(y[:, ::4, ::4], np.ones((1, 4, 4), dtype=np.int64))  # 4 x 4 blocks of one class
    profile = np.array([[1, 1, -1, -1], [-1, 1, 1, -1], [1, -1, 1, -1]], np.float32)[:, :t]
    x = profile[y].transpose(0, 3, 1, 2)[:, :, None] * np.linspace(0.5, 1.5, c)[None, None, :, None, None]
    x = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    valid = rng.random((n, t, size, size)) > 0.2
    x[~np.broadcast_to(valid[:, :, None], x.shape)] = np.nan
    return x, valid, y


@pytest.mark.parametrize(("kind", "extra"), [("cnn4d", {}), ("cnn4d", {"separable": False}), ("cnn3d", {}),
                                           ("cnn2d", {})])
def test_classifiers_shapes_and_nan_input(kind, extra) -> None:
    x, valid, _ = _toy()
    torch.manual_seed(0)
    model = build_classifier(kind, n_times=4, n_bands=3, n_classes=5, hidden=8, **extra).eval()
    out = model(torch.from_numpy(x), torch.from_numpy(valid))
    assert out.shape == (6, 5, 8, 8)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 4, 3, H, W\)"):
        model(torch.zeros(1, 5, 3, 8, 8), torch.ones(1, 5, 8, 8, dtype=torch.bool))


def test_a_class_without_training_pixels_is_never_predicted() -> None:
    """Early in training an untrained class output can win everywhere (a stage run with 1-2
    epochs mapped 99 % of the pixels to a class its labels did not hold): ``only_predict`` keeps
    the classes that had training pixels, and travels with the state dict."""
    x, valid, _ = _toy()
    model = build_classifier("cnn4d", n_times=4, n_bands=3, n_classes=3, hidden=8).eval()
    with torch.no_grad():
        model.head[-1].bias[1] = 1e3  # class 1's untrained output wins everywhere
    assert (model(torch.from_numpy(x), torch.from_numpy(valid)).argmax(1) == 1).all()
    model.only_predict([True, False, True])
    out = model(torch.from_numpy(x), torch.from_numpy(valid))
    assert not (out.argmax(1) == 1).any() and torch.isfinite(out).all()
    again = build_classifier("cnn4d", n_times=4, n_bands=3, n_classes=3, hidden=8)
    again.load_state_dict(model.state_dict())
    assert again.seen.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="seen needs 3 flags, at least one true"):
        model.only_predict([False, False, False])


def test_tiny_cnn4d_overfits_tiny_dataset() -> None:
    x, valid, y = _toy(n=2)
    torch.manual_seed(0)
    model = CNN4D(n_times=4, n_bands=3, n_classes=3, width=2, hidden=16, dropout=0.0)
    batches = [(x, valid, y)]
    fit = fit_classifier(model, lambda: batches, epochs=40, lr=3e-2, crop=None, seed=0)
    assert fit.history[-1] < 0.2 * fit.history[0]
    proba = next(predict_proba(model, batches))
    assert scores(y, proba.argmax(axis=1), 3)["accuracy"] > 0.95


def test_cnn4d_is_deterministic_under_a_seed() -> None:
    x, valid, _ = _toy()
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(CNN4D(n_times=4, n_bands=3, n_classes=3).eval()(torch.from_numpy(x), torch.from_numpy(valid)))
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])])
def test_cpu_and_cuda_share_the_code_path(device) -> None:
    x, valid, y = _toy(n=2)
    torch.manual_seed(0)
    ref = CNN3D(n_times=4, n_bands=3, n_classes=3).eval()
    model = CNN3D(n_times=4, n_bands=3, n_classes=3)
    model.load_state_dict(ref.state_dict())
    got = next(predict_proba(model, [(x, valid, y)], device=device))
    want = torch.softmax(ref(torch.from_numpy(x), torch.from_numpy(valid)), 1).detach().numpy()
    np.testing.assert_allclose(got, want, atol=2e-2 if device == "cuda" else 1e-6)
    fit = fit_classifier(CNN2D(n_times=4, n_bands=3, n_classes=3), lambda: [(x, valid, y)], epochs=1,
                         device=device, crop=4)
    assert np.isfinite(fit.history).all()


def test_class_weights_and_scores_known_values() -> None:
    w = class_weights(np.array([80, 20, 0]))
    np.testing.assert_allclose(w, [0.4, 1.6, 0.0], rtol=1e-6)  # 1/freq, present mean 1
    t = np.array([0, 0, 0, 1, 1, -1])
    p = np.array([0, 0, 1, 1, 0, 2])
    s = scores(t, p, 3)
    assert s["accuracy"] == pytest.approx(3 / 5)
    np.testing.assert_allclose(s["f1"][:2], [2 / 3, 0.5], rtol=1e-9)  # P = R = 2/3; P = R = 1/2
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)  # class 2 absent from truth
    assert s["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="same size"):
        scores(t, p[:3], 3)
