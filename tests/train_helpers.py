"""Tiny shards and a tiny model for the training tests (real parquet shards, real wav bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from cosyml.config import TrainDataConfig
from cosyml.data.shards import write_shards
from cosyml.train.batching import Featurizer, UtteranceSet

VOCAB = 32
DIM = 8


def encode_text(text: str) -> list[int]:
    """Stand-in text tokenizer: one id in [1, VOCAB) per character."""
    return [1 + ord(c) % (VOCAB - 1) for c in text]


def write_corpus(
    root: Path,
    num_utts: int,
    seed: int = 0,
    durations: list[float] | None = None,
    shards_dir: Path | None = None,
    **shard_kwargs,
) -> Path:
    """Write wavs, kaldi files, feature .pt files and parquet shards; return the data.list path.

    Shards go to ``shards_dir`` (default ``<root>/shards``)."""
    rng = np.random.default_rng(seed)
    split = root / "split"
    (split / "wavs").mkdir(parents=True, exist_ok=True)
    wav_scp, text, utt2spk = [], [], []
    utt2emb, utt2tok = {}, {}
    for i in range(num_utts):
        utt = f"spk_{i:04d}"
        dur = durations[i] if durations else float(rng.uniform(1.1, 2.5))
        sr = 24000 if i % 3 else 16000
        wave = (0.1 * rng.standard_normal(int(dur * sr))).astype(np.float32)
        path = split / "wavs" / f"{utt}.wav"
        sf.write(path, wave, sr)
        wav_scp.append(f"{utt} {path}")
        text.append(f"{utt} {'abcdefghij'[: 3 + i % 7]}")
        utt2spk.append(f"{utt} spk")
        utt2emb[utt] = rng.standard_normal(192).tolist()
        utt2tok[utt] = rng.integers(0, 100, int(dur * 25)).tolist()
    for name, lines in (("wav.scp", wav_scp), ("text", text), ("utt2spk", utt2spk)):
        (split / name).write_text("\n".join(lines) + "\n")
    torch.save(utt2emb, split / "utt2embedding.pt")
    torch.save({"spk": np.mean(list(utt2emb.values()), axis=0).tolist()}, split / "spk2embedding.pt")
    torch.save(utt2tok, split / "utt2speech_token.pt")
    shards_dir = shards_dir or root / "shards"
    write_shards(split, out_dir=shards_dir, utts_per_shard=shard_kwargs.get("utts_per_shard", 5))
    return shards_dir / "data.list"


def write_cli_shards(root: Path, num_train: int = 8, num_dev: int = 3, seed: int = 0) -> Path:
    """``<root>/shards/{train,dev}/data.list`` as `cosyml shards` writes them (what `cosyml train --data` reads)."""
    shards = root / "shards"
    write_corpus(root / "train_src", num_train, seed=seed, shards_dir=shards / "train", durations=[1.0] * num_train)
    write_corpus(root / "dev_src", num_dev, seed=seed + 1, shards_dir=shards / "dev", durations=[1.0] * num_dev)
    return shards


def tiny_featurizer() -> Featurizer:
    """No mel (LLM-style), the trim rule L = min(frames // 2, tokens)."""
    return Featurizer(encode_text=encode_text, trim_tokens=lambda frames, n: min(frames // 2, n))


def load_set(data_list: Path, rank: int = 0, world_size: int = 1, **cfg) -> UtteranceSet:
    config = TrainDataConfig(
        max_frames_in_batch=cfg.pop("max_frames_in_batch", 300), sort_size=cfg.pop("sort_size", 8), **cfg
    )
    return UtteranceSet.load(data_list, tiny_featurizer(), config, rank=rank, world_size=world_size)


class TinyLM(nn.Module):
    """A model following the trainer protocol, with the official LLM tied-weight key names, an integer
    buffer (a step counter, like BatchNorm's) and dropout (consumes the torch RNG)."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.llm = nn.Module()
        self.llm.model = nn.Module()
        self.llm.model.model = nn.Module()
        self.llm.model.model.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.llm.model.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.llm.model.lm_head.weight = self.llm.model.model.embed_tokens.weight
        self.spk_proj = nn.Linear(192, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: dict) -> dict:
        if self.training:
            self.seen += 1
        tokens = batch["text_token"]
        mask = (torch.arange(tokens.shape[1])[None, :] < batch["text_token_len"][:, None]).float()
        emb = self.llm.model.model.embed_tokens(tokens)  # (B, L, D)
        hidden = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        hidden = self.dropout(self.norm(hidden + self.spk_proj(batch["embedding"])))
        logits = self.llm.model.lm_head(hidden)  # (B, V)
        target = batch["speech_token"][:, 0] % VOCAB
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc}
