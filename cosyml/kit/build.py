"""Assemble a complete tiny model directory in the official CosyVoice2 or Fun-CosyVoice3 layout.

The directory is read back through the real loading path (``ModelDir`` + the yaml) to shape the
modules, so a kit exercises exactly the code an official directory does. Weights are random (seeded),
every file has the official name, format and key set; only the sizes are small. The v2 flow keeps the
official 512-wide encoder (upstream hard-codes that width), so upstream's own loader accepts the kit;
the v3 flow has no such constraint (its DiT width only has to be a multiple of 16).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cosyml.errors import InputError
from cosyml.kit.frontend import SPEECH_TOKENIZER_FILES, FrontendKit, write_frontend_kit
from cosyml.kit.model_yaml import (
    OFFICIAL_V2_DIMS,
    OFFICIAL_V3_DIMS,
    KitDims,
    KitDimsV3,
    write_model_yaml,
    write_qwen_backbone,
)
from cosyml.kit.tokenizer import qwen_vocab_size
from cosyml.models import keys
from cosyml.models.flow import build_flow
from cosyml.models.keys import Part
from cosyml.models.llm import build_llm
from cosyml.models.modeldir import ModelDir
from cosyml.models.vocoder import build_hift
from cosyml.text.tokenizer import ENDOFTEXT, TextTokenizer

#: Kit versions, named like the tokenizer versions in the official yamls.
KIT_VERSIONS = ("cosyvoice2", "cosyvoice3")

#: v2 kit sizes: tiny everywhere except the flow encoder width that upstream hard-codes.
DEFAULT_KIT_DIMS = replace(KitDims(), flow_size=512)
#: v3 kit sizes (all tiny).
DEFAULT_KIT_DIMS_V3 = KitDimsV3()

#: Official CosyVoice2-0.5B sizes (``--size full``: the dress rehearsal; random weights, ~2 GB llm.pt).
FULL_KIT_DIMS = OFFICIAL_V2_DIMS
#: Official Fun-CosyVoice3-0.5B sizes.
FULL_KIT_DIMS_V3 = OFFICIAL_V3_DIMS
KIT_SIZES = ("tiny", "full")


def kit_dims(version: str, size: str) -> KitDims | KitDimsV3:
    """The dims of a ``size`` ("tiny" or "full" = the official model's) kit of ``version``."""
    if size not in KIT_SIZES:
        raise InputError(f"kit size {size!r}: expected tiny or full")
    if version == "cosyvoice2":
        return FULL_KIT_DIMS if size == "full" else DEFAULT_KIT_DIMS
    return FULL_KIT_DIMS_V3 if size == "full" else DEFAULT_KIT_DIMS_V3


_MODEL_VERSION = {"cosyvoice2": "v2", "cosyvoice3": "v3"}


@dataclass(frozen=True)
class Kit:
    """What :func:`build_kit` wrote. ``version`` is "cosyvoice2" or "cosyvoice3"."""

    model_dir: Path
    frontend: FrontendKit
    llm: Path
    flow: Path
    hift: Path
    version: str = "cosyvoice2"


def _remove_other_version(model_dir: Path, version: str) -> None:
    """Delete the other version's yaml and speech tokenizer, so ``ModelDir`` detects ``version``.

    (``cosyvoice2.yaml`` wins when both yamls exist, as in upstream's ``AutoModel``.)
    """
    for other in KIT_VERSIONS:
        if other == version:
            continue
        for name in (keys.YAML_NAME[_MODEL_VERSION[other]], SPEECH_TOKENIZER_FILES[other]):  # type: ignore[index]  # other is a KIT_VERSIONS str; the tables are keyed by its Literal values
            (model_dir / name).unlink(missing_ok=True)


def build_kit(
    model_dir: str | Path,
    seed: int = 0,
    dims: KitDims | KitDimsV3 | None = None,
    version: str = "cosyvoice2",
    official_text_ids: bool = False,
) -> Kit:
    """Write a tiny random-weight model directory of ``version`` into ``model_dir``.

    "cosyvoice2": ``cosyvoice2.yaml``, ``llm.pt`` (Qwen2LM), ``flow.pt`` (CausalMaskedDiffWithXvec),
    ``hift.pt`` (HiFTGenerator), ``speech_tokenizer_v2.onnx``. "cosyvoice3": ``cosyvoice3.yaml``,
    ``llm.pt`` (CosyVoice3LM), ``flow.pt`` (CausalMaskedDiffWithDiT), ``hift.pt`` (CausalHiFTGenerator),
    ``speech_tokenizer_v3.onnx``. Both: ``campplus.onnx``, ``CosyVoice-BlankEN/`` (tiny Qwen2 + BPE
    whose embedding covers every v3 special id) and a tiny ``whisper.pt``. ``dims`` is a
    :class:`KitDims` for v2 and a :class:`KitDimsV3` for v3 (None: the defaults). Deterministic for a
    seed; the global RNG state is left as it was. A directory holding a kit of the other version is
    switched over (its yaml and speech tokenizer are removed).

    ``official_text_ids``: give the text specials their official ids (``<|endofprompt|>`` = 151646), at the
    cost of a 151936-row Qwen embedding (about 39 MB each in ``llm.pt`` and ``model.safetensors`` at the
    default width) and a ~2 s tokenizer load. Needed where code hard-codes the id, e.g. upstream's
    CosyVoice3 LLM inference (parity fixtures run on a v3 kit). Without it, ids are the tiny vocabulary's
    (same relative order; ``<|endofprompt|>`` = ``<|endoftext|>`` + 3).
    """
    if version not in KIT_VERSIONS:
        raise InputError(f"kit version {version!r}: expected one of {', '.join(KIT_VERSIONS)}")
    expected_dims = KitDims if version == "cosyvoice2" else KitDimsV3
    dims = dims or (DEFAULT_KIT_DIMS if version == "cosyvoice2" else DEFAULT_KIT_DIMS_V3)
    if not isinstance(dims, expected_dims):
        raise TypeError(
            f"build_kit(version={version!r}) needs {expected_dims.__name__} dims, got {type(dims).__name__}"
        )
    model_dir = Path(model_dir)
    with torch.random.fork_rng(devices=[]):  # the ONNX / whisper / weight writers seed the global RNG
        return _write_kit(model_dir, seed, dims, version, official_text_ids)


def _write_kit(model_dir: Path, seed: int, dims: KitDims | KitDimsV3, version: str, official_text_ids: bool) -> Kit:
    model_dir.mkdir(parents=True, exist_ok=True)
    _remove_other_version(model_dir, version)
    frontend = write_frontend_kit(model_dir, seed=seed, version=version, official_text_ids=official_text_ids)
    write_model_yaml(model_dir, dims)  # cosyvoice2.yaml or cosyvoice3.yaml, by the type of dims
    endoftext = TextTokenizer(model_dir, version).token_id(ENDOFTEXT)
    write_qwen_backbone(model_dir / keys.QWEN_DIR_NAME, qwen_vocab_size(model_dir), dims, seed, endoftext)
    md = ModelDir(model_dir)
    torch.manual_seed(seed)
    llm = build_llm(md)
    llm.tie_weights()
    flow = build_flow(md.config)
    hift = build_hift(md.config)
    modules: dict[Part, torch.nn.Module] = {"llm": llm, "flow": flow, "hift": hift}
    paths = {part: md.write_weights(part, module) for part, module in modules.items()}
    md.check()
    return Kit(model_dir, frontend, paths["llm"], paths["flow"], paths["hift"], version)
