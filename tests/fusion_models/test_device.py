"""fusion_models.device: the default device and the refusal of a GPU that is not there."""

from __future__ import annotations

import pytest
import torch

from fusion_models.device import default_device, resolve_device


def test_unset_means_cuda_when_present_else_cpu() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == want
    assert resolve_device(None).type == want and resolve_device("").type == want
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'gpu0' is not a torch device name \(use one of cpu, cuda\)"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match=r"'cuda' was asked for, but torch sees no GPU here .*leave the device unset"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="sees no GPU"):
        resolve_device("cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_index_beyond_the_visible_ones_is_refused() -> None:
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ValueError, match=r"torch sees \d+ GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_training_keeps_the_callers_random_generator() -> None:
    """A notebook's ``torch.manual_seed`` still decides its next draws after a fit that seeds
    torch's global generator itself (``keeps_torch_rng``)."""
    import numpy as np

    from fusion_models.device import keeps_torch_rng
    from fusion_models.lrtcnet_training import fit_lrtcnet

    @keeps_torch_rng
    def seeds_itself() -> torch.Tensor:
        torch.manual_seed(0)
        return torch.rand(2)

    torch.manual_seed(1)
    want = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(seeds_itself(), seeds_itself())  # its own seed inside
    assert torch.equal(torch.rand(3), want)
    x = np.random.default_rng(0).normal(size=(2, 4, 1, 8, 8)).astype(np.float32)
    observed = np.random.default_rng(1).random((2, 4, 8, 8)) > 0.2
    torch.manual_seed(1)
    fit_lrtcnet(x, observed, ranks=(2, 1, 4, 4), layers=2, epochs=1, batch=2, device="cpu")
    assert torch.equal(torch.rand(3), want)


def test_models_take_numpy_float64_and_0_1_masks_like_float32_tensors() -> None:
    """A notebook's float64 numpy arrays and 0/1 float masks give what float32 tensors and bool
    masks give; other inputs are refused naming the argument."""
    import numpy as np

    from fusion_models.classifiers import CNN4D
    from fusion_models.conv4d import Conv4d
    from fusion_models.lrtcnet import LRTCNet
    from fusion_models.unet_lrtd import UNetLRTD

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x = rng.normal(size=(2, 4, 2, 8, 8))  # float64 (B, T, C, H, W)
    valid = rng.random((2, 4, 8, 8)) > 0.3
    x32, v = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(valid)
    lrtc = LRTCNet((4, 2, 8, 8), ranks=(2, 1, 4, 4), layers=2)
    unet = UNetLRTD((4, 2, 8, 8), 3, width=4, depth=1).eval()
    cnn = CNN4D(n_times=4, n_bands=2, n_classes=3, width=2, hidden=8, dropout=0.0).eval()
    conv = Conv4d(2, 3, 3, padding=1)
    with torch.no_grad():
        m = v[:, :, None]
        assert torch.equal(lrtc(x, m.numpy().astype(np.float64)), lrtc(x32, m))
        for a, b in zip(unet(x, valid.astype(np.float32)), unet(x32, v), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(cnn(x, valid.astype(np.uint8)), cnn(x32, v))
        assert torch.equal(conv(x.transpose(0, 2, 1, 3, 4)[..., None].repeat(3, -1)),
                           conv(x32.permute(0, 2, 1, 3, 4)[..., None].repeat(1, 1, 1, 1, 1, 3)))
        # QA9: a south-up raster flipped north-up is a negative-stride view, which torch refused
        assert torch.equal(cnn(x[..., ::-1, :], valid[..., ::-1, :]), cnn(x32.flip(-2), v.flip(-2)))
    with pytest.raises(TypeError, match=r"x must be a real torch tensor or numpy array \(LRTCNet computes in torch.float32"):
        lrtc(x.tolist(), m)
    with pytest.raises(TypeError, match="valid must be a bool"):
        unet(x32, valid.tolist())


def test_lrtcnet_treats_a_nan_marked_observed_as_missing() -> None:
    """One NaN at an entry its mask calls observed used to spread into every filled value."""
    from fusion_models.lrtcnet import LRTCNet

    torch.manual_seed(0)
    net = LRTCNet((4, 2, 8, 8), ranks=(2, 1, 4, 4), layers=3)
    x = torch.randn(1, 4, 2, 8, 8)
    mask = torch.rand(1, 4, 1, 8, 8) > 0.3
    mask[0, 1, 0, 2, 3] = True
    x[0, 1, 0, 2, 3] = float("nan")  # band 0 NaN under a per-date mask
    with torch.no_grad():
        out = net(x, mask)
    assert torch.isfinite(out).all()
    seen = mask.expand_as(x) & torch.isfinite(x)
    assert torch.equal(out[seen], x[seen])
