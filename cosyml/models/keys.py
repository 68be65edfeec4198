"""Facts about the official CosyVoice2/3 model directories: file names, classes and state-dict key rules.

This is the one place that knows official names. The full key/shape lists of the official ``llm.pt``,
``flow.pt`` and ``hift.pt`` are in ``tests/fixtures/upstream-state-dicts.tsv`` (checked by the tests);
the modules in :mod:`cosyml.models` produce exactly those keys by construction.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

Version = Literal["v2", "v3"]
Part = Literal["llm", "flow", "hift"]
PARTS: tuple[Part, ...] = ("llm", "flow", "hift")

YAML_NAME: dict[Version, str] = {"v2": "cosyvoice2.yaml", "v3": "cosyvoice3.yaml"}
SPEECH_TOKENIZER_NAME: dict[Version, str] = {"v2": "speech_tokenizer_v2.onnx", "v3": "speech_tokenizer_v3.onnx"}
SPEECH_TOKENIZER_BATCH_NAME: dict[Version, str] = {
    "v2": "speech_tokenizer_v2.batch.onnx",
    "v3": "speech_tokenizer_v3.batch.onnx",
}
WEIGHT_FILE: dict[Part, str] = {"llm": "llm.pt", "flow": "flow.pt", "hift": "hift.pt"}
CAMPPLUS_NAME = "campplus.onnx"
SPK2INFO_NAME = "spk2info.pt"
QWEN_DIR_NAME = "CosyVoice-BlankEN"
QWEN_REQUIRED_FILES = ("config.json",)

# The class triple each version's yaml must name (upstream's model-type check).
EXPECTED_CLASSES: dict[Version, dict[Part, str]] = {
    "v2": {"llm": "Qwen2LM", "flow": "CausalMaskedDiffWithXvec", "hift": "HiFTGenerator"},
    "v3": {"llm": "CosyVoice3LM", "flow": "CausalMaskedDiffWithDiT", "hift": "CausalHiFTGenerator"},
}

# Training checkpoints (epoch_*_whole.pt, init.pt) carry these scalar entries next to the weights; an
# official weight file never does, and strict loading fails on them.
TRAINING_ONLY_KEYS = ("epoch", "step")

# hift.pt may come from a HiFi-GAN training checkpoint whose generator keys are prefixed.
HIFT_STRIP_PREFIX = "generator."

# Weight-norm parameter names: pre-2.1 ``torch.nn.utils.weight_norm`` vs the parametrized form.
WEIGHT_NORM_RENAMES: tuple[tuple[str, str], ...] = (
    (".weight_g", ".parametrizations.weight.original0"),
    (".weight_v", ".parametrizations.weight.original1"),
)

# alias key -> source key: stored as the same tensor so torch.save writes it once (about 2.02 GB for the
# v2 llm.pt instead of 2.57 GB).
TIED_KEYS: dict[str, str] = {"llm.model.lm_head.weight": "llm.model.model.embed_tokens.weight"}

# Derived artifacts upstream keeps using without checking that they match llm.pt / flow.pt.
STALE_EXPORT_GLOBS = ("flow.encoder.*.zip", "flow.decoder.estimator.*.onnx", "*.plan")
STALE_EXPORT_DIRS = ("vllm",)


def is_stale_export(name: str) -> bool:
    """Whether a model-directory entry ``name`` is an export derived from llm/flow weights."""
    return name in STALE_EXPORT_DIRS or any(fnmatch.fnmatch(name, pattern) for pattern in STALE_EXPORT_GLOBS)


# Text token id of "<|endofprompt|>" in the official tokenizer (v3 asserts it in every prompt).
END_OF_PROMPT_ID = 151646
