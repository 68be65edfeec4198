"""Assemble a complete tiny model directory in the official CosyVoice2 layout.

The directory is read back through the real loading path (``ModelDir`` + the yaml) to shape the
modules, so a kit exercises exactly the code an official directory does. Weights are random (seeded),
every file has the official name, format and key set; only the sizes are small. The flow keeps the
official 512-wide encoder (upstream hard-codes that width), so upstream's own loader accepts the kit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cosyml.kit.frontend import FrontendKit, write_frontend_kit
from cosyml.kit.model_yaml import KitDims, write_model_yaml, write_qwen_backbone
from cosyml.kit.tokenizer import qwen_vocab_size
from cosyml.models.flow import build_flow
from cosyml.models.hift import build_hift
from cosyml.models.llm import build_llm
from cosyml.models.modeldir import ModelDir
from cosyml.text.tokenizer import TextTokenizer

#: Kit sizes: tiny everywhere except the flow encoder width that upstream hard-codes.
DEFAULT_KIT_DIMS = replace(KitDims(), flow_size=512)


@dataclass(frozen=True)
class Kit:
    """What :func:`build_kit` wrote."""

    model_dir: Path
    frontend: FrontendKit
    llm: Path
    flow: Path
    hift: Path


def build_kit(model_dir: str | Path, seed: int = 0, dims: KitDims | None = None) -> Kit:
    """Write ``cosyvoice2.yaml``, ``llm.pt``, ``flow.pt``, ``hift.pt``, the ONNX front end, the
    ``CosyVoice-BlankEN/`` folder and a tiny ``whisper.pt`` into ``model_dir``. Deterministic for a seed;
    the global RNG state is left as it was."""
    dims = dims or DEFAULT_KIT_DIMS
    model_dir = Path(model_dir)
    frontend = write_frontend_kit(model_dir, seed=seed)
    write_model_yaml(model_dir, dims)
    endoftext = TextTokenizer(model_dir, "cosyvoice2").token_id("<|endoftext|>")
    write_qwen_backbone(model_dir / "CosyVoice-BlankEN", qwen_vocab_size(model_dir), dims, seed, endoftext)
    md = ModelDir(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = build_llm(md)
        llm.tie_weights()
        flow = build_flow(md.config)
        hift = build_hift(md.config)
    paths = {part: md.write_weights(part, module) for part, module in (("llm", llm), ("flow", flow), ("hift", hift))}
    md.check()
    return Kit(model_dir, frontend, paths["llm"], paths["flow"], paths["hift"])
