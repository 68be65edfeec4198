"""Score a folder of synthesised audio against test sets: per-utterance rows and per-subset summaries.

Outputs are looked up as ``<outputs>/<subset>/wavs/<utt>.wav`` (the layout CV3's inference scripts write)
or ``<outputs>/<subset>/<utt>.wav`` (``.flac`` also accepted; ``<subset>`` may be flattened with ``_``). Per utterance: Whisper transcript
(forced to the target language) -> CER or WER (:mod:`cosyml.evaluation.metrics`), speaker similarity of
the output to its prompt wav (or, for sets without prompts such as the speaker-SFT set, to the speaker's
mean embedding), duration ratio and audio checks (:mod:`cosyml.evaluation.audio_checks`).

Nothing is skipped silently: a missing or undecodable output scores error 1.0 and SS 0 and is counted in
``n_missing``; a test item that cannot be scored at all (missing prompt wav, mismatched ids, unknown
language) is listed with its reason and counted in ``n_skipped``, and the rest of the subset is scored.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cosyml.audio import read_audio, resample, to_mono
from cosyml.errors import InputError
from cosyml.evaluation.asr import SAMPLE_RATE, Hypothesis
from cosyml.evaluation.audio_checks import CheckLimits, check_audio, duration_flags, expected_duration_s
from cosyml.evaluation.config import EvaluateConfig
from cosyml.evaluation.metrics import (
    ErrorCounts,
    Interval,
    bootstrap_mean_ci,
    bootstrap_ratio_ci,
    corpus_error,
    cosine_similarity,
    count_errors,
    mean_error,
    metric_name,
    missing_output_errors,
    normalize,
    share_above,
)
from cosyml.evaluation.speaker import EmbedFn
from cosyml.evaluation.testset import ItemProblem, TestItem, TestSubset
from cosyml.fileio import write_if_changed

OUTPUT_EXTENSIONS = (".wav", ".flac")


class Transcriber(Protocol):
    """What the scorer needs from an ASR (``WhisperASR`` is one)."""

    def transcribe(
        self, waveforms: Sequence[np.ndarray], languages: Sequence[str], progress: bool = False
    ) -> list[Hypothesis]: ...


@dataclass(frozen=True)
class UtteranceScore:
    """One scored utterance (one CSV row). ``status``: "scored" or "missing" (no usable output wav)."""

    subset: str
    utt: str
    language: str
    metric: str  # "cer" or "wer"
    status: str
    error: float  # (S + D + I) / N for this utterance; 1.0 when missing
    edits: int
    ref_len: int
    substitutions: int
    deletions: int
    insertions: int
    ss: float | None  # cosine to the prompt (or speaker mean) embedding; 0.0 when missing; None: no reference
    duration_s: float
    expected_duration_s: float
    duration_ratio: float
    flags: tuple[str, ...]
    reference: str
    hypothesis: str
    reference_norm: str
    hypothesis_norm: str
    output_wav: str
    asr_avg_logprob: float = math.nan
    asr_no_speech_prob: float = math.nan
    asr_compression_ratio: float = math.nan

    @property
    def counts(self) -> ErrorCounts:
        return ErrorCounts(self.substitutions, self.deletions, self.insertions, self.ref_len)


@dataclass(frozen=True)
class SubsetSummary:
    """Aggregates of one subset. Errors are fractions (x100 for %); CIs are percentile bootstrap."""

    subset: str
    language: str | None
    metric: str
    n_items: int  # lines in the test files
    n_scored: int  # outputs found and transcribed
    n_missing: int  # outputs absent or undecodable (scored as error 1.0, SS 0)
    n_skipped: int  # test items that could not be scored at all
    skipped_reasons: dict[str, int]
    mean_error: float  # mean of per-utterance errors (CV3 / seed-tts-eval headline)
    mean_error_ci: Interval
    corpus_error: float  # total edits / total reference tokens
    corpus_error_ci: Interval
    share_error_over_50: float
    mean_ss: float | None
    ss_ci: Interval | None
    mean_duration_ratio: float
    n_flagged: int
    flag_counts: dict[str, int]


@dataclass
class EvalReport:
    """Everything one evaluation produced."""

    summaries: list[SubsetSummary]
    rows: list[UtteranceScore]
    skipped: list[ItemProblem]
    settings: dict[str, Any] = field(default_factory=dict)

    def macro(self) -> dict[str, float | None]:
        """Unweighted means over subsets (as the HF TTS leaderboard aggregates CV3 subsets)."""
        errs = [s.mean_error for s in self.summaries if math.isfinite(s.mean_error)]
        sss = [s.mean_ss for s in self.summaries if s.mean_ss is not None and math.isfinite(s.mean_ss)]
        return {
            "mean_error": float(np.mean(errs)) if errs else None,
            "mean_ss": float(np.mean(sss)) if sss else None,
        }


def find_output(outputs_dir: Path, subset: str, utt: str) -> Path | None:
    """The synthesised file for ``utt`` of ``subset``, or None. A nested subset name may also be flattened
    with ``_`` (``zero_shot/zh`` -> ``zero_shot_zh``)."""
    names = dict.fromkeys((subset, subset.replace("/", "_")))
    for folder in (d for name in names for d in (outputs_dir / name / "wavs", outputs_dir / name)):
        for ext in OUTPUT_EXTENSIONS:
            path = folder / f"{utt}{ext}"
            if path.is_file():
                return path
    return None


def limits_from(config: EvaluateConfig) -> CheckLimits:
    return CheckLimits(
        silence_dbfs=config.silence_dbfs,
        max_silence_ratio=config.max_silence_ratio,
        clip_threshold=config.clip_threshold,
        max_clipped_ratio=config.max_clipped_ratio,
        min_duration_ratio=config.min_duration_ratio,
        max_duration_ratio=config.max_duration_ratio,
    )


@dataclass(eq=False)
class _Output:
    item: TestItem
    path: Path | None
    wave_16k: np.ndarray | None = None
    duration_s: float = 0.0
    flags: tuple[str, ...] = ()


def _load_output(item: TestItem, path: Path | None, limits: CheckLimits) -> _Output:
    if path is None:
        return _Output(item, None, flags=("missing",))
    try:
        audio = read_audio(path)
    except InputError:
        return _Output(item, path, flags=("undecodable",))
    mono = to_mono(audio.samples)
    check = check_audio(mono, audio.sample_rate, limits)
    if "not_finite" in check.flags:
        return _Output(item, path, duration_s=check.duration_s, flags=check.flags)
    return _Output(item, path, resample(mono, audio.sample_rate, SAMPLE_RATE), check.duration_s, check.flags)


class _EmbeddingCache:
    """Embeds reference files once each (many utterances share a prompt)."""

    def __init__(self, embed: EmbedFn) -> None:
        self.embed = embed
        self.cache: dict[Path, np.ndarray] = {}

    def files(self, paths: Sequence[Path]) -> list[np.ndarray]:
        todo = sorted({p for p in paths if p not in self.cache})
        if todo:
            vectors = self.embed([to_mono_16k(p) for p in todo])
            self.cache.update(zip(todo, vectors, strict=True))
        return [self.cache[p] for p in paths]


def to_mono_16k(path: Path) -> np.ndarray:
    audio = read_audio(path)
    return resample(to_mono(audio.samples), audio.sample_rate, SAMPLE_RATE)


def score_subset(
    subset: TestSubset,
    outputs_dir: str | Path,
    asr: Transcriber,
    embed: EmbedFn | None,
    config: EvaluateConfig,
    speaker_embedding: np.ndarray | None = None,
    progress: bool = False,
    _cache: _EmbeddingCache | None = None,
) -> list[UtteranceScore]:
    """Score every usable item of ``subset`` (``subset.problems`` are the skipped ones).

    ``embed`` None disables SS. SS reference per item: its prompt wav; else ``speaker_embedding``; else
    the mean embedding of the subset's reference wavs (the speaker-SFT set).
    """
    outputs_dir = Path(outputs_dir)
    limits = limits_from(config)
    outputs = [_load_output(item, find_output(outputs_dir, subset.name, item.utt), limits) for item in subset.items]
    present = [o for o in outputs if o.wave_16k is not None]
    waves = [o.wave_16k for o in outputs if o.wave_16k is not None]  # those of `present`, typed as present
    hyps = asr.transcribe(waves, [o.item.language for o in present], progress=progress)
    by_utt: dict[str, Hypothesis] = {o.item.utt: h for o, h in zip(present, hyps, strict=True)}

    similarity: dict[str, float] = {}
    if embed is not None and present:
        cache = _cache or _EmbeddingCache(embed)
        out_vecs = embed(waves)  # (len(present), D)
        row_of = {o.item.utt: i for i, o in enumerate(present)}
        prompted = [o for o in present if o.item.prompt_wav is not None]
        prompt_files = [o.item.prompt_wav for o in present if o.item.prompt_wav is not None]
        for o, ref in zip(prompted, cache.files(prompt_files), strict=True):
            similarity[o.item.utt] = cosine_similarity(out_vecs[row_of[o.item.utt]], ref)
        unprompted = [o for o in present if o.item.prompt_wav is None]
        target = speaker_embedding
        if target is None and unprompted:
            refs = [it.reference_wav for it in subset.items if it.reference_wav is not None]
            target = np.mean(cache.files(refs), axis=0) if refs else None
        if target is not None:
            for o in unprompted:
                similarity[o.item.utt] = cosine_similarity(out_vecs[row_of[o.item.utt]], target)

    ref_durations: dict[Path, float] = {}
    rows = []
    for o in outputs:
        item = o.item
        if item.reference_wav is not None:
            if item.reference_wav not in ref_durations:
                ref_durations[item.reference_wav] = read_audio(item.reference_wav).duration_s
            expected = ref_durations[item.reference_wav]
        else:
            expected = expected_duration_s(item.text)
        hyp = by_utt.get(item.utt)
        if hyp is None:
            counts = missing_output_errors(item.text, item.language)
            rows.append(
                _row(
                    subset.name,
                    item,
                    "missing",
                    counts,
                    0.0 if embed is not None else None,
                    o,
                    expected,
                    "",
                    o.flags,
                    None,
                )
            )
            continue
        flags = list(o.flags)
        ratio = o.duration_s / expected if expected > 0 else math.nan
        flags += duration_flags(ratio, limits)
        if hyp.compression_ratio > config.max_compression_ratio:
            flags.append("asr_repetition")
        if hyp.no_speech_prob > config.max_no_speech_prob:
            flags.append("no_speech")
        counts = count_errors(item.text, hyp.text, item.language)
        rows.append(
            _row(
                subset.name, item, "scored", counts, similarity.get(item.utt), o, expected, hyp.text, tuple(flags), hyp
            )
        )
    return rows


def _row(
    subset: str,
    item: TestItem,
    status: str,
    counts: ErrorCounts,
    ss: float | None,
    out: _Output,
    expected: float,
    hypothesis: str,
    flags: tuple[str, ...],
    hyp: Hypothesis | None,
) -> UtteranceScore:
    ratio = out.duration_s / expected if status == "scored" and expected > 0 else math.nan
    return UtteranceScore(
        subset=subset,
        utt=item.utt,
        language=item.language,
        metric=metric_name(item.language),
        status=status,
        error=counts.error,
        edits=counts.edits,
        ref_len=counts.ref_len,
        substitutions=counts.substitutions,
        deletions=counts.deletions,
        insertions=counts.insertions,
        ss=ss,
        duration_s=out.duration_s,
        expected_duration_s=expected,
        duration_ratio=ratio,
        flags=flags,
        reference=item.text,
        hypothesis=hypothesis,
        reference_norm=normalize(item.text, item.language),
        hypothesis_norm=normalize(hypothesis, item.language),
        output_wav=str(out.path) if out.path else "",
        asr_avg_logprob=hyp.avg_logprob if hyp else math.nan,
        asr_no_speech_prob=hyp.no_speech_prob if hyp else math.nan,
        asr_compression_ratio=hyp.compression_ratio if hyp else math.nan,
    )


def summarize_subset(subset: TestSubset, rows: Sequence[UtteranceScore], config: EvaluateConfig) -> SubsetSummary:
    """Aggregate one subset's rows (missing outputs included as error 1.0 / SS 0)."""
    ci: dict[str, Any] = {"resamples": config.bootstrap_resamples, "level": config.ci_level, "seed": config.seed}
    counts = [r.counts for r in rows]
    errors = [r.error for r in rows]
    ss_values = [r.ss for r in rows if r.ss is not None]
    ratios = [r.duration_ratio for r in rows if math.isfinite(r.duration_ratio)]
    flag_counts = Counter(f for r in rows for f in r.flags)
    metrics = {metric_name(r.language) for r in rows} or {metric_name(subset.language or "")}
    return SubsetSummary(
        subset=subset.name,
        language=subset.language,
        metric=metrics.pop() if len(metrics) == 1 else "mixed",
        n_items=subset.size,
        n_scored=sum(r.status == "scored" for r in rows),
        n_missing=sum(r.status == "missing" for r in rows),
        n_skipped=len(subset.problems),
        skipped_reasons=dict(Counter(p.reason for p in subset.problems)),
        mean_error=mean_error(counts),
        mean_error_ci=bootstrap_mean_ci(errors, **ci),
        corpus_error=corpus_error(counts),
        corpus_error_ci=bootstrap_ratio_ci([c.edits for c in counts], [c.ref_len for c in counts], **ci),
        share_error_over_50=share_above(errors, 0.5),
        mean_ss=float(np.mean(ss_values)) if ss_values else None,
        ss_ci=bootstrap_mean_ci(ss_values, **ci) if ss_values else None,
        mean_duration_ratio=float(np.mean(ratios)) if ratios else math.nan,
        n_flagged=sum(bool(r.flags) for r in rows),
        flag_counts=dict(flag_counts),
    )


def score_test_set(
    subsets: Sequence[TestSubset],
    outputs_dir: str | Path,
    asr: Transcriber,
    embed: EmbedFn | None,
    config: EvaluateConfig,
    speaker_embedding: np.ndarray | None = None,
    progress: bool = False,
    settings: dict[str, Any] | None = None,
) -> EvalReport:
    """Score every subset; prompt embeddings are computed once across subsets."""
    cache = _EmbeddingCache(embed) if embed is not None else None
    report = EvalReport(summaries=[], rows=[], skipped=[], settings=dict(settings or {}))
    for subset in subsets:
        rows = score_subset(subset, outputs_dir, asr, embed, config, speaker_embedding, progress, cache)
        report.rows += rows
        report.skipped += subset.problems
        report.summaries.append(summarize_subset(subset, rows, config))
    return report


def evaluate_outputs(
    outputs_dir: str | Path,
    config: EvaluateConfig,
    whisper_model: str | Path,
    campplus_model: str | Path,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score a folder of outputs made elsewhere: read ``config.test_sets`` (plus the speaker-SFT set built
    from ``data_dir/dev`` when given), load Whisper (``whisper_model``, a local .pt) and CAM++
    (``campplus_model``, an .onnx), score ``outputs_dir``, write the report files to ``out_dir``."""
    from cosyml.evaluation.asr import WhisperASR
    from cosyml.evaluation.speaker import campplus_embedder
    from cosyml.evaluation.testset import read_test_set, write_sft_subset

    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        raise InputError(f"{outputs_dir}: outputs folder not found; pass the folder with <subset>/wavs/<utt>.wav")
    subsets = read_test_set(config.test_sets, config.subsets)
    if data_dir is not None:
        sft_dir = Path(out_dir or outputs_dir) / "testsets" / "sft"
        subsets.append(write_sft_subset(data_dir, sft_dir))
    whisper_path = str(whisper_model)
    if not whisper_path:
        raise InputError("evaluate.whisper_model: empty; set it to a local openai-whisper checkpoint (.pt)")
    asr = WhisperASR.load(
        whisper_path, device=config.device, batch_size=config.batch_size, max_tokens=config.max_tokens or None
    )
    campplus = str(campplus_model)
    embed = campplus_embedder(campplus, device=config.device)
    settings = {
        **asr.settings(),
        "whisper_model": str(whisper_path),
        "ss_model": str(campplus),
        "ss_name": "SS_campplus",
        "normalisation": "cv3 (punctuation deleted, no number normalisation)",
        "test_sets": config.test_sets,
        "outputs": str(outputs_dir),
        "bootstrap_resamples": config.bootstrap_resamples,
        "ci_level": config.ci_level,
        "seed": config.seed,
    }
    report = score_test_set(subsets, outputs_dir, asr, embed, config, progress=progress, settings=settings)
    if out_dir is not None:
        write_report(out_dir, report)
    return report


# --- writers -------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe: NaN/Inf -> None, tuples -> lists, dataclasses -> dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


ROW_FIELDS = tuple(f.name for f in dataclasses.fields(UtteranceScore))


def write_rows_csv(path: str | Path, rows: Sequence[UtteranceScore]) -> Path:
    """One CSV line per utterance (UTF-8, header = :data:`ROW_FIELDS`; flags joined with ';')."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(ROW_FIELDS)
    for r in rows:
        values = []
        for name in ROW_FIELDS:
            v = getattr(r, name)
            if isinstance(v, tuple):
                v = ";".join(v)
            elif isinstance(v, float):
                v = "" if not math.isfinite(v) else f"{v:.6g}"
            elif v is None:
                v = ""
            values.append(v)
        writer.writerow(values)
    write_if_changed(path, buffer.getvalue().encode("utf-8"))  # a cached rerun leaves the file untouched
    return Path(path)


def summary_dict(report: EvalReport) -> dict[str, Any]:
    return {
        "settings": _plain(report.settings),
        "macro": _plain(report.macro()),
        "subsets": [_plain(s) for s in report.summaries],
        "skipped": [_plain(p) for p in report.skipped],
    }


def write_summary_json(path: str | Path, report: EvalReport) -> Path:
    """Settings, macro averages, per-subset summaries and every skipped item with its reason."""
    path = Path(path)
    write_if_changed(path, (json.dumps(summary_dict(report), ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return path


def write_report(out_dir: str | Path, report: EvalReport) -> tuple[Path, Path]:
    """``utterances.csv`` and ``summary.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return write_rows_csv(out_dir / "utterances.csv", report.rows), write_summary_json(out_dir / "summary.json", report)


def format_summary(report: EvalReport) -> str:
    """A small text table: one line per subset (errors and SS x100)."""
    lines = [
        f"{'subset':<24}{'metric':>7}{'mean%':>8}{'95% CI':>16}{'corpus%':>9}{'>50%':>6}{'SS':>7}"
        f"{'dur':>6}{'miss':>5}{'skip':>5}{'flag':>5}"
    ]
    for s in report.summaries:
        ci = f"[{100 * s.mean_error_ci.low:.1f},{100 * s.mean_error_ci.high:.1f}]"
        ss = f"{100 * s.mean_ss:.1f}" if s.mean_ss is not None else "-"
        lines.append(
            f"{s.subset:<24}{s.metric:>7}{100 * s.mean_error:>8.2f}{ci:>16}{100 * s.corpus_error:>9.2f}"
            f"{100 * s.share_error_over_50:>6.0f}{ss:>7}{s.mean_duration_ratio:>6.2f}{s.n_missing:>5}"
            f"{s.n_skipped:>5}{s.n_flagged:>5}"
        )
    return "\n".join(lines)
