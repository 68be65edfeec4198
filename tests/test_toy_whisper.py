"""The tiny Whisper trained on the toy corpus: its training shortcuts equal whisper's own forward, it
hears the toy clips through cosyml's real ASR code (the random one does not), and it is cached by content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyml.evaluation.asr import WhisperASR
from cosyml.evaluation.metrics import count_errors
from cosyml.kit.whisper import (
    TOY_CORPUS,
    cache_key,
    install_trained_toy_whisper,
    toy_clips,
    trained_toy_whisper,
    write_tiny_whisper,
)


@pytest.fixture(scope="module")
def clips():
    return toy_clips()


def _errors(checkpoint: Path, clips, max_tokens: int | None = None, prepared: bool = False) -> list[float]:
    asr = WhisperASR.load(checkpoint, device="cpu", batch_size=16, max_tokens=max_tokens)
    hyps = asr.transcribe([c.prepared if prepared else c.samples for c in clips], [c.language for c in clips])
    return [count_errors(c.text, h.text, c.language).error for c, h in zip(clips, hyps, strict=True)]


def test_training_forward_equals_whisper_forward(clips) -> None:
    from cosyml.features.whisper_mel import whisper_windows
    from cosyml.kit.whisper import _decoder_hidden, _dims, _encode_clips, _new_model

    model = _new_model(_dims(128, 64, 0, 2), seed=3)
    for window in ("decode", "language"):  # the two windows it trains on
        mels = torch.stack([getattr(whisper_windows(c.samples, 128), window) for c in clips[:2]])
        features, bias = _encode_clips(model, mels, [len(c.samples) // 160 for c in clips[:2]])
        assert torch.allclose(features, model.encoder(mels), atol=1e-5)
        assert not bias.any()
        tokens = torch.randint(0, 50000, (2, 7))
        ours = _decoder_hidden(model, tokens, features, bias) @ model.decoder.token_embedding.weight.T
        assert torch.allclose(ours, model.decoder(tokens, model.encoder(mels)), atol=1e-3)


def test_trained_whisper_hears_the_toy_clips_and_the_random_one_does_not(toy_whisper, clips, tmp_path) -> None:
    trained = _errors(toy_whisper, clips)
    assert float(np.mean(trained)) <= 0.05, trained
    assert float(np.mean(_errors(toy_whisper, clips, prepared=True))) <= 0.05  # as prepare hands them over
    random_errors = _errors(write_tiny_whisper(tmp_path / "random.pt"), clips[::12], max_tokens=8)
    assert float(np.mean(random_errors)) >= 0.9


def test_cached_by_content(toy_whisper, tmp_path) -> None:
    assert trained_toy_whisper() == toy_whisper  # second call: the cached file
    assert toy_whisper.name == f"toy-whisper-{cache_key()}.pt"
    corpus = tmp_path / "corpus"
    shutil.copytree(TOY_CORPUS, corpus)
    assert cache_key(corpus) == cache_key()
    (corpus / "vo_zh_000.lab").write_text("别的话。", encoding="utf-8")
    assert cache_key(corpus) != cache_key()


def test_kit_installs_it(toy_whisper, tmp_path) -> None:
    import whisper

    path = install_trained_toy_whisper(tmp_path / "kit")
    assert path.read_bytes() == toy_whisper.read_bytes()
    assert whisper.load_model(str(path), device="cpu").dims.n_vocab == 51866
