"""Where the models run: ``cuda`` when torch sees a GPU, else the CPU; one code path for both."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

__all__ = ["DEVICES", "DEVICE_HELP", "as_input", "as_mask", "default_device", "keeps_torch_rng", "resolve_device"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: the device names the stages' ``--device`` options take
DEVICES = ("cpu", "cuda")
#: the help of those options
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when torch sees a GPU)"


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (the same code path runs on both)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` or ``""``: :func:`default_device`.

    Raises
    ------
    ValueError
        For a name torch does not know, or ``cuda`` on a machine where torch sees no GPU (a CPU
        build of torch, no driver, or ``CUDA_VISIBLE_DEVICES`` hiding it), instead of torch's
        failure deep inside the first transfer.
    """
    if device is None or device == "":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device name (use one of {', '.join(DEVICES)})") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
            raise ValueError(f"device {str(device)!r} was asked for, but torch sees no GPU here ({build}); "
                             "leave the device unset to use the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} was asked for, but torch sees "
                             f"{torch.cuda.device_count()} GPU(s)")
    return dev


def keeps_torch_rng(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator for a function that seeds torch's global random generator (``torch.manual_seed``,
    for layers initialised from it): the caller's generator state, on the CPU and every visible
    GPU, is put back when it returns, so a notebook's own ``torch.manual_seed`` still holds."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=gpus):
            return fn(*args, **kwargs)

    return wrapper


def as_input(x: Any, model: torch.nn.Module, *, name: str = "x") -> torch.Tensor:
    """A model's float input as a tensor of its parameters' dtype, on their device: a numpy array
    (a notebook's float64 included) or a tensor of another float or integer dtype is converted;
    anything else is refused, naming ``name`` and what the model takes."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    if isinstance(x, np.ndarray) and (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)  # a flipped view too
    if isinstance(x, torch.Tensor) and not x.is_complex():
        return x.to(device=device, dtype=dtype)
    raise TypeError(f"{name} must be a real torch tensor or numpy array ({type(model).__name__} computes in "
                    f"{dtype} on {device}); got {type(x).__name__}"
                    + (f" of {x.dtype}" if hasattr(x, "dtype") else ""))


def as_mask(mask: Any, device: torch.device, *, name: str = "mask") -> torch.Tensor:
    """A mask as a bool tensor on ``device``: bool, or 0/1 numbers (non-zero is True), from numpy
    or torch; anything else is refused naming ``name``."""
    if isinstance(mask, np.ndarray) and (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise TypeError(f"{name} must be a bool (or 0/1) torch tensor or numpy array; got {type(mask).__name__}")
    return (mask if mask.dtype == torch.bool else mask != 0).to(device)
