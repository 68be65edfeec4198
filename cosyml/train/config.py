"""Settings of training: the loop (optimiser, schedule, precision, checkpoints, probe) and the data pipeline
(filters and dynamic batching).

A component's own typed configuration: the ``train`` section of ``params.yaml`` maps onto it
(:mod:`cosyml.config` composes the sections; the field comments below are the params file's comments).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class TrainConfig:
    """``train``: optimiser, schedule, precision, checkpoints. ``None`` = the model yaml's ``train_conf``."""

    optim: str | None = None  # adam | adamw (model yaml: adam)
    lr: float | None = None  # model yaml: 1e-5 for SFT
    weight_decay: float = 0.0  # adamw only (upstream SFT: none)
    scheduler: str | None = None  # constantlr | warmuplr | linear | cosine (model yaml: constantlr)
    warmup_steps: int | None = None  # optimiser steps (model yaml scheduler_conf.warmup_steps)
    min_lr_ratio: float = 0.0  # linear/cosine: final lr as a share of lr
    decay_steps: int = 0  # linear/cosine: steps to decay over; 0 = max_epochs x steps per epoch
    grad_clip: float | None = None  # max grad norm (model yaml: 5)
    accum_grad: int | None = None  # batches per optimiser step (model yaml: 2)
    max_epochs: int = 20  # upstream conf: 200 (written for corpus training); one voice overfits long before
    max_steps: int = 0  # stop after this many optimiser steps; 0 = no limit
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    seed: int = 1986  # model init, data order and dropout
    log_every_steps: int = 10  # optimiser steps between logged train metrics (upstream log_interval 100)
    save_every_steps: int = 0  # extra checkpoint every N optimiser steps; 0 = epoch ends only
    keep_last: int = 2  # newest full checkpoints kept for resume
    keep_best: int = 5  # epoch checkpoints with the lowest CV loss kept (weights only) for averaging
    early_stop_patience: int = 0  # epochs without CV improvement before stopping; 0 = off
    early_stop_min_delta: float = 0.0  # a CV loss must improve by more than this to count
    average_num: int = 5  # checkpoints averaged into the final weights
    average_by: str = "cv_loss"  # cv_loss (best-n, upstream --val_best) | last (last-n) | probe (best-n probe)
    find_unused_parameters: bool = True  # DDP: needed when some parameters get no gradient in a step
    device: str = "auto"  # auto (CUDA when present, the LOCAL_RANK GPU under torchrun) | cpu | cuda
    log_checkpoints: str = "best"  # which checkpoints become MLflow artifacts: all | best | final | none
    sample_every_epochs: int = 1  # per-epoch audio samples (sft mode) every N epochs; 0 = off
    sample_max_tokens: int = 75  # cap per sample sentence (25 speech tokens = 1 s of audio)
    probe_every_epochs: int = 0  # per-epoch probe (probe/cer, probe/ss in MLflow) every N epochs; 0 = off
    probe_in_domain: int = 2  # dev-split lines in the probe set (besides the fixed zh and en lines)
    probe_texts: list[str] = field(default_factory=list)  # "zh:text" / "en:text" lines; empty = the built-in four
    probe_max_tokens: int = 100  # cap on speech tokens per probe line (25 = 1 s): bounds the probe's cost
    early_stop_on: str = "cv_loss"  # what early stopping and the "best" checkpoint follow: cv_loss | probe
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
