"""The one rule that turns a ``device`` setting ("auto", "cpu", "cuda", "cuda:1") into a torch device,
for every component that runs a network (transcription, evaluation, synthesis, training)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cosyml.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"``: the CUDA device ``local_rank`` (torchrun's LOCAL_RANK; 0 in a single process) when CUDA is
    available, else the CPU. Anything else as given; a CUDA device on a machine without CUDA is one line."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!s}: not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!s}: CUDA is not available on this machine; use cpu (or auto)")
    return dev
