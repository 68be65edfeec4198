"""Settings of the training data pipeline (filters and dynamic batching).

A component's own typed configuration: the ``train.data`` section of ``params.yaml`` maps onto it
(:mod:`cosyml.config` composes the sections; the field comments below are the params file's comments).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainDataConfig:
    """``train.data``: utterance filters and dynamic batching (upstream's ``data_pipeline`` numbers)."""

    min_length: int = 100  # 10 ms frames: drop clips shorter than 1 s
    max_length: int = 40960  # 10 ms frames (the model-dir yaml's value)
    token_min_length: int = 1  # text tokens
    token_max_length: int = 200  # text tokens, at most
    min_output_input_ratio: float = 0.0005  # text tokens per 10 ms frame
    max_output_input_ratio: float = 1.0  # text tokens per 10 ms frame, at most
    sort_size: int = 500  # utterances sorted by length together before batching
    max_frames_in_batch: int = 2000  # padded flow-mel frames (50/s) per batch: 40 s of audio
    shuffle_batches: bool = True  # shuffle the batch order after length sorting
    use_spk_embedding: bool = True  # batch["embedding"] = speaker mean (SFT) instead of the utterance's
    normalize_embedding: bool = True  # L2-normalise embeddings, as upstream
