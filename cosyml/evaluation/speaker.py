"""Speaker embeddings for speaker similarity (SS_campplus): CAM++ (``campplus.onnx``) on 16 kHz audio.

An :data:`EmbedFn` maps 16 kHz mono waveforms to one embedding each, (B, D) float32; the scorer takes
any such function, so tests and other encoders (ERes2Net, WavLM) can plug in. CAM++ is the embedding
CosyVoice itself conditions on, so its SS is biased upward for CosyVoice-family models and is not
comparable to published ERes2Net/WavLM numbers: use it to rank candidates. The whole utterance is
embedded (no random crop), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cosyml.errors import ModelDirError

EmbedFn = Callable[[Sequence[np.ndarray]], np.ndarray]
MIN_SAMPLES = 1600  # 0.1 s at 16 kHz: shorter audio gets a zero embedding (SS 0)


def campplus_embedder(
    model_path: str | Path, device: str = "auto", num_threads: int = 0, batch_size: int = 16
) -> EmbedFn:
    """An :data:`EmbedFn` backed by ``campplus.onnx``: Kaldi fbank + CMN, then the ONNX model, (B, 192)."""
    from cosyml.features.campplus import EMBEDDING_DIM, SpeakerEncoder
    from cosyml.features.fbank import campplus_features

    path = Path(model_path)
    if not path.is_file():
        raise ModelDirError(
            f"{path}: campplus.onnx not found; set evaluate.campplus_model or use a model directory that has it"
        )
    encoder = SpeakerEncoder(path, device=device, num_threads=num_threads)

    def embed(waveforms_16k: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(waveforms_16k), EMBEDDING_DIM), dtype=np.float32)
        usable = [i for i, w in enumerate(waveforms_16k) if len(w) >= MIN_SAMPLES]
        if usable:
            feats = campplus_features([waveforms_16k[i] for i in usable])
            out[usable] = encoder.embed(feats, batch_size=batch_size)
        return out

    return embed
