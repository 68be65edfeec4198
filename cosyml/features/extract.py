"""The ``extract`` stage: CAM++ embeddings and speech tokens for every prepared clip.

For each split directory (``train``, ``dev``) holding ``wav.scp`` and ``utt2spk`` it writes, in
upstream's formats (``torch.save`` of plain dicts, loadable with ``weights_only=True``):

- ``utt2embedding.pt``: ``{utt: list[192 float]}``, the raw CAM++ output (not normalised),
- ``spk2embedding.pt``: ``{spk: list[192 float]}``, the mean of that speaker's raw vectors, without the
  clips the speaker check flags (``speaker_outlier``),
- ``utt2speech_token.pt``: ``{utt: list[int]}``; ``[]`` for clips over 30 s (as upstream),
- ``extract_report.json``: per utterance the flow mel frames floor(N24/480), the token count and the
  count both are trimmed to for training, plus the clips without tokens and the model fingerprints.

- ``excluded_utts``: kaldi-style ``<utt> <reason>`` lines of the clips ``cosyml shards`` leaves out
  (the speaker outliers when the check's ``drop`` is on; empty otherwise).

At the output root, once every split is complete, ``speaker_check.json`` (:data:`SPEAKER_REPORT`): the
speaker check of :mod:`cosyml.features.speaker_check` over all splits together, per clip its cosine
similarity to its speaker's centroid, the outliers with their wav, per speaker the counts. The check
reads the embeddings back and runs on every call (it costs milliseconds), so a change of its thresholds
takes effect without recomputing features.

Each clip is read and resampled to 16 kHz once and feeds both models. Work is checkpointed to
``.extract_cache.pt`` (atomic rename) every ``checkpoint_every`` clips; a rerun continues from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Set
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosyml.audio import read_audio, resample, to_mono
from cosyml.data.kaldi import read_kaldi_map, resolve_wav_path
from cosyml.errors import InputError, ModelDirError
from cosyml.features.campplus import SpeakerEncoder
from cosyml.features.config import ExtractConfig
from cosyml.features.fbank import FRAME_LENGTH, campplus_features
from cosyml.features.speaker_check import REASON, SpeakerCheckConfig, SpeakerCheckResult, check_speakers
from cosyml.features.speech_tokens import (
    MAX_TOKEN_AUDIO_S,
    SpeechTokenizer,
    flow_mel_frames,
    usable_token_count,
)
from cosyml.features.whisper_mel import log_mel
from cosyml.fileio import atomic_torch_save, atomic_write_text, output_lock
from cosyml.models.keys import CAMPPLUS_NAME, SPEECH_TOKENIZER_NAME
from cosyml.models.modeldir import detect_version

SPLITS = ("train", "dev")
CACHE_FILE = ".extract_cache.pt"
INFO_FILE = "extract_info.json"
REPORT_FILE = "extract_report.json"
OUTPUT_FILES = ("utt2embedding.pt", "spk2embedding.pt", "utt2speech_token.pt")
SPEAKER_REPORT = "speaker_check.json"
EXCLUDED_FILE = "excluded_utts"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class FrontendModels:
    """The two ONNX files of a model directory and the model version they belong to."""

    campplus: Path
    speech_tokenizer: Path
    version: str  # "cosyvoice2" or "cosyvoice3"


def find_frontend_models(model_dir: str | Path) -> FrontendModels:
    """Locate ``campplus.onnx`` and the speech tokenizer of a model directory, or stop with one line.

    The version comes from :func:`cosyml.models.modeldir.detect_version` (the package's one detector).
    """
    model_dir = Path(model_dir)
    hint = (
        "point --model-dir at a CosyVoice2-0.5B or Fun-CosyVoice3-0.5B directory "
        "(or create a tiny one with `cosyml kit DIR`)"
    )
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found; {hint}")
    version = "cosyvoice3" if detect_version(model_dir, default="v2") == "v3" else "cosyvoice2"
    tokenizer = model_dir / SPEECH_TOKENIZER_NAME["v3" if version == "cosyvoice3" else "v2"]
    for path in (model_dir / CAMPPLUS_NAME, tokenizer):
        if not path.is_file() or path.stat().st_size == 0:
            raise ModelDirError(f"{path}: missing or empty; {hint}")
    return FrontendModels(model_dir / CAMPPLUS_NAME, tokenizer, version)


@dataclass
class SplitResult:
    """What extraction did for one split."""

    split: str
    num_utts: int
    num_embeddings: int
    num_with_tokens: int
    no_tokens: list[str] = field(default_factory=list)  # clips over 30 s
    num_token_mel_mismatch: int = 0  # clips where tokens != flow mel frames // 2 (trimmed in training)
    num_resumed: int = 0  # clips taken from the resume cache
    audio_seconds: float = 0.0
    seconds: float = 0.0
    complete: bool = True
    skipped_up_to_date: bool = False


@dataclass
class ExtractResult:
    """Typed result of :func:`extract`: per-split counts, timings and the models used."""

    model_dir: Path
    models: FrontendModels
    splits: list[SplitResult]
    seconds: float
    campplus_batches_padded: bool
    tokenizer_batches_padded: bool
    speaker_check: SpeakerCheckResult | None = None  # None until every split is complete
    speaker_report: Path | None = None  # speaker_check.json
    excluded: dict[str, int] = field(default_factory=dict)  # split -> clips listed in excluded_utts

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.splits)

    def check_counts(self) -> dict[str, float]:
        """Speaker-check counts (the DVC metrics and MLflow metrics share them)."""
        if self.speaker_check is None:
            return {}
        return {
            "speaker_outliers": len(self.speaker_check.outliers),
            "speaker_outliers_dropped": sum(self.excluded.values()),
            "speakers_unchecked": len(self.speaker_check.unchecked),
        }

    def dvc_metrics(self) -> dict[str, float]:
        """Counts only (no timings), for ``dvc metrics diff``: a data change that adds outliers shows."""
        out: dict[str, float] = dict(self.check_counts())
        for s in self.splits:
            out.update(
                {
                    f"{s.split}.num_utts": s.num_utts,
                    f"{s.split}.num_with_tokens": s.num_with_tokens,
                    f"{s.split}.num_no_tokens": len(s.no_tokens),
                    f"{s.split}.num_excluded": self.excluded.get(s.split, 0),
                }
            )
        return out

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"extract_seconds": self.seconds, **self.check_counts()}
        for s in self.splits:
            out.update(
                {
                    f"{s.split}.num_utts": s.num_utts,
                    f"{s.split}.num_embeddings": s.num_embeddings,
                    f"{s.split}.num_with_tokens": s.num_with_tokens,
                    f"{s.split}.num_no_tokens": len(s.no_tokens),
                    f"{s.split}.num_token_mel_mismatch": s.num_token_mel_mismatch,
                    f"{s.split}.num_resumed": s.num_resumed,
                    f"{s.split}.audio_seconds": s.audio_seconds,
                    f"{s.split}.seconds": s.seconds,
                    f"{s.split}.realtime_factor": s.seconds / s.audio_seconds if s.audio_seconds else 0.0,
                }
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class _Clip:
    """One decoded clip and its two model inputs (the waveform itself is not kept)."""

    utt: str
    fbank: np.ndarray  # (T, 80) Kaldi fbank + CMN, 100 frames/s
    mel: np.ndarray | None  # (128, T) Whisper log-mel; None for clips over 30 s (no tokens)
    seconds: float
    flow_frames: int
    embedding: np.ndarray | None = None  # (192,) when computed in the worker (unbatchable CAM++)
    tokens: list[int] | None = None  # when computed in the worker (CPU: batching buys nothing)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _audio_digest(utts: list[str], utt2wav: dict[str, str], split_dir: Path) -> str:
    """sha256 over every clip's id and file content (a missing file counts as absent, reported later)."""
    digest = hashlib.sha256()
    for utt in utts:
        path = resolve_wav_path(utt2wav[utt], split_dir)
        digest.update(utt.encode() + b"\0" + (_sha256(path).encode() if path.is_file() else b"-") + b"\n")
    return digest.hexdigest()


def _load_clip(utt: str, path: Path) -> _Clip:
    """Read, mix to mono, resample to 16 kHz once, and compute both model inputs."""
    audio = read_audio(path)
    mono = to_mono(audio.samples)
    wav16 = resample(mono, audio.sample_rate, 16000)
    if len(wav16) < FRAME_LENGTH:
        raise InputError(f"{path}: clip '{utt}' is shorter than 25 ms; remove it or rerun `cosyml prepare`")
    mel = log_mel(wav16) if len(wav16) / 16000 <= MAX_TOKEN_AUDIO_S else None
    fbank = campplus_features([wav16])[0]
    return _Clip(utt, fbank, mel, audio.duration_s, flow_mel_frames(len(mono), audio.sample_rate))


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Feature code runs in several worker threads at once: one torch thread each avoids oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _save_atomic(obj: Any, path: Path) -> None:
    atomic_torch_save(obj, path)


def _write_json_atomic(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def _tokens_per_clip(token_batches: str, provider: str) -> bool:
    """Whether each worker tokenizes its own clip right after computing the features.

    On the CPU a padded batch costs as much as its clips one by one (measured in ``bench/extract.py``),
    while collecting a batch leaves cores idle at its edges; on CUDA batches are where the speed is.
    """
    if token_batches not in ("auto", "on", "off"):
        raise InputError(f"extract.token_batches: '{token_batches}' is not one of auto, on, off")
    if token_batches == "auto":
        return provider == "CPUExecutionProvider"
    return token_batches == "off"


class FrontendExtractor:
    """Both ONNX models and a worker pool, turning clips into (embedding, tokens). No tracking here.

    Every unit of work (decoding + features of one clip, one model batch) is single-threaded and runs
    on ``workers`` threads: robust on shared CPUs, where multi-threaded operators stall waiting for
    descheduled threads. A CAM++ model that pools over padding (the official one) can only batch equal
    lengths, which real clips rarely share, so its embedding is computed with the clip's features. The
    speech tokens are too on the CPU (see :func:`_tokens_per_clip`): each clip is then one task from
    file to outputs, and the cores stay busy until the last clip.
    """

    def __init__(self, model_dir: str | Path, config: ExtractConfig | None = None) -> None:
        self.config = config or ExtractConfig()
        self.models = find_frontend_models(model_dir)
        threads = self.config.num_threads or 1
        self.encoder = SpeakerEncoder(self.models.campplus, self.config.device, threads)
        self.tokenizer = SpeechTokenizer(self.models.speech_tokenizer, self.config.device, threads)
        self.workers = self.config.workers or os.cpu_count() or 1
        self.inline_tokens = _tokens_per_clip(self.config.token_batches, self.tokenizer.session.get_providers()[0])
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="extract")
        self.fingerprint = {
            "campplus": self.models.campplus.name,
            "campplus_sha256": _sha256(self.models.campplus),
            "speech_tokenizer": self.models.speech_tokenizer.name,
            "speech_tokenizer_sha256": _sha256(self.models.speech_tokenizer),
        }

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> FrontendExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, utt: str, path: Path) -> _Clip:
        """Worker part: decode + features (+ the embedding when CAM++ batches cannot be padded)."""
        clip = _load_clip(utt, path)
        if not self.encoder.padding_exact:
            clip.embedding = self.encoder.embed([clip.fbank])[0]
        if self.inline_tokens:
            clip.tokens = self.tokenizer.tokenize([clip.mel])[0] if clip.mel is not None else []
            clip.mel = None
        return clip

    def process(self, clips: list[_Clip]) -> tuple[np.ndarray, list[list[int]]]:
        """Embeddings (B, 192) and token lists (``[]`` for clips over 30 s) for prepared ``clips``."""
        batch = max(1, self.config.batch_size)
        with_tokens = [i for i, c in enumerate(clips) if c.mel is not None and c.tokens is None]
        mels = [clips[i].mel for i in with_tokens]
        token_lists = self.tokenizer.tokenize(mels, batch, executor=self.pool)  # type: ignore[arg-type]  # with_tokens selects clips whose mel is not None; the comprehension does not narrow
        if self.encoder.padding_exact:
            embeddings = self.encoder.embed([c.fbank for c in clips], batch, executor=self.pool)
        else:
            embeddings = np.stack([c.embedding for c in clips])  # type: ignore[misc]  # without exact padding every clip's embedding was computed in prepare (not None)
        tokens: list[list[int]] = [c.tokens or [] for c in clips]
        for i, ids in zip(with_tokens, token_lists, strict=True):
            tokens[i] = ids
        return embeddings, tokens


def _read_split(split_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    wav_scp, utt2spk_file = split_dir / "wav.scp", split_dir / "utt2spk"
    for path in (wav_scp, utt2spk_file):
        if not path.is_file():
            raise InputError(f"{path}: not found; run `cosyml prepare` first (it writes the kaldi files)")
    utt2wav, utt2spk = read_kaldi_map(wav_scp), read_kaldi_map(utt2spk_file)
    missing = [u for u in utt2wav if u not in utt2spk]
    if missing:
        raise InputError(f"{utt2spk_file}: no speaker for utterance '{missing[0]}'; rerun `cosyml prepare`")
    if not utt2wav:
        raise InputError(f"{wav_scp}: no utterances; rerun `cosyml prepare`")
    return utt2wav, utt2spk


def _load_cache(path: Path, fingerprint: dict[str, str]) -> dict[str, Any]:
    empty: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "fingerprint": fingerprint,
        "utt2embedding": {},
        "utt2speech_token": {},
        "utt2info": {},
    }
    if not path.is_file():
        return empty
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start the split again rather than fail
        return empty
    if cache.get("format") != _CACHE_FORMAT or cache.get("fingerprint") != fingerprint:
        return empty
    return cache


def _outputs_up_to_date(split_dir: Path, utts: list[str], fingerprint: dict[str, str]) -> bool:
    report = split_dir / REPORT_FILE
    if not report.is_file() or not all((split_dir / f).is_file() for f in OUTPUT_FILES):
        return False
    try:
        info = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("fingerprint") == fingerprint and info.get("utts") == len(utts) and info.get("complete")


def _clips(
    items: list[tuple[str, Path]], prepare: Callable[[str, Path], _Clip], pool: Executor, ahead: int
) -> Iterator[_Clip]:
    """Prepare clips on ``pool``, yielded in order, at most ``ahead`` clips in flight."""
    futures = [pool.submit(prepare, u, p) for u, p in items[:ahead]]
    next_item = len(futures)
    for k in range(len(items)):
        clip = futures[k].result()
        futures[k] = None  # type: ignore[call-overload]  # release finished features early: a consumed slot becomes None in a list of Futures
        if next_item < len(items):
            futures.append(pool.submit(prepare, *items[next_item]))
            next_item += 1
        yield clip


def extract_split(
    split_dir: str | Path,
    extractor: FrontendExtractor,
    stop_after: int | None = None,
    progress: bool = True,
    out_dir: str | Path | None = None,
) -> SplitResult:
    """Extract one split directory (see the module docstring). ``stop_after`` caps new clips (testing).

    Outputs, the resume cache and the report go to ``out_dir`` (default: ``split_dir`` itself).
    """
    from tqdm import tqdm

    split_dir = Path(split_dir)
    out = Path(out_dir) if out_dir is not None else split_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = extractor.config
    utt2wav, utt2spk = _read_split(split_dir)
    utts = list(utt2wav)
    # Features depend on the audio itself, not only on the list: re-preparing with other settings
    # rewrites the wavs under the same names, so their bytes are part of the fingerprint.
    fingerprint = {
        **extractor.fingerprint,
        "wav_scp_sha256": _sha256(split_dir / "wav.scp"),
        "wavs_sha256": _audio_digest(utts, utt2wav, split_dir),
    }
    if _outputs_up_to_date(out, utts, fingerprint):
        report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
        no_tokens = list(report.get("no_tokens_over_30s", []))
        return SplitResult(
            split_dir.name,
            len(utts),
            len(utts),
            len(utts) - len(no_tokens),
            no_tokens=no_tokens,
            num_token_mel_mismatch=int(report.get("token_mel_mismatch", 0)),
            num_resumed=len(utts),
            skipped_up_to_date=True,
        )

    cache_path = out / CACHE_FILE
    cache = _load_cache(cache_path, fingerprint)
    done = set(cache["utt2embedding"])
    resumed = len(done & set(utts))
    todo = [u for u in utts if u not in done]
    if stop_after is not None:
        todo = todo[:stop_after]
    items = [(u, resolve_wav_path(utt2wav[u], split_dir)) for u in todo]

    window = max(1, cfg.batch_size) * extractor.workers  # clips sorted by length and run together
    every = max(1, cfg.checkpoint_every)
    bar = tqdm(total=len(utts), initial=resumed, desc=f"extract {split_dir.name}", unit="utt", disable=not progress)
    pending: list[_Clip] = []
    unsaved = 0

    def run_models() -> None:
        nonlocal unsaved
        embeddings, tokens = extractor.process(pending)
        for clip, vec, ids in zip(pending, embeddings, tokens, strict=True):
            cache["utt2embedding"][clip.utt] = vec.tolist()
            cache["utt2speech_token"][clip.utt] = ids
            cache["utt2info"][clip.utt] = [clip.seconds, clip.flow_frames]
        unsaved += len(pending)
        bar.update(len(pending))
        pending.clear()
        if unsaved >= every:
            _save_atomic(cache, cache_path)
            unsaved = 0

    with _torch_threads(1):
        for clip in _clips(items, extractor.prepare, extractor.pool, ahead=window + 2 * extractor.workers):
            pending.append(clip)
            if len(pending) >= window:
                run_models()
        if pending:
            run_models()
    if unsaved:
        _save_atomic(cache, cache_path)
    bar.close()

    complete = all(u in cache["utt2embedding"] for u in utts)
    result = SplitResult(
        split=split_dir.name,
        num_utts=len(utts),
        num_embeddings=sum(u in cache["utt2embedding"] for u in utts),
        num_with_tokens=sum(bool(cache["utt2speech_token"].get(u)) for u in utts),
        num_resumed=resumed,
        complete=complete,
    )
    if complete:
        _write_outputs(out, utts, utt2spk, cache, fingerprint, result)
        cache_path.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - started
    return result


def speaker_means(
    utt2embedding: dict[str, list[float]], utt2spk: dict[str, str], utts: list[str], leave_out: Set[str] = frozenset()
) -> dict[str, list[float]]:
    """``{spk: mean of its raw (192,) vectors}`` over ``utts``, without the clips in ``leave_out``; a
    speaker whose every clip is left out keeps the mean of all of them (the voice needs one)."""
    by_speaker: dict[str, list[str]] = {}
    for u in utts:
        by_speaker.setdefault(utt2spk[u], []).append(u)
    means: dict[str, list[float]] = {}
    for spk, mine in by_speaker.items():
        kept = [u for u in mine if u not in leave_out] or mine
        means[spk] = torch.tensor([utt2embedding[u] for u in kept]).mean(dim=0).tolist()
    return means


def _write_outputs(
    split_dir: Path,
    utts: list[str],
    utt2spk: dict[str, str],
    cache: dict[str, Any],
    fingerprint: dict[str, str],
    result: SplitResult,
) -> None:
    utt2embedding = {u: cache["utt2embedding"][u] for u in utts}
    utt2speech_token = {u: cache["utt2speech_token"][u] for u in utts}
    spk2embedding = speaker_means(utt2embedding, utt2spk, utts)

    per_utt: dict[str, dict[str, float | int]] = {}
    for u in utts:
        seconds, frames = cache["utt2info"][u]
        count = len(utt2speech_token[u])
        per_utt[u] = {
            "seconds": round(float(seconds), 4),
            "flow_mel_frames": int(frames),
            "tokens": count,
            "usable_tokens": usable_token_count(int(frames), count),
        }
    result.no_tokens = [u for u in utts if not utt2speech_token[u]]
    result.num_token_mel_mismatch = sum(
        1 for u in utts if utt2speech_token[u] and per_utt[u]["tokens"] != int(per_utt[u]["flow_mel_frames"]) // 2
    )
    result.audio_seconds = float(sum(float(v["seconds"]) for v in per_utt.values()))
    for name, obj in zip(OUTPUT_FILES, (utt2embedding, spk2embedding, utt2speech_token), strict=True):
        _save_atomic(obj, split_dir / name)
    report = {
        "fingerprint": fingerprint,
        "utts": len(utts),
        "complete": True,
        "no_tokens_over_30s": result.no_tokens,
        "token_mel_mismatch": result.num_token_mel_mismatch,
        "utterances": per_utt,
    }
    _write_json_atomic(report, split_dir / REPORT_FILE)


def check_split_speakers(
    data_dir: Path, out_root: Path, splits: list[str], config: SpeakerCheckConfig
) -> tuple[SpeakerCheckResult, Path, dict[str, int]]:
    """The speaker check over ``splits`` together; rewrites each split's ``spk2embedding.pt`` without
    the outliers and its ``excluded_utts``, writes ``speaker_check.json``. Returns the result, the report
    path and the excluded count per split."""
    utt2embedding: dict[str, list[float]] = {}
    utt2spk: dict[str, str] = {}
    utt2split: dict[str, str] = {}
    utt2wav: dict[str, str] = {}
    for split in splits:
        wavs, speakers = _read_split(data_dir / split)
        vectors = torch.load(out_root / split / "utt2embedding.pt", map_location="cpu", weights_only=True)
        for utt in wavs:
            utt2embedding[utt] = vectors[utt]
            utt2spk[utt] = speakers[utt]
            utt2split[utt] = split
            utt2wav[utt] = str(resolve_wav_path(wavs[utt], data_dir / split))
    result = check_speakers(utt2embedding, utt2spk, config)
    outliers = {c.utt for c in result.outliers}
    excluded: dict[str, int] = {}
    for split in splits:
        utts = [u for u in utt2embedding if utt2split[u] == split]
        _save_atomic(speaker_means(utt2embedding, utt2spk, utts, outliers), out_root / split / "spk2embedding.pt")
        dropped = [u for u in utts if u in outliers] if config.drop else []
        atomic_write_text(out_root / split / EXCLUDED_FILE, "".join(f"{u} {REASON}\n" for u in dropped))
        excluded[split] = len(dropped)
    report = {
        "config": asdict(config),
        "reason": REASON,
        "dropped_from_shards": config.drop,
        "speakers": [asdict(s) for s in result.speakers],
        "outliers": [
            {
                "utt": c.utt,
                "speaker": c.speaker,
                "split": utt2split[c.utt],
                "similarity": c.similarity,
                "z": c.z,
                "reason": REASON,
                "wav": utt2wav[c.utt],
            }
            for c in result.outliers
        ],
        "clips": {
            c.utt: {"split": utt2split[c.utt], "similarity": c.similarity, "z": c.z, "outlier": c.outlier}
            for c in result.clips
        },
    }
    path = out_root / SPEAKER_REPORT
    _write_json_atomic(report, path)
    return result, path, excluded


def extract(
    data_dir: str | Path,
    model_dir: str | Path,
    config: ExtractConfig | None = None,
    splits: tuple[str, ...] = SPLITS,
    stop_after: int | None = None,
    progress: bool = True,
    output_dir: str | Path | None = None,
    speaker_check: SpeakerCheckConfig | None = None,
) -> ExtractResult:
    """Run extraction on every split directory of ``data_dir`` that has a ``wav.scp``.

    Feature files go to ``output_dir/<split>`` (default: ``data_dir/<split>``, upstream's layout); a
    separate folder lets the prepare and extract DVC stages own disjoint outputs. ``extract_info.json``
    at the output root records which speech tokenizer made the tokens (shards carry it on). When every
    split is complete, the speaker check runs (``speaker_check``; default thresholds when None).
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    find_frontend_models(model_dir)  # a wrong model directory is reported before anything else
    # An empty split (a tiny corpus can have no dev clip: the split is per id, without a top-up) is skipped.
    present = [s for s in splits if (data_dir / s / "wav.scp").is_file() and (data_dir / s / "wav.scp").stat().st_size]
    if not present:
        raise InputError(f"{data_dir}: no {'/'.join(splits)} split with a wav.scp; run `cosyml prepare` first")
    out_root = Path(output_dir) if output_dir is not None else data_dir
    # One writer per output folder (a second extract into it stops with one line naming the first).
    with output_lock(out_root, "cosyml extract"), FrontendExtractor(model_dir, config) as extractor:
        results = [extract_split(data_dir / s, extractor, stop_after, progress, out_root / s) for s in present]
        _write_json_atomic(
            {"speech_tokenizer": extractor.models.speech_tokenizer.name, "model_version": extractor.models.version},
            out_root / INFO_FILE,
        )
        checked = None
        if all(r.complete for r in results):
            checked = check_split_speakers(data_dir, out_root, present, speaker_check or SpeakerCheckConfig())
        else:  # a check of an earlier run would describe other features: none until the next complete run
            (out_root / SPEAKER_REPORT).unlink(missing_ok=True)
            for split in present:
                (out_root / split / EXCLUDED_FILE).unlink(missing_ok=True)
    return ExtractResult(
        model_dir=Path(model_dir),
        models=extractor.models,
        splits=results,
        seconds=time.perf_counter() - started,
        campplus_batches_padded=extractor.encoder.padding_exact,
        tokenizer_batches_padded=extractor.tokenizer.padding_exact,
        speaker_check=checked[0] if checked else None,
        speaker_report=checked[1] if checked else None,
        excluded=checked[2] if checked else {},
    )
