"""Turn a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``) into a torch device."""
from __future__ import annotations

import torch

from infoview.errors import ConfigError, InfoviewError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when one is visible; asking for CUDA without one is a clear error."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InfoviewError(f"device={name} but no CUDA device is visible; use device=cpu or auto")
    return device
