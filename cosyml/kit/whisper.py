"""Tiny Whisper checkpoints in openai-whisper's own file format: a random one, and one trained on the toy corpus.

The random checkpoint (:func:`write_tiny_whisper`) recognises nothing: every CER it gives is ~100 %. The
trained one (:func:`trained_toy_whisper`) is the same kind of file, trained in a few CPU minutes on the
committed toy corpus (``examples/toy_speaker``: espeak-ng clips with ``.lab`` transcripts), so it transcribes
those clips (and the same espeak voice saying the same lines) and nothing else: it is an instrument for tests
and the demo, never a speech recogniser.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosyml.errors import InputError
from cosyml.features.whisper_mel import whisper_windows

#: The committed toy corpus the trained Whisper learns (relative to the repository root).
TOY_CORPUS = Path(__file__).resolve().parents[2] / "examples" / "toy_speaker"
#: Clips of the toy corpus that are speech with a matching transcript (the ``vo_x_*`` junk clips are not).
TOY_CLIP_PREFIXES = ("vo_zh_", "vo_en_")
#: Where trained checkpoints are cached when no folder is given (``COSYML_CACHE`` overrides the root).
DEFAULT_CACHE = Path(os.environ.get("COSYML_CACHE", Path.home() / ".cache" / "cosyml")) / "toy-whisper"


def _dims(n_mels: int = 128, width: int = 64, audio_layers: int = 2, text_layers: int = 2):
    from whisper.model import ModelDimensions

    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=1500,  # decoding needs 30 s windows: 3000 mel frames -> 1500 encoder positions
        n_audio_state=width,
        n_audio_head=2,
        n_audio_layer=audio_layers,
        n_vocab=51866 if n_mels == 128 else 51865,  # the multilingual vocabulary (large-v3's with 128 mels)
        n_text_ctx=448,
        n_text_state=width,
        n_text_head=2,
        n_text_layer=text_layers,
    )


def _new_model(dims, seed: int):
    from whisper.model import Whisper

    torch.manual_seed(seed)
    model = Whisper(dims)
    # whisper allocates the decoder's positional embedding with torch.empty (real checkpoints overwrite
    # it); a fresh model must initialise it, or leftover memory gives NaN logits at random.
    torch.nn.init.normal_(model.decoder.positional_embedding, std=1.0)  # N(0, 1), like its token embeddings
    return model


def _save(model, path: Path) -> Path:
    import whisper

    from cosyml.fileio import atomic_torch_save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, path)
    whisper.load_model(str(path), device="cpu")  # fail here, not in a user's stage, if the format drifts
    return path


def write_tiny_whisper(path: str | Path, seed: int = 0, n_mels: int = 128) -> Path:
    """Write a random ``{"dims": ..., "model_state_dict": ...}`` loadable by ``whisper.load_model(path)``.

    The model has the real multilingual vocabulary (51866 tokens with 128 mels, as large-v3) and
    tiny dims (2 layers, width 64), so decoding runs in about a second per clip on a CPU.
    """
    with torch.random.fork_rng(devices=[]):
        model = _new_model(_dims(n_mels), seed)
    return _save(model, Path(path))


# -- the trained toy Whisper ------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyClip:
    """One clip of the toy corpus: 16 kHz float32 samples, its transcript and language."""

    name: str
    samples: np.ndarray  # (num_samples,) float32 at 16 kHz
    text: str
    language: str  # "zh" or "en"
    prepared: np.ndarray  # (num_samples,) float32 at 16 kHz: the clip as prepare hands it to Whisper


@dataclass(frozen=True)
class TrainSettings:
    """How the toy Whisper is trained (part of the cache key)."""

    seed: int = 0
    steps: int = 500  # optimiser steps (loss 0.007 at the end; CER 0 on every toy clip)
    batch_size: int = 12  # clips per step
    lr: float = 1e-2  # AdamW peak learning rate (linear warm-up, cosine decay); 3e-3 needs 3x the steps
    warmup: int = 30  # warm-up steps
    text_layers: int = 2
    width: int = 64
    embedding_std: float = 0.1  # scale of the initial token embedding rows (whisper's N(0, 1) saturates)
    silence_sample: int = 96  # silence positions kept per step (0 = all 1500 - speech: exact, 5x slower)
    max_shift_s: float = 0.05  # most lead-in silence added to a clip (seconds)
    max_cut_s: float = 0.03  # most lead-in cut from a clip (seconds)


def toy_clips(corpus: Path = TOY_CORPUS) -> list[ToyClip]:
    """The toy corpus clips with transcripts (zh, en), sorted by name; resampled to 16 kHz mono."""
    from cosyml.audio import read_audio, resample, to_mono

    clips = []
    for wav in sorted(corpus.glob("*.wav")):
        lab = wav.with_suffix(".lab")
        if not wav.name.startswith(TOY_CLIP_PREFIXES) or not lab.is_file():
            continue
        audio = read_audio(wav)
        samples = resample(to_mono(audio.samples), audio.sample_rate, 16000).astype(np.float32)
        text = lab.read_text(encoding="utf-8").strip()
        language = "en" if wav.name.startswith("vo_en_") else "zh"
        clips.append(ToyClip(wav.stem, samples, text, language, _as_prepared(samples)))
    if not clips:
        raise InputError(f"{corpus}: no vo_zh_*/vo_en_* clips with .lab transcripts; is the toy corpus checked out?")
    return clips


def cache_key(corpus: Path = TOY_CORPUS, settings: TrainSettings | None = None) -> str:
    """sha256 (16 hex digits) of the corpus clips, the training code (this module, the Whisper log-mel
    windows, and the audio and cleaning code prepare runs), prepare's defaults, the settings and the torch/whisper versions: a change
    to any of them trains a new checkpoint."""
    import whisper

    digest = hashlib.sha256()
    for path in sorted(corpus.glob("*")):
        if path.name.startswith(TOY_CLIP_PREFIXES) and path.suffix in (".wav", ".lab"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    from cosyml import audio
    from cosyml.config import PrepareConfig
    from cosyml.data import clean
    from cosyml.features import whisper_mel

    # the training code, the windows it trains on, and what _as_prepared runs
    for module in (__file__, whisper_mel.__file__, audio.__file__, clean.__file__):
        digest.update(Path(module).read_bytes())
    digest.update(repr(PrepareConfig()).encode())  # prepare's defaults shape the prepared clips
    digest.update(repr(settings or TrainSettings()).encode())
    digest.update(f"{torch.__version__} {whisper.__version__}".encode())
    return digest.hexdigest()[:16]


def _shifted(samples: np.ndarray, shift: int) -> np.ndarray:
    """Lead-in silence added (``shift`` > 0 samples) or cut (< 0)."""
    if shift >= 0:
        return np.concatenate([np.zeros(shift, np.float32), samples])
    return samples[-shift:]


def _as_prepared(samples: np.ndarray) -> np.ndarray:
    """A 16 kHz clip as prepare hands it to Whisper: resampled to 24 kHz, DC removed, silence trimmed,
    peak-normalised, written as 16-bit PCM, resampled back to 16 kHz (prepare's defaults). Whisper's
    log-mel keeps the level, so a model that only heard the raw clips mishears the prepared ones."""
    from cosyml.audio import resample
    from cosyml.config import PrepareConfig
    from cosyml.data import clean

    cfg = PrepareConfig()
    x = clean.remove_dc(resample(samples, 16000, cfg.sample_rate))
    trim = clean.trim_silence(
        x, cfg.sample_rate, cfg.trim_top_db, cfg.silence_floor_dbfs, cfg.trim_pad_s, cfg.min_keep_s
    )
    pcm = clean.to_pcm16(clean.normalise_peak(x[trim.start : trim.end], cfg.target_peak))
    return resample(pcm.astype(np.float32) / 32767.0, cfg.sample_rate, 16000).astype(np.float32)


def _augmented(clip: ToyClip, settings: TrainSettings, rng: random.Random) -> np.ndarray:
    """The raw clip or its prepared version (half the time each), with a little lead-in added or cut."""
    samples = clip.prepared if rng.random() < 0.5 else clip.samples
    shift = rng.randint(-int(settings.max_cut_s * 16000), int(settings.max_shift_s * 16000))
    return _shifted(samples, shift)


def _targets(clip: ToyClip, tokenizer) -> list[int]:
    """SOT prefix (as decoding builds it: sot, language, transcribe, notimestamps), text, eot."""
    from whisper.tokenizer import LANGUAGES

    language_token = tokenizer.sot + 1 + list(LANGUAGES).index(clip.language)
    # Whisper writes English with a leading space and Chinese without one.
    text = tokenizer.encode((" " if clip.language == "en" else "") + clip.text)
    return [tokenizer.sot, language_token, tokenizer.transcribe, tokenizer.no_timestamps, *text, tokenizer.eot]


def _encode_clips(
    model, mels: torch.Tensor, content: list[int], silence_sample: int = 0, rng: random.Random | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encoder(mels)`` for an encoder without attention blocks, computed cheaply.
    (B, n_mels, 3000) log-mel windows whose frames from ``content[b]`` on are all equal (silence) ->
    (features (B, S, width), key bias (B, S)) for cross-attention.

    Without blocks each output position sees only mel frames 2p-2..2p+2 (two k=3 convolutions, the second
    with stride 2), so the convolutions run over the clips' frames plus a margin ("head"); every position
    inside the silence gets the convolution of the constant silence frame; the last positions (where the
    convolution's zero padding reaches in) come from the window's own last frames. With
    ``silence_sample`` = 0 all 1500 positions are returned with bias 0: equal to ``model.encoder``
    (``tests/test_toy_whisper.py`` checks it). Otherwise only ``silence_sample`` random silence positions
    are kept, each with bias log(silence positions / kept): softmax over the kept keys is then an unbiased
    estimate of attention over all of them, at a fraction of the cost.
    """
    import torch.nn.functional as F

    encoder = model.encoder
    assert len(encoder.blocks) == 0, "only an encoder without attention blocks is local"

    def conv(x: torch.Tensor) -> torch.Tensor:  # (B, n_mels, T) -> (B, T // 2, width)
        return F.gelu(encoder.conv2(F.gelu(encoder.conv1(x)))).permute(0, 2, 1)

    n_frames, n_positions = mels.shape[-1], encoder.positional_embedding.shape[0]
    head_frames = min(n_frames, (max(content) + 16 + 1) // 2 * 2)  # even: whole positions
    n_head, n_tail = head_frames // 2 - 2, 4
    head = conv(mels[:, :, :head_frames])[:, :n_head]  # (B, H, width)
    silence = torch.stack(
        [conv(mels[b : b + 1, :, frames + 8 : frames + 24])[0, 4] for b, frames in enumerate(content)]
    )  # (B, width): the convolution of silence frames, one per clip (the floor depends on the clip)
    tail = conv(mels[:, :, n_frames - 16 :])[:, -n_tail:]  # (B, 4, width)
    middle = list(range(n_head, n_positions - n_tail))
    kept = (
        middle
        if not silence_sample or silence_sample >= len(middle)
        else sorted((rng or random).sample(middle, silence_sample))
    )
    positions = torch.tensor(list(range(n_head)) + kept + list(range(n_positions - n_tail, n_positions)))
    x = torch.cat([head, silence[:, None, :].expand(-1, len(kept), -1), tail], dim=1)
    features = encoder.ln_post(x + encoder.positional_embedding[positions])
    bias = torch.zeros(features.shape[:2])
    bias[:, n_head : n_head + len(kept)] = math.log(len(middle) / len(kept))
    return features, bias


def _decoder_hidden(model, tokens: torch.Tensor, audio_features: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
    """Whisper's ``TextDecoder.forward`` without the final projection onto the vocabulary, with a bias on
    the cross-attention logits: (B, T) tokens, (B, S, width) audio features, (B, S) bias -> (B, T, width)
    after the last layer norm. With bias 0 and all 1500 positions it equals whisper's own forward."""
    import torch.nn.functional as F

    decoder = model.decoder
    x = decoder.token_embedding(tokens) + decoder.positional_embedding[: tokens.shape[-1]]
    for block in decoder.blocks:
        x = x + block.attn(block.attn_ln(x), mask=decoder.mask)[0]
        attn = block.cross_attn
        q = attn.query(block.cross_attn_ln(x))
        k, v = attn.key(audio_features), attn.value(audio_features)
        q, k, v = (t.view(*t.shape[:2], attn.n_head, -1).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d)
        wv = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :])
        x = x + attn.out(wv.transpose(1, 2).flatten(start_dim=2))
        x = x + block.mlp(block.mlp_ln(x))
    return decoder.ln(x)


def train_toy_whisper(
    path: str | Path,
    corpus: Path = TOY_CORPUS,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train a tiny multilingual Whisper on the toy corpus and write it to ``path`` (openai-whisper format).

    Teacher-forced cross-entropy over the whole 51866-token vocabulary on the decoding sequence
    ``sot, lang, transcribe, notimestamps, text, eot`` (the language token too, so language detection
    works), on both windows ``transcribe`` builds (:func:`~cosyml.features.whisper_mel.whisper_windows`:
    the decode window and the language window) and with a random lead-in shift. Deterministic for a
    seed in one process on one torch version (the global RNG state is restored afterwards).
    """
    from whisper.tokenizer import get_tokenizer

    settings = settings or TrainSettings()
    say = log or (lambda m: print(m, file=sys.stderr))
    clips = toy_clips(corpus)
    tokenizer = get_tokenizer(True, num_languages=100, task="transcribe")
    targets = [_targets(c, tokenizer) for c in clips]
    threads = torch.get_num_threads()
    # One thread: these small ops gain nothing from two, and on a busy machine a second OpenMP thread
    # waiting for a core makes every step 20x slower (measured: 0.85 s vs 20 s per step).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            model = _fit(clips, targets, tokenizer.eot, settings, say)
    finally:
        torch.set_num_threads(threads)
    return _save(model, Path(path))


def _fit(clips: list[ToyClip], targets: list[list[int]], eot: int, settings: TrainSettings, say: Callable[[str], None]):
    """The training loop of :func:`train_toy_whisper`; returns the model in eval mode."""
    dims = _dims(128, settings.width, 0, settings.text_layers)  # no encoder blocks: see _encode_clips
    rng = random.Random(settings.seed)
    # Only the tokens of the targets ever get a row: every other row of the (tied) embedding is zero, so
    # its logit is exactly 0 and the full-vocabulary softmax equals a softmax over the used tokens plus one
    # "rest" logit of log(number of zero rows). Exact, and 50x cheaper than 51866 logits per position.
    used = torch.tensor(sorted({t for seq in targets for t in seq}))  # (U,) token ids
    index = torch.full((dims.n_vocab,), -1, dtype=torch.long)
    index[used] = torch.arange(len(used))
    rest_logit = math.log(dims.n_vocab - len(used))
    model = _new_model(dims, settings.seed)
    embedding = model.decoder.token_embedding.weight
    with torch.no_grad():
        kept = embedding[used] * settings.embedding_std  # N(0, std^2): small logits at the start
        embedding.zero_()
        embedding[used] = kept
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)  # zero rows stay zero

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 5 %
        if step < settings.warmup:
            return settings.lr * (step + 1) / settings.warmup
        done = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))

    order: list[int] = []
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            epoch = list(range(len(clips)))
            rng.shuffle(epoch)
            order += epoch
        batch, order = order[: settings.batch_size], order[settings.batch_size :]
        audio = [_augmented(clips[i], settings, rng) for i in batch]
        windows = [whisper_windows(a, 128) for a in audio]
        # both windows transcribe builds: the text is decoded on one, the language detected on the other
        mels = torch.stack([w.decode if rng.random() < 0.5 else w.language for w in windows])  # (B, 128, 3000)
        features, key_bias = _encode_clips(model, mels, [len(a) // 160 for a in audio], settings.silence_sample, rng)
        length = max(len(targets[i]) for i in batch)
        tokens = torch.full((len(batch), length), eot, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(batch), length - 1), dtype=torch.bool)  # (B, T-1): real next tokens
        for row, i in enumerate(batch):
            tokens[row, : len(targets[i])] = torch.tensor(targets[i])
            mask[row, : len(targets[i]) - 1] = True
        hidden = _decoder_hidden(model, tokens[:, :-1], features, key_bias)  # (B, T-1, width)
        logits = hidden[mask] @ embedding[used].T  # (N, U)
        logits = torch.cat([logits, logits.new_full((logits.shape[0], 1), rest_logit)], dim=1)
        loss = torch.nn.functional.cross_entropy(logits, index[tokens[:, 1:][mask]])
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 50 == 0 or step == settings.steps - 1:
            say(f"toy whisper: step {step + 1}/{settings.steps} loss {loss.item():.3f}")
    return model.eval()


def trained_toy_whisper(cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The trained toy Whisper checkpoint, trained on first use and cached as
    ``<cache_dir>/toy-whisper-<key>.pt`` (``key``: :func:`cache_key`); default folder
    ``~/.cache/cosyml/toy-whisper`` (``$COSYML_CACHE/toy-whisper``). Later calls return the cached file."""
    import fcntl

    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    path = folder / f"toy-whisper-{cache_key()}.pt"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "toy-whisper.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # parallel test workers wait for one training, not start many
        if not path.is_file():  # another process trained it while we waited
            train_toy_whisper(path, log=log)
    return path


def install_trained_toy_whisper(model_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Put the trained toy Whisper (:func:`trained_toy_whisper`) into a kit as ``<model_dir>/whisper.pt``."""
    from cosyml.fileio import atomic_write_bytes

    source = trained_toy_whisper(cache_dir)
    return atomic_write_bytes(Path(model_dir) / "whisper.pt", source.read_bytes())
