"""The one device rule every component uses (transcription, evaluation, synthesis, training)."""

from __future__ import annotations

import pytest
import torch

from cosyml.devices import resolve_device
from cosyml.errors import ConfigError


def test_auto_takes_cuda_when_present_and_the_cpu_otherwise():
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
def test_cuda_without_cuda_and_a_bad_name_are_one_line_each():
    with pytest.raises(ConfigError, match=r"^device cuda: CUDA is not available on this machine; use cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"^device gpu0: not a device; expected auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu0")
