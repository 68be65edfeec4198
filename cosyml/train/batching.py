"""Training data: shard rows -> filtered, featurised utterances -> length-sorted dynamic batches.

Pipeline (upstream's ``data_pipeline`` numbers, in our own shape):

1. :meth:`UtteranceSet.load` reads the shards of a ``data.list`` and keeps the rows of this rank:
   row ``i`` (counted over all shards in list order) belongs to rank ``i % world_size``. Partitioning by
   utterance, not by shard, means a small speaker set is read exactly once per epoch whatever the number
   of ranks (upstream replicates the shard list when there are fewer shards than readers).
2. Filters (upstream's): duration in 10 ms frames within [min_length, max_length], text tokens within
   [token_min_length, token_max_length], text tokens per 10 ms frame within the ratio bounds, a
   non-empty ``speech_token``, a sample rate of at least 16 kHz, decodable audio. Each drop is counted
   by reason in :attr:`UtteranceSet.dropped`.
3. Featurisation through an injected :class:`Featurizer` (text tokenizer, flow mel, token/mel trim
   rule), so this module imports no model code. Samples stay in memory (a flow mel costs 16 KB per
   second of audio, about 58 MB per hour; LLM training skips the mel entirely).
4. :meth:`UtteranceSet.plan` turns (seed, epoch) into a list of batches of sample indices: a seeded
   shuffle, sorting inside windows of ``sort_size`` by length, dynamic batching while
   ``longest_frames x batch_size <= max_frames_in_batch``, then a seeded shuffle of the batch order.
   The plan is a pure function of (seed, epoch) and the data, so resuming at batch ``k`` of an epoch
   replays exactly the batches an uninterrupted run would have seen.
5. :func:`collate` pads a batch into upstream's batch dict (reference section 3.5).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from cosyml.audio import audio_info, read_audio, resample, to_mono
from cosyml.data.shards import read_data_list
from cosyml.errors import InputError
from cosyml.train.config import TrainDataConfig

MIN_SAMPLE_RATE = 16000  # upstream drops audio recorded below 16 kHz
FRAMES_PER_SECOND_FILTER = 100  # the filter's length unit is 10 ms
DROP_REASONS = (
    "undecodable_audio",
    "too_short",
    "too_long",
    "text_tokens_out_of_range",
    "text_per_frame_out_of_range",
    "empty_speech_token",
    "sample_rate_below_16k",
)


@dataclass(frozen=True)
class Featurizer:
    """How a shard row becomes a training sample; the pieces are injected by the caller.

    ``encode_text``: text -> token ids (``TextTokenizer.encode``).
    ``mel``: mono float waveform (N,) at ``sample_rate`` -> (T, num_mels) flow mel; ``None`` skips
    ``speech_feat`` (LLM training needs none).
    ``mel_frames``: N samples at ``sample_rate`` -> T mel frames, without computing the mel.
    ``trim_tokens``: (mel_frames, token_count) -> L, the common length (mel is cut to 2L frames, tokens
    to L); ``None`` keeps both whole.
    """

    encode_text: Callable[[str], list[int]]
    mel: Callable[[torch.Tensor], torch.Tensor] | None = None
    mel_frames: Callable[[int], int] = lambda n: n // 480
    trim_tokens: Callable[[int, int], int] | None = None
    sample_rate: int = 24000
    token_mel_ratio: int = 2


def default_featurizer(
    encode_text: Callable[[str], list[int]], mel_config: Any = None, with_mel: bool = True
) -> Featurizer:
    """The production featurizer: our flow mel (``cosyml.features.mel``) and the mid-2025 trim rule.

    ``mel_config``: a :class:`cosyml.features.mel.MelConfig` (the model yaml's ``feat_extractor``).
    """
    from cosyml.features.mel import MelConfig, mel_spectrogram
    from cosyml.features.speech_tokens import TOKEN_MEL_RATIO, usable_token_count

    config = mel_config or MelConfig()

    def mel(wave: torch.Tensor) -> torch.Tensor:
        return mel_spectrogram(wave, config)[0].transpose(0, 1)  # (T, num_mels)

    return Featurizer(
        encode_text=encode_text,
        mel=mel if with_mel else None,
        mel_frames=config.num_frames,
        trim_tokens=usable_token_count,
        sample_rate=config.sampling_rate,
        token_mel_ratio=TOKEN_MEL_RATIO,
    )


@dataclass
class Sample:
    """One featurised utterance. Token lists are ids; tensors are float32."""

    utt: str
    text: str
    text_token: list[int]
    num_samples: int  # waveform length at the featurizer's sample rate
    num_frames: int  # flow-mel frames (after trimming): the batching length
    speech_token: list[int] | None = None
    speech_feat: torch.Tensor | None = None  # (num_frames, num_mels)
    utt_embedding: torch.Tensor | None = None  # (192,)
    spk_embedding: torch.Tensor | None = None  # (192,)
    instruct_token: list[int] | None = None


def _embedding(value: Any, normalize: bool) -> torch.Tensor | None:
    if value is None:
        return None
    emb = torch.tensor(value, dtype=torch.float32)
    return F.normalize(emb, dim=0) if normalize else emb


def _decode(audio_data: bytes, target_sr: int) -> np.ndarray:
    """Raw file bytes -> mono float32 waveform at ``target_sr`` (peak-normalised when it clips)."""
    audio = read_audio(audio_data)
    wave = resample(to_mono(audio.samples), audio.sample_rate, target_sr)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 1.0:
        wave = wave / peak
    return wave


def featurize_row(row: dict[str, Any], featurizer: Featurizer, cfg: TrainDataConfig) -> Sample | str:
    """A :class:`Sample`, or the reason (a short name) the row is dropped."""
    info = audio_info(row["audio_data"])
    if info is None:
        return "undecodable_audio"
    num_frames, sample_rate = info
    filter_frames = num_frames / sample_rate * FRAMES_PER_SECOND_FILTER
    if filter_frames < cfg.min_length:
        return "too_short"
    if filter_frames > cfg.max_length:
        return "too_long"
    text_token = list(featurizer.encode_text(row["text"]))
    if not cfg.token_min_length <= len(text_token) <= cfg.token_max_length:
        return "text_tokens_out_of_range"
    ratio = len(text_token) / max(filter_frames, 1e-9)
    if not cfg.min_output_input_ratio <= ratio <= cfg.max_output_input_ratio:
        return "text_per_frame_out_of_range"
    speech_token = row.get("speech_token")
    if "speech_token" in row and not speech_token:
        return "empty_speech_token"
    if sample_rate < MIN_SAMPLE_RATE:
        return "sample_rate_below_16k"
    try:
        wave = _decode(row["audio_data"], featurizer.sample_rate)
    except InputError:
        return "undecodable_audio"
    num_samples = int(wave.shape[0])
    frames = featurizer.mel_frames(num_samples)
    tokens = None if speech_token is None else [int(t) for t in speech_token]
    if tokens is not None and featurizer.trim_tokens is not None:
        keep = featurizer.trim_tokens(frames, len(tokens))
        if keep <= 0:
            return "empty_speech_token"
        tokens = tokens[:keep]
        frames = featurizer.token_mel_ratio * keep
    speech_feat = None
    if featurizer.mel is not None:
        speech_feat = featurizer.mel(torch.from_numpy(wave))[:frames].contiguous()
        frames = int(speech_feat.shape[0])
    instruct = row.get("instruct")
    return Sample(
        utt=str(row["utt"]),
        text=str(row["text"]),
        text_token=text_token,
        num_samples=num_samples,
        num_frames=frames,
        speech_token=tokens,
        speech_feat=speech_feat,
        utt_embedding=_embedding(row.get("utt_embedding"), cfg.normalize_embedding),
        spk_embedding=_embedding(row.get("spk_embedding"), cfg.normalize_embedding),
        instruct_token=list(featurizer.encode_text(instruct)) if instruct else None,
    )


def dynamic_batches(order: Sequence[int], lengths: Sequence[int], max_frames_in_batch: int) -> list[list[int]]:
    """Cut ``order`` into batches whose padded size ``longest x count`` stays within the budget.

    An utterance longer than the budget on its own becomes a batch of one.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if current and longest_if_added * (len(current) + 1) > max_frames_in_batch:
            batches.append(current)
            current, longest = [index], lengths[index]
        else:
            current.append(index)
            longest = longest_if_added
    if current:
        batches.append(current)
    return batches


class UtteranceSet:
    """This rank's featurised utterances of one split, and its per-epoch batch plans."""

    def __init__(self, samples: list[Sample], cfg: TrainDataConfig, dropped: Counter[str] | None = None) -> None:
        self.samples = samples
        self.cfg = cfg
        self.dropped: Counter[str] = dropped or Counter()

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def load(
        cls,
        data_list: str | Path,
        featurizer: Featurizer,
        cfg: TrainDataConfig,
        rank: int = 0,
        world_size: int = 1,
        require_speech_token: bool = True,
    ) -> UtteranceSet:
        """Read, filter and featurise this rank's rows of the shards listed in ``data_list``."""
        shards = read_data_list(data_list)
        if not shards:
            raise InputError(f"{data_list}: lists no shards; rerun `cosyml shards`")
        samples: list[Sample] = []
        dropped: Counter[str] = Counter()
        position = 0
        for shard in shards:
            if not Path(shard).is_file():
                raise InputError(f"{shard}: shard listed in {data_list} is missing; rerun `cosyml shards`")
            parquet = pq.ParquetFile(shard)
            if require_speech_token and "speech_token" not in parquet.schema_arrow.names:
                raise InputError(f"{shard}: no speech_token column; run `cosyml extract` and `cosyml shards`")
            for record_batch in parquet.iter_batches(batch_size=64):
                count = record_batch.num_rows
                mine = [i for i in range(count) if (position + i) % world_size == rank]
                position += count
                if not mine:
                    continue
                for row in record_batch.take(mine).to_pylist():
                    result = featurize_row(row, featurizer, cfg)
                    if isinstance(result, str):
                        dropped[result] += 1
                    else:
                        samples.append(result)
        return cls(samples, cfg, dropped)

    @property
    def lengths(self) -> list[int]:
        return [s.num_frames for s in self.samples]

    def plan(self, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
        """Batches of sample indices for ``epoch``: a pure function of (seed, epoch) and the data.

        ``shuffle=False`` (validation): one length sort over everything, no shuffling.
        """
        lengths = self.lengths
        order = list(range(len(self.samples)))
        if not shuffle:
            order.sort(key=lambda i: lengths[i])
            return dynamic_batches(order, lengths, self.cfg.max_frames_in_batch)
        rng = random.Random(seed * 1_000_003 + epoch)
        rng.shuffle(order)
        batches: list[list[int]] = []
        window = max(1, self.cfg.sort_size)
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
            batches.extend(dynamic_batches(chunk, lengths, self.cfg.max_frames_in_batch))
        if self.cfg.shuffle_batches:
            rng.shuffle(batches)
        return batches

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return collate([self.samples[i] for i in indices], self.cfg.use_spk_embedding)


def _pad_ids(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = [torch.tensor(r, dtype=torch.int64) for r in rows]
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int32)
    return pad_sequence(tensors, batch_first=True, padding_value=0), lengths


def collate(samples: list[Sample], use_spk_embedding: bool = True) -> dict[str, Any]:
    """Pad samples into upstream's batch dict, longest waveform first.

    Keys: ``utts``, ``text`` (lists); ``text_token`` (B, Lt) int64 pad 0, ``text_token_len`` (B,) int32;
    when every sample has them: ``speech_token`` (B, Ls) / ``speech_token_len``, ``speech_feat``
    (B, T, 80) pad 0 / ``speech_feat_len`` (B,) int32, ``instruct_token`` / ``instruct_token_len``,
    ``utt_embedding`` and ``spk_embedding`` (B, 192), and ``embedding`` = the speaker mean when
    ``use_spk_embedding`` else the utterance's.
    """
    ordered = sorted(samples, key=lambda s: s.num_samples, reverse=True)
    batch: dict[str, Any] = {"utts": [s.utt for s in ordered], "text": [s.text for s in ordered]}
    batch["text_token"], batch["text_token_len"] = _pad_ids([s.text_token for s in ordered])
    if all(s.speech_token is not None for s in ordered):
        batch["speech_token"], batch["speech_token_len"] = _pad_ids([s.speech_token or [] for s in ordered])
    if all(s.speech_feat is not None for s in ordered):
        feats = [s.speech_feat for s in ordered if s.speech_feat is not None]
        batch["speech_feat"] = pad_sequence(feats, batch_first=True, padding_value=0.0)
        batch["speech_feat_len"] = torch.tensor([f.shape[0] for f in feats], dtype=torch.int32)
    if all(s.instruct_token is not None for s in ordered):
        batch["instruct_token"], batch["instruct_token_len"] = _pad_ids([s.instruct_token or [] for s in ordered])
    for key in ("utt_embedding", "spk_embedding"):
        values = [getattr(s, key) for s in ordered]
        if all(v is not None for v in values):
            batch[key] = torch.stack(values)
    chosen = "spk_embedding" if use_spk_embedding else "utt_embedding"
    if chosen in batch:
        batch["embedding"] = batch[chosen]
    return batch


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (lists stay as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
