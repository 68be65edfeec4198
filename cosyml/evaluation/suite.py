"""The evaluation suite: synthesise every test text with every candidate, score, and summarise.

    config = SuiteConfig(model_dir, speaker="toy", whisper_model="whisper.pt", evaluate=EvaluateConfig(...))
    result = run_suite(config, candidates, eval_dir="exp/eval", data_dir="data/prepared")
    write_outputs(result)   # cosyml.evaluation.report: candidates.json, metrics.json, plots, report.html

The commands build the :class:`SuiteConfig` from params (``cosyml.commands.evaluate.suite_config``);
``cosyml tune`` gives each trial its own :class:`~cosyml.models.generation.SamplingParams`.

Per candidate (one folder ``<eval_dir>/<slug>/``):

1. **Synthesis.** Every usable test item becomes one :class:`~cosyml.synth.request.SynthRequest`: the
   mode follows the item (``instruct`` file -> instruct; no prompt wav -> sft with the speaker's
   embedding; a ``cross_lingual`` subset or a prompt without transcript -> cross_lingual; else
   zero_shot). Seeds depend only on ``synth_seed`` and the utterance id, so every candidate
   gets the same seeds and texts. Audio goes to ``<slug>/<subset>/wavs/<utt>.wav``.
2. **Scoring** with :func:`cosyml.evaluation.score.score_test_set`: Whisper CER/WER and SS_campplus.

Caching: ``<slug>/synth.json`` records, per utterance, a hash of everything the audio depends on (the
weight files, every other model-directory file synthesis reads (:func:`model_fingerprint`: yamls,
hift.pt, ONNX front ends, tokenizer), the text, prompt audio, speaker file, seed, sampling parameters
and token caps). A rerun synthesises only utterances whose hash changed or whose wav is gone, and loads
no model when nothing did. Whisper transcripts (``<slug>/asr.json``) and CAM++ embeddings
(``<slug>/embeddings.npz``) are keyed by a hash of the audio samples and of the model file and
settings, so unchanged audio is never transcribed or embedded twice. Files up to 64 MiB are identified
by content (sha1), larger ones (an official 2 GB ``llm.pt``) by size and mtime.

Bad input never stops the grid: a test item that cannot be scored is listed with its reason (see
:mod:`cosyml.evaluation.testset`); an utterance whose synthesis fails scores as missing (error 1.0,
SS 0) and its error is kept; a candidate whose weights are missing or do not load is reported with the
error and the others are scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cosyml.errors import CosymlError, InputError
from cosyml.evaluation.asr import Hypothesis
from cosyml.evaluation.candidates import BASE, PARTS, Candidate, weight_file
from cosyml.evaluation.config import EvaluateConfig
from cosyml.evaluation.metrics import bootstrap_mean_ci, share_above
from cosyml.evaluation.score import EvalReport, Transcriber, UtteranceScore, score_test_set, write_report
from cosyml.evaluation.testset import ItemProblem, TestItem, TestSubset
from cosyml.fileio import write_if_changed
from cosyml.models import keys
from cosyml.models.keys import CAMPPLUS_NAME, YAML_NAME

if TYPE_CHECKING:
    from cosyml.models.generation import SamplingParams

CACHE_VERSION = 1
HASH_CONTENT_LIMIT = 64 * 1024 * 1024  # bytes: smaller files are identified by content, larger by size+mtime
SFT_SUBSET = "sft"
SYNTH_CHUNK = 64  # requests handed to the engine at once (their audio is held until the call returns)


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SuiteConfig:
    """What one :func:`run_suite` call reads; the commands build it from params.

    ``evaluate`` gives the test sets, the Whisper/CAM++ settings, the synthesis seed, batch size and token
    caps and the scoring limits; its ``top_p``/``top_k``/``win_size``/``tau_r`` are not read here: the
    sampling of every utterance is ``sampling`` alone (``cosyml evaluate`` builds it from those fields).
    """

    model_dir: Path  # base model directory in the official layout (hift, front ends, base weights)
    speaker: str  # the target speaker's name: picks its embedding in speaker_file, names the results
    whisper_model: str  # local openai-whisper checkpoint (.pt) that transcribes the outputs; "" = none given
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sampling: SamplingParams | None = None  # RAS sampling of every utterance; None = the model yaml's values
    speaker_file: str | Path | None = None  # spk2embedding.pt / spk2info.pt; None = <model_dir>/spk2info.pt


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class MetricSummary:
    """The numbers ``candidates.json`` carries per candidate and per subset.

    ``cer``: mean per-utterance error (CER for zh/ja/ko/yue, WER otherwise), the CV3 / seed-tts-eval
    headline, pooled over the utterances it covers, missing outputs counted as 1.0; ``ss``: mean
    SS_campplus (missing outputs 0); CIs are percentile bootstrap over utterances; ``n`` utterances
    scored or missing; ``missing`` of them without usable audio; ``over_50`` share with error > 0.5.
    None where nothing was scored.
    """

    cer: float | None
    cer_ci: tuple[float, float] | None
    ss: float | None
    ss_ci: tuple[float, float] | None
    n: int
    missing: int
    over_50: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "cer": _finite(self.cer),
            "cer_ci": _pair(self.cer_ci),
            "ss": _finite(self.ss),
            "ss_ci": _pair(self.ss_ci),
            "n": self.n,
            "missing": self.missing,
            "over_50": _finite(self.over_50),
        }


@dataclass(frozen=True)
class SynthFailure:
    """An utterance whose synthesis failed (it scores as missing)."""

    subset: str
    utt: str
    error: str


@dataclass
class CandidateResult:
    """What one candidate produced. ``error`` set: the candidate could not be evaluated at all."""

    candidate: Candidate
    folder: Path
    error: str | None = None
    report: EvalReport | None = None
    summary: MetricSummary | None = None
    subsets: dict[str, MetricSummary] = field(default_factory=dict)
    synth_failures: list[SynthFailure] = field(default_factory=list)
    synthesized: int = 0  # utterances synthesised in this run
    reused: int = 0  # utterances whose cached audio was still valid
    asr_computed: int = 0  # Whisper transcriptions run in this run
    asr_reused: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.summary is not None

    def output_wav(self, subset: str, utt: str) -> Path:
        return self.folder / subset / "wavs" / f"{utt}.wav"


@dataclass
class SuiteResult:
    """Everything one suite run produced (the report writers read only this)."""

    eval_dir: Path
    speaker: str
    model_dir: Path
    tiny_kit: bool
    subsets: list[TestSubset]
    candidates: list[CandidateResult]
    settings: dict[str, Any]
    engine_loaded: bool = False
    # per part, the training's per-epoch probe history (cosyml.train.probe.read_history), for the report's curves
    probe_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def skipped(self) -> list[ItemProblem]:
        return [p for s in self.subsets for p in s.problems]

    @property
    def scored(self) -> list[CandidateResult]:
        return [c for c in self.candidates if c.ok]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _pair(value: tuple[float, float] | None) -> list[float] | None:
    return [float(value[0]), float(value[1])] if value is not None else None


def summarize_rows(rows: Sequence[UtteranceScore], config: EvaluateConfig) -> MetricSummary:
    """:class:`MetricSummary` of ``rows`` (pooled over whatever subsets they come from)."""
    errors = [r.error for r in rows]
    ss_values = [r.ss for r in rows if r.ss is not None]
    ci: dict[str, Any] = {"resamples": config.bootstrap_resamples, "level": config.ci_level, "seed": config.seed}
    cer_ci = bootstrap_mean_ci(errors, **ci) if errors else None
    ss_ci = bootstrap_mean_ci(ss_values, **ci) if ss_values else None
    return MetricSummary(
        cer=float(np.mean(errors)) if errors else None,
        cer_ci=(cer_ci.low, cer_ci.high) if cer_ci else None,
        ss=float(np.mean(ss_values)) if ss_values else None,
        ss_ci=(ss_ci.low, ss_ci.high) if ss_ci else None,
        n=len(rows),
        missing=sum(r.status == "missing" for r in rows),
        over_50=share_above(errors, 0.5) if errors else None,
    )


# ------------------------------------------------------------------------------------------ hashing


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a file for the caches: content sha1 up to 64 MiB, else size + mtime (ns)."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size <= HASH_CONTENT_LIMIT:
        return {"size": stat.st_size, "sha1": hashlib.sha1(path.read_bytes()).hexdigest()}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """:func:`file_fingerprint` of every model-directory file the synthesised audio depends on, other than
    the candidate's ``llm.pt``/``flow.pt`` (fingerprinted per candidate): both version yamls, hift.pt,
    the ONNX front ends (CAM++ for prompt embeddings, the speech tokenizers), spk2info.pt and every file
    of the Qwen tokenizer folder. Keyed by relative name; absent files are simply not listed, so adding
    one (a v3 yaml next to a v2 one) also changes the key."""
    names = [
        *keys.YAML_NAME.values(),
        keys.WEIGHT_FILE["hift"],
        keys.CAMPPLUS_NAME,
        keys.SPK2INFO_NAME,
        *keys.SPEECH_TOKENIZER_NAME.values(),
        *keys.SPEECH_TOKENIZER_BATCH_NAME.values(),
    ]
    out = {name: file_fingerprint(model_dir / name) for name in names if (model_dir / name).is_file()}
    qwen = model_dir / keys.QWEN_DIR_NAME
    if qwen.is_dir():
        for path in sorted(p for p in qwen.rglob("*") if p.is_file()):
            out[path.relative_to(model_dir).as_posix()] = file_fingerprint(path)
    return out


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _audio_digest(wave: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------ requests


def utterance_seed(base_seed: int, subset: str, utt: str) -> int:
    """The seed of one utterance: the same for every candidate and independent of the other utterances."""
    return (base_seed + zlib.crc32(f"{subset}/{utt}".encode())) % (2**31)


def synthesis_mode(subset: str, item: TestItem) -> str:
    """The request's own mode (:func:`infer_mode`), except that a cross-lingual subset's prompt transcript
    is never spoken into the LLM (CV3-Eval's cross-lingual task)."""
    from cosyml.synth.request import infer_mode

    mode = infer_mode(item.instruct, item.prompt_wav, item.prompt_text)
    if mode == "zero_shot" and "cross_lingual" in subset.split("/")[0]:
        return "cross_lingual"
    return mode


@dataclass(frozen=True)
class SpeakerSource:
    """Where the target speaker's embedding comes from (sft synthesis and the sft subset's SS)."""

    name: str | None  # speaker name to pick (None: the file's only speaker)
    speaker_file: Path | None  # None: the model directory's spk2info.pt
    embedding: np.ndarray  # (192,) mean x-vector


def find_speaker(model_dir: Path, speaker: str, speaker_file: str | Path | None) -> SpeakerSource | str:
    """The speaker's embedding from ``speaker_file`` (spk2embedding.pt / spk2info.pt), else from
    ``<model_dir>/spk2info.pt``; a one-line reason (str) when neither has it."""
    from cosyml.synth.frontend import load_speaker_file, pick_speaker

    reasons: list[str] = []
    sources = [(Path(speaker_file), True)] if speaker_file else []
    sources.append((model_dir / "spk2info.pt", False))
    for path, given in sources:
        if not path.is_file():
            reasons.append(f"{path} not found")
            continue
        try:
            speakers = load_speaker_file(path)
            # a given file with one speaker under another name is still that speaker's file
            name = speaker if speaker in speakers or not given else None
            picked = pick_speaker(speakers, name, str(path))
        except CosymlError as exc:
            reasons.append(str(exc))
            continue
        vector = picked.embedding.detach().float().reshape(-1).numpy()
        return SpeakerSource(picked.name, path if given else None, vector)
    return (
        f"no embedding for speaker '{speaker}' ({'; '.join(reasons)}); run `cosyml extract` "
        "(it writes spk2embedding.pt) or name a speaker file that holds it"
    )


def build_request(
    subset: str,
    item: TestItem,
    config: EvaluateConfig,
    speaker: SpeakerSource | None,
    sampling: SamplingParams | None = None,
):
    """The :class:`~cosyml.synth.request.SynthRequest` for one test item (same for every candidate).
    ``sampling`` None: the model yaml's RAS values."""
    from cosyml.synth.request import SynthRequest

    mode = synthesis_mode(subset, item)
    fields: dict[str, Any] = {
        "text": item.text,
        "mode": mode,
        "seed": utterance_seed(config.synth_seed, subset, item.utt),
        **_sampling_fields(sampling),
        "max_tokens": config.synth_max_tokens or None,
        "min_token_text_ratio": config.min_token_text_ratio,
        "max_token_text_ratio": config.max_token_text_ratio,
    }
    if mode in ("zero_shot", "cross_lingual") or (mode == "instruct" and item.prompt_wav is not None):
        fields["prompt_wav"] = str(item.prompt_wav)
    if mode == "zero_shot":
        fields["prompt_text"] = item.prompt_text
    if mode == "instruct":
        fields["instruct"] = item.instruct
    if (mode == "sft" or (mode == "instruct" and item.prompt_wav is None)) and speaker is not None:
        fields["speaker"] = speaker.name
        fields["speaker_file"] = str(speaker.speaker_file) if speaker.speaker_file else None
    return SynthRequest(**fields)


def _sampling_fields(sampling: SamplingParams | None) -> dict[str, Any]:
    """``top_p``, ``top_k``, ``win_size``, ``tau_r`` of a request (None each: the model yaml's value)."""
    if sampling is None:
        return {"top_p": None, "top_k": None, "win_size": None, "tau_r": None}
    return {"top_p": sampling.top_p, "top_k": sampling.top_k, "win_size": sampling.win_size, "tau_r": sampling.tau_r}


# ------------------------------------------------------------------------------------------ caches


class CachedTranscriber:
    """A :class:`~cosyml.evaluation.score.Transcriber` that remembers transcripts by audio content.

    ``load`` builds the real ASR, called only when some audio has no cached transcript."""

    def __init__(self, load: Callable[[], Transcriber], settings_key: str, path: Path) -> None:
        self.load = load
        self.settings_key = settings_key
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("settings") == settings_key:
                    self.entries = dict(data.get("entries", {}))
            except (json.JSONDecodeError, AttributeError):
                self.entries = {}
        self.computed = 0
        self.reused = 0

    def transcribe(
        self, waveforms: Sequence[np.ndarray], languages: Sequence[str], progress: bool = False
    ) -> list[Hypothesis]:
        keys = [f"{lang}:{_audio_digest(w)}" for w, lang in zip(waveforms, languages, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in self.entries]
        if todo:
            hyps = self.load().transcribe([waveforms[i] for i in todo], [languages[i] for i in todo], progress)
            for i, hyp in zip(todo, hyps, strict=True):
                self.entries[keys[i]] = dataclasses.asdict(hyp)
        self.computed += len(todo)
        self.reused += len(keys) - len(todo)
        return [Hypothesis(**self.entries[k]) for k in keys]

    def save(self) -> None:
        _write_json(self.path, {"settings": self.settings_key, "entries": self.entries})


class CachedEmbedder:
    """An :data:`~cosyml.evaluation.speaker.EmbedFn` that remembers embeddings by audio content."""

    def __init__(
        self, load: Callable[[], Callable[[Sequence[np.ndarray]], np.ndarray]], settings_key: str, path: Path
    ) -> None:
        self.load = load
        self.settings_key = settings_key
        self.path = path
        self.entries: dict[str, np.ndarray] = {}
        self.changed = True  # until the file is read back: the cache on disk is missing or stale
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    if str(data["__settings__"]) == settings_key:
                        self.entries = {k: data[k] for k in data.files if k != "__settings__"}
                        self.changed = False
            except (OSError, KeyError, ValueError):
                self.entries = {}

    def __call__(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        keys = [_audio_digest(w) for w in waveforms]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self.entries}.items())
        if todo:
            vectors = self.load()([waveforms[i] for _, i in todo])
            for (k, _), v in zip(todo, vectors, strict=True):
                self.entries[k] = np.asarray(v, dtype=np.float32)
            self.changed = True
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.entries[k] for k in keys])

    def save(self) -> None:
        if not self.changed:  # a zip holds write times: rewriting equal entries would change the bytes
            return
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"__settings__": np.array(self.settings_key), **dict(sorted(self.entries.items()))}
        np.savez(buffer, **arrays)
        write_if_changed(self.path, buffer.getvalue())


def _write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (a killed run leaves the previous file); equal content leaves the file untouched."""
    write_if_changed(path, (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


class _Lazy:
    """A value built on first use (Whisper, CAM++, the synthesis engine)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build
        self.value: Any = None

    @property
    def loaded(self) -> bool:
        return self.value is not None

    def __call__(self) -> Any:
        if self.value is None:
            self.value = self.build()
        return self.value


class SuiteModels:
    """Whisper, CAM++ and the synthesis engine, kept across :func:`run_suite` calls.

    One call builds what it needs on first use; pass the same instance to many calls (an Optuna study
    runs the suite once per trial) and each model is loaded once for all of them. Models are keyed by
    what they are built from, so a call with other settings gets its own.
    """

    def __init__(self) -> None:
        self._models: dict[str, _Lazy] = {}

    def get(self, key: str, build: Callable[[], Any]) -> _Lazy:
        if key not in self._models:
            self._models[key] = _Lazy(build)
        return self._models[key]

    @property
    def loaded(self) -> list[str]:
        """Keys of the models built so far."""
        return [k for k, v in self._models.items() if v.loaded]


# ------------------------------------------------------------------------------------------ test sets


def limit_subset(subset: TestSubset, max_utts: int) -> TestSubset:
    """The first ``max_utts`` usable items (0 = all); the subset's problems are kept."""
    if max_utts <= 0 or len(subset.items) <= max_utts:
        return subset
    return TestSubset(subset.name, subset.folder, subset.language, subset.items[:max_utts], list(subset.problems))


def load_subsets(
    config: EvaluateConfig, eval_dir: Path, data_dir: str | Path | None, speaker: SpeakerSource | str | None
) -> list[TestSubset]:
    """``config.test_sets`` (limited to ``config.subsets``), plus the speaker-SFT subset built from
    ``<data_dir>/<sft_split>`` into ``<eval_dir>/testsets/sft``. Without a speaker embedding the SFT
    items become problems (reason ``no_speaker``) instead of failing synthesis one by one."""
    from cosyml.evaluation.testset import read_test_set, write_sft_subset

    subsets = read_test_set(config.test_sets, config.subsets) if config.test_sets else []
    if data_dir:
        sft = write_sft_subset(data_dir, eval_dir / "testsets" / SFT_SUBSET, split=config.sft_split)
        if isinstance(speaker, str):
            sft = TestSubset(
                sft.name,
                sft.folder,
                sft.language,
                [],
                [*sft.problems, *(ItemProblem(sft.name, it.utt, "no_speaker", speaker) for it in sft.items)],
            )
        subsets.append(sft)
    if not subsets:
        raise InputError("evaluate.test_sets is empty and no prepared data folder was given; nothing to evaluate")
    return [limit_subset(s, config.max_utts) for s in subsets]


def is_tiny_kit(model_dir: Path) -> bool:
    """True for a directory written by ``cosyml kit`` (random weights: numbers prove plumbing only)."""
    for name in YAML_NAME.values():
        try:
            head = (model_dir / name).read_text(encoding="utf-8")[:400]
        except OSError:
            continue
        return "cosyml.kit" in head
    return False


# ------------------------------------------------------------------------------------------ the suite


def run_suite(
    suite: SuiteConfig,
    candidates: Sequence[Candidate],
    eval_dir: str | Path,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    models: SuiteModels | None = None,
) -> SuiteResult:
    """Synthesise and score every candidate (see the module docstring); nothing tracked, nothing rendered.

    ``models`` keeps Whisper, CAM++ and the engine loaded for later calls (default: loaded for this one).
    """
    from cosyml.devices import resolve_device

    config = suite.evaluate
    say = log or (lambda _msg: None)
    eval_dir = Path(eval_dir)
    model_dir = Path(suite.model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: model directory not found; give a model directory in the official layout")
    if not candidates:
        raise InputError("no candidates to evaluate; give at least one llm/flow weight pair")
    speaker_name = suite.speaker
    speaker = find_speaker(model_dir, speaker_name, suite.speaker_file)
    subsets = load_subsets(config, eval_dir, data_dir, speaker)
    speaker_source = speaker if isinstance(speaker, SpeakerSource) else None
    if not any(s.items for s in subsets):
        problems = [p for s in subsets for p in s.problems]
        first = f"; first: {problems[0].subset}/{problems[0].utt}: {problems[0].detail}" if problems else ""
        raise InputError(f"{config.test_sets or data_dir}: no usable test item ({len(problems)} skipped{first})")

    whisper_path = suite.whisper_model
    if not whisper_path:
        raise InputError("evaluate.whisper_model: empty; set it to a local openai-whisper checkpoint (.pt)")
    if not Path(whisper_path).is_file():
        raise InputError(f"{whisper_path}: Whisper checkpoint not found; set evaluate.whisper_model")
    campplus_path = Path(config.campplus_model or model_dir / CAMPPLUS_NAME)
    if not campplus_path.is_file():
        raise InputError(f"{campplus_path}: campplus.onnx not found; set evaluate.campplus_model")
    device = str(resolve_device(config.device))  # a string: it is part of the cache keys
    asr_key = _digest(
        {
            "v": CACHE_VERSION,
            "whisper": file_fingerprint(whisper_path),
            "device": device,
            "max_tokens": config.max_tokens,
        }
    )
    embed_key = _digest({"v": CACHE_VERSION, "campplus": file_fingerprint(campplus_path)})

    def load_asr():
        from cosyml.evaluation.asr import WhisperASR

        say(f"loading Whisper {whisper_path}")
        return WhisperASR.load(
            whisper_path, device=device, batch_size=config.batch_size, max_tokens=config.max_tokens or None
        )

    def load_embedder():
        from cosyml.evaluation.speaker import campplus_embedder

        return campplus_embedder(campplus_path, device=device)

    def load_engine():
        from cosyml.synth.engine import SynthEngine

        say(f"loading {model_dir} for synthesis on {device}")
        return SynthEngine.load(model_dir, device=device)

    models = models if models is not None else SuiteModels()
    asr = models.get(f"asr {asr_key} {config.batch_size}", load_asr)
    embedder = models.get(f"campplus {embed_key} {device}", load_embedder)
    engine = models.get(f"engine {model_dir.resolve()} {device}", load_engine)
    shared = model_fingerprint(model_dir)
    prompt_prints: dict[Path, dict[str, Any]] = {}
    jobs = []
    for subset in subsets:
        for item in subset.items:
            request = build_request(subset.name, item, config, speaker_source, suite.sampling)
            extra: dict[str, Any] = {}
            for label, path in (("prompt_wav", request.prompt_wav), ("speaker_file", request.speaker_file)):
                if path is not None:
                    p = Path(path)
                    if p not in prompt_prints:
                        prompt_prints[p] = file_fingerprint(p)
                    extra[label] = prompt_prints[p]
            jobs.append((subset.name, item.utt, request, extra))

    results = []
    for candidate in candidates:
        say(f"candidate {candidate.name}")
        result = _run_candidate(candidate, eval_dir, model_dir, jobs, shared, engine, config, progress, say)
        if result.error is None:
            scorer_asr = CachedTranscriber(asr, asr_key, result.folder / "asr.json")
            scorer_embed = CachedEmbedder(embedder, embed_key, result.folder / "embeddings.npz")
            settings = _settings(config, suite.sampling, whisper_path, campplus_path, device, candidate)
            result.report = score_test_set(
                subsets,
                result.folder,
                scorer_asr,
                scorer_embed,
                config,
                speaker_embedding=speaker_source.embedding if speaker_source else None,
                progress=progress,
                settings=settings,
            )
            scorer_asr.save()
            scorer_embed.save()
            result.asr_computed, result.asr_reused = scorer_asr.computed, scorer_asr.reused
            write_report(result.folder, result.report)
            result.summary = summarize_rows(result.report.rows, config)
            result.subsets = {
                s.name: summarize_rows([r for r in result.report.rows if r.subset == s.name], config) for s in subsets
            }
        results.append(result)
    return SuiteResult(
        eval_dir=eval_dir,
        speaker=speaker_name,
        model_dir=model_dir,
        tiny_kit=is_tiny_kit(model_dir),
        subsets=subsets,
        candidates=results,
        settings=_settings(config, suite.sampling, whisper_path, campplus_path, device, None),
        engine_loaded=engine.loaded,
    )


def _settings(
    config: EvaluateConfig,
    sampling: SamplingParams | None,
    whisper: str | Path,
    campplus: Path,
    device: str,
    candidate: Candidate | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "whisper_model": str(whisper),
        "ss_model": str(campplus),
        "ss_name": "SS_campplus",
        "device": device,
        "asr": "forced language, temperature 0, no fallback, no timestamps, no previous-text conditioning",
        "whisper_max_tokens": config.max_tokens or 224,
        "normalisation": "cv3 (punctuation deleted, no number normalisation)",
        "test_sets": config.test_sets,
        "max_utts": config.max_utts,
        "synth_seed": config.synth_seed,
        "synth_max_tokens": config.synth_max_tokens,
        **_sampling_fields(sampling),
        "bootstrap_resamples": config.bootstrap_resamples,
        "ci_level": config.ci_level,
    }
    if candidate is not None:
        out.update(candidate=candidate.name, llm=candidate.llm, flow=candidate.flow)
    return out


def _run_candidate(
    candidate: Candidate,
    eval_dir: Path,
    model_dir: Path,
    jobs: list,
    shared: dict[str, Any],
    engine: _Lazy,
    config: EvaluateConfig,
    progress: bool,
    say: Callable[[str], None],
) -> CandidateResult:
    """Synthesise what the cache lacks for one candidate (no scoring)."""
    from cosyml.audio import write_wav

    result = CandidateResult(candidate, eval_dir / candidate.slug)
    try:
        weights = {part: file_fingerprint(weight_file(candidate.source(part), part, model_dir)) for part in PARTS}
    except CosymlError as exc:
        result.error = str(exc)
        say(f"  skipped: {exc}")
        return result
    manifest_path = result.folder / "synth.json"
    manifest = _read_manifest(manifest_path)
    todo = []
    for subset, utt, request, extra in jobs:
        key = _digest(
            {"v": CACHE_VERSION, "weights": weights, "model": shared, "inputs": extra, "request": request.as_log_dict()}
        )
        entry = manifest.get(f"{subset}/{utt}")
        wav = result.output_wav(subset, utt)
        if entry and entry.get("key") == key and (entry.get("status") == "failed" or wav.is_file()):
            result.reused += 1
            if entry.get("status") == "failed":
                result.synth_failures.append(SynthFailure(subset, utt, entry.get("error", "")))
            continue
        wav.unlink(missing_ok=True)  # stale audio must never be scored
        todo.append((subset, utt, request, key))
    if not todo:
        return result
    try:
        _check_readable(candidate)  # an unreadable file fails here, before any model is loaded
        synth = engine()
        synth.swap(llm=candidate.llm, flow=candidate.flow)
    except CosymlError as exc:
        result.error = f"weights do not load: {exc}"
        say(f"  skipped: {result.error}")
        return result
    bar = _progress(len(todo), f"synth {candidate.slug}", progress)

    def done(i: int, item: Any) -> None:
        subset, utt, request, key = todo[i]
        if isinstance(item, CosymlError):
            manifest[f"{subset}/{utt}"] = {"key": key, "status": "failed", "error": str(item), "seed": request.seed}
            result.synth_failures.append(SynthFailure(subset, utt, str(item)))
        else:
            write_wav(result.output_wav(subset, utt), item.wav, item.sample_rate)
            manifest[f"{subset}/{utt}"] = {
                "key": key,
                "status": "ok",
                "seed": item.seed,
                "duration_s": round(item.duration_s, 4),
            }
        result.synthesized += 1
        if bar is not None:
            bar.update(1)
        if result.synthesized % 20 == 0:
            _write_json(manifest_path, manifest)  # resume point for long grids

    try:
        for start in range(0, len(todo), SYNTH_CHUNK):  # bounded memory: results of one chunk at a time
            chunk = todo[start : start + SYNTH_CHUNK]
            synth.synthesize_batch(
                [t[2] for t in chunk],
                batch_size=config.synth_batch_size,
                on_done=lambda i, item, start=start: done(start + i, item),
            )
    finally:
        _write_json(manifest_path, manifest)
        if bar is not None:
            bar.close()
    return result


def _check_readable(candidate: Candidate) -> None:
    """torch.load each non-base weight file (memory-mapped: cheap even for 2 GB); key/shape checks happen
    when the engine swaps the weights in."""
    from cosyml.synth.weights import read_weights

    for part in PARTS:
        source = candidate.source(part)
        if source != BASE:
            read_weights(Path(source) / f"{part}.pt" if Path(source).is_dir() else source, part)


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="utt")


__all__ = [
    "BASE",
    "CandidateResult",
    "MetricSummary",
    "SuiteConfig",
    "SuiteModels",
    "SuiteResult",
    "SynthFailure",
    "run_suite",
    "summarize_rows",
]
