"""Import upstream CosyVoice's own loaders (``CosyVoice2(dir)``, ``CosyVoice3(dir)``) offline, for the
fixture scripts (run by hand with the upstream venv, never from tests).

Upstream virtualenv used (python3.11 -m venv /work/upstream/venv): torch==2.13.0 (CPU, the project's
torch), transformers==4.51.3 (upstream's pin: its KV-cache decode is wrong under transformers 5),
hyperpyyaml, omegaconf, conformer, diffusers, x-transformers, lightning, einops, inflect, onnxruntime,
librosa, hydra-core, rich, matplotlib, openai-whisper, wetext. Checkouts: ``/work/upstream/CosyVoice``
(FunAudioLLM/CosyVoice ace7c47) and ``/work/upstream/paimon`` (828Tina/cosyvoice-paimon-sft b77af71,
for its vendored third_party/Matcha-TTS).

Two imports are stood in for, neither on a path these fixtures run:

- ``modelscope.snapshot_download`` (the loaders call it only when the directory does not exist);
- ``torchaudio``: no torchaudio release pairs with torch 2.13. Upstream imports it at module level for
  training-only or front-end code (the HiFi-GAN discriminator's ``Spectrogram``, the DiT module's
  ``MelSpectrogram`` helper, Kaldi fbank, ``load_wav``); the stand-in classes construct (an empty
  ``nn.Module``, which draws nothing from the RNG, so the construction order of the model is unchanged)
  and raise if called.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

UPSTREAM = Path("/work/upstream/CosyVoice")
MATCHA = Path("/work/upstream/paimon/third_party/Matcha-TTS")


class _Unavailable(torch.nn.Module):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args, **kwargs):
        raise RuntimeError("torchaudio is not installed in the upstream venv (stand-in called)")


def _fail(*args, **kwargs):
    raise RuntimeError("torchaudio is not installed in the upstream venv (stand-in called)")


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def install_stand_ins() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # the kit's Qwen folder is local; nothing may download
    _module("modelscope", snapshot_download=lambda model_dir, *a, **k: model_dir)
    kaldi = _module("torchaudio.compliance.kaldi", fbank=_fail)
    compliance = _module("torchaudio.compliance", kaldi=kaldi)
    transforms = _module(
        "torchaudio.transforms", Spectrogram=_Unavailable, MelSpectrogram=_Unavailable, Resample=_Unavailable
    )
    _module("torchaudio", compliance=compliance, transforms=transforms, load=_fail, __version__="stand-in")


def import_upstream(upstream: Path = UPSTREAM, matcha: Path = MATCHA):
    """``cosyvoice.cli.cosyvoice`` of the checkout at ``upstream`` (CosyVoice2, CosyVoice3 loaders)."""
    install_stand_ins()
    sys.path[:0] = [str(upstream), str(matcha)]
    from cosyvoice.cli import cosyvoice

    return cosyvoice


def upstream_commit(upstream: Path = UPSTREAM) -> str:
    """The checkout's commit: ``git rev-parse HEAD``, or for a ``git archive`` export the id written
    beside it in ``<checkout>.commit``."""
    out = subprocess.run(["git", "-C", str(upstream), "rev-parse", "HEAD"], capture_output=True, text=True)
    if out.returncode == 0:
        return out.stdout.strip()
    return Path(f"{upstream}.commit").read_text().strip()
