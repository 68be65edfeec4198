"""Settings of ``prepare`` (raw clips -> prepared data).

A component's own typed configuration: the ``prepare`` section of ``params.yaml`` maps onto it
(:mod:`cosyml.config` composes the sections; the field comments below are the params file's comments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Transcripts matching this (game markup such as ``{NICKNAME}``, ``#name#``, ``<tag>``) are rejected.
PLACEHOLDER_PATTERN = r"\{[A-Za-z_]+\}|#\w+#|<[A-Za-z_]+>"


@dataclass(frozen=True)
class PrepareConfig:
    """``prepare``: raw clips -> normalised 24 kHz mono clips, kaldi files, manifest, rejects."""

    speaker: str = "speaker"  # utt-id prefix and MLflow experiment cosyml/<speaker>: letters (any script), digits, -
    inputs: list[str] = field(default_factory=list)  # folders with the raw clips (`cosyml prepare --input` overrides)
    sample_rate: int = 24000  # Hz of the prepared clips (the model yaml's sample_rate)
    language: str = "auto"  # "zh", "en", ... or "auto": detected per clip by Whisper when transcribing
    transcribe: bool = True  # Whisper-transcribe clips that have no transcript
    whisper_model: str = ""  # local openai-whisper checkpoint (.pt); empty = clips without text are rejected
    min_duration_s: float = 0.5  # reject clips shorter than this (seconds, after trimming)
    max_duration_s: float = 30.0  # reject clips longer than this (upstream drops > 40.96 s in training)
    min_keep_s: float = 1.5  # silence trim never cuts a clip that was longer than this below it
    trim_top_db: float = 40.0  # frames quieter than peak - top_db are silence
    trim_pad_s: float = 0.1  # silence kept at each end after trimming
    max_silence_ratio: float = 0.9  # reject clips that are mostly silence
    clip_threshold: float = 0.999  # |sample| at or above this counts as clipped
    max_clipped_ratio: float = 0.01  # reject clips with more clipped samples than this share
    min_rms_dbfs: float = -50.0  # reject clips whose speech part is quieter than this
    target_peak: float = 0.9  # peak-normalise louder or quieter clips to this peak
    long_recording_s: float = 60.0  # recordings longer than this are sliced at silences
    slice_min_s: float = 3.0  # pieces cut from a long recording are at least this long (seconds)
    slice_max_s: float = 15.0  # ... and at most this long
    dev_ratio: float = 0.05  # share of clips held out as the dev (CV) split
    min_dev: int = 2  # warn when dev gets fewer clips (the split never moves a clip to meet it)
    seed: int = 1986  # seed of the train/dev split
    instruct: str = ""  # CosyVoice3: instruct prefix written to the `instruct` kaldi file
    placeholder_pattern: str = PLACEHOLDER_PATTERN  # transcripts matching this (game markup) are rejected
    silence_floor_dbfs: float = -60.0  # frames below this level are silence whatever the peak
    slice_min_silence_s: float = 0.3  # a pause must be this long to cut a long recording there
    min_confidence: float = 0.3  # Whisper transcripts below this confidence are rejected (review them)
    whisper_batch_size: int = 8  # clips per Whisper forward
    whisper_max_tokens: int = 0  # most tokens Whisper writes per clip; 0 = its default (224)
    whisper_device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    check_transcripts: str = "auto"  # compare given transcripts with Whisper: auto (if whisper_model), on, off
    transcript_max_cer: float = 0.5  # set aside clips whose text is further from Whisper's (CER zh, WER en)
