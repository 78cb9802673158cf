"""Where the models run: ``cuda`` when torch sees a GPU, else the CPU; one code path for both."""

from __future__ import annotations

import torch

__all__ = ["DEVICES", "DEVICE_HELP", "default_device", "resolve_device"]

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
