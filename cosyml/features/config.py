"""Settings of ``extract`` (campplus embeddings, speech tokens, the speaker check).

A component's own typed configuration: the ``extract`` section of ``params.yaml`` maps onto it
(:mod:`cosyml.config` composes the sections; the field comments below are the params file's comments).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractConfig:
    """``extract``: campplus embeddings and speech tokens from the prepared clips."""

    batch_size: int = 16  # clips per campplus/speech-tokenizer batch
    num_threads: int = 0  # onnxruntime intra-op threads per session; 0 = 1 (parallelism comes from `workers`)
    device: str = "auto"  # "auto" (CUDA provider when present), "cpu" or "cuda"
    checkpoint_every: int = 200  # utterances between atomic writes of the resume cache
    workers: int = 0  # threads that decode audio, compute features and run model batches; 0 = one per core
    token_batches: str = "auto"  # "auto" (padded batches on CUDA, one clip per call on the CPU), "on" or "off"
    speaker_min_similarity: float = 0.5  # speaker check: cosine to the speaker's centroid below this = speaker_outlier
    speaker_max_z: float = 0.0  # also outlier when more than this many robust sd below the speaker's median; 0 = off
    speaker_min_clips: int = 5  # speakers with fewer clips get no outlier verdicts (said so)
    drop_speaker_outliers: bool = False  # leave speaker outliers out of the shards (listed, never silent)
