"""Serving memory (issue 17.9): a served voice gets every prompt wav in a new temporary file; the prompt
feature cache must neither grow with requests nor recompute a prompt it has seen."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from cosyml.audio import write_wav


def test_prompt_features_are_cached_by_content_and_the_cache_is_bounded(kit_dir: Path, tmp_path: Path) -> None:
    from cosyml.synth.engine import SynthEngine
    from cosyml.synth.frontend import PROMPT_CACHE_SIZE

    frontend = SynthEngine.load(kit_dir, device="cpu").prompt
    t = np.arange(16000) / 16000
    first = tmp_path / "prompt.wav"
    write_wav(first, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    for i in range(5):  # the same prompt in a new temporary file per request: one entry, computed once
        copy = tmp_path / f"request-{i}" / "prompt-0.bin"
        copy.parent.mkdir()
        shutil.copyfile(first, copy)
        frontend.features(copy)
    assert len(frontend._cache) == 1
    for i in range(PROMPT_CACHE_SIZE + 5):  # many distinct prompts: bounded
        other = tmp_path / f"other-{i}.wav"
        write_wav(other, (0.3 * np.sin(2 * np.pi * (100 + 7 * i) * t)).astype(np.float32), 16000)
        frontend.features(other)
    assert len(frontend._cache) == PROMPT_CACHE_SIZE
