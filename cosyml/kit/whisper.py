"""A tiny randomly initialised Whisper checkpoint in openai-whisper's own file format."""

from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_whisper(path: str | Path, seed: int = 0, n_mels: int = 128) -> Path:
    """Write ``{"dims": ..., "model_state_dict": ...}`` loadable by ``whisper.load_model(path)``.

    The model has the real multilingual vocabulary (51866 tokens with 128 mels, as large-v3) and
    tiny dims (2 layers, width 64), so decoding runs in about a second per clip on a CPU.
    """
    import whisper
    from whisper.model import ModelDimensions, Whisper

    path = Path(path)
    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=51866 if n_mels == 128 else 51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=2,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = Whisper(dims)
    # whisper allocates the decoder's positional embedding with torch.empty (real checkpoints overwrite
    # it); a random model must initialise it, or leftover memory gives NaN logits at random.
    torch.nn.init.normal_(model.decoder.positional_embedding, std=1.0)  # N(0, 1), like its token embeddings
    torch.random.set_rng_state(generator_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    whisper.load_model(str(path), device="cpu")  # fail here, not in a user's stage, if the format drifts
    return path
