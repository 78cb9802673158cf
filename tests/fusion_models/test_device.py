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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_index_beyond_the_visible_ones_is_refused() -> None:
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ValueError, match=r"torch sees \d+ GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
