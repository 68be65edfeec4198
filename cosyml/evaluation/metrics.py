"""Content and speaker metrics in the CV3-Eval / seed-tts-eval protocol, and their confidence intervals.

Text normalisation (both reference and hypothesis, per utterance):

1. delete (replace with nothing, not a space) every character of :data:`PUNCTUATION`: ASCII punctuation
   except the apostrophe, plus the Chinese/fullwidth punctuation set CV3 takes from ``zhon.hanzi``;
   ``nineteen-seventeen`` therefore becomes ``nineteenseventeen``;
2. replace the first double space with one space (the protocol does it once; tokenisation drops the rest);
3. zh/ja/ko/yue: score characters (CER); whitespace is ignored and Latin words inside CJK text are scored
   letter by letter, case-sensitively. Every other language: lowercase and score words (WER).

No number normalisation: "fifty" against "50" is an error, as in the published numbers. The Whisper
hypothesis for Chinese is converted to simplified characters before this (see :mod:`cosyml.evaluation.asr`).

Aggregates: the mean of per-utterance errors (the CV3 headline), the corpus error (total edits / total
reference tokens), the share of utterances above 50 % error, and percentile bootstrap CIs over utterances.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

#: Languages scored per character (CER). Everything else is scored per word (WER).
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue"})

_ASCII_PUNCTUATION = string.punctuation.replace("'", "")
# Chinese and fullwidth punctuation, grouped by Unicode block (the same characters as zhon.hanzi.punctuation).
_FULLWIDTH_FORMS = "！＂＃＄％＆＇（）＊＋，－／：；＜＝＞？＠［＼］＾＿｀｛｜｝～｟｠"
_HALFWIDTH_CJK = "｡｢｣､"
_CJK_SYMBOLS = (
    "\u3000、。〃〈〉《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"  # U+3000 ideographic space is deleted, too
)
_GENERAL = "–—‘’‛“”„‟…‧·"
_SMALL_FORMS = "﹏﹑﹔"
#: Every character the normaliser deletes.
PUNCTUATION = frozenset(_ASCII_PUNCTUATION + _FULLWIDTH_FORMS + _HALFWIDTH_CJK + _CJK_SYMBOLS + _GENERAL + _SMALL_FORMS)


def metric_name(language: str) -> str:
    """``"cer"`` for character-scored languages, ``"wer"`` otherwise."""
    return "cer" if language in CHARACTER_LANGUAGES else "wer"


def strip_punctuation(text: str) -> str:
    """Delete punctuation (see :data:`PUNCTUATION`) and replace the first double space with one."""
    return "".join(c for c in text if c not in PUNCTUATION).replace("  ", " ", 1)


def normalize(text: str, language: str) -> str:
    """Text as scored: space-separated tokens (characters for CER languages, lowercased words otherwise)."""
    cleaned = strip_punctuation(text)
    if language in CHARACTER_LANGUAGES:
        return " ".join(c for c in cleaned if not c.isspace())
    return " ".join(cleaned.lower().split())


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts of one hypothesis against one reference, in tokens (characters or words)."""

    substitutions: int
    deletions: int
    insertions: int
    ref_len: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def error(self) -> float:
        """(S + D + I) / N; can exceed 1 with many insertions. An empty reference gives 0 or 1."""
        if self.ref_len == 0:
            return float(self.edits > 0)
        return self.edits / self.ref_len


def count_errors(reference: str, hypothesis: str, language: str) -> ErrorCounts:
    """Normalise both sides for ``language`` and align them (jiwer word alignment on the tokens)."""
    ref = normalize(reference, language)
    hyp = normalize(hypothesis, language)
    ref_len = len(ref.split())
    if ref_len == 0:
        return ErrorCounts(0, 0, len(hyp.split()), 0)
    if not hyp:
        return ErrorCounts(0, ref_len, 0, ref_len)
    out = jiwer.process_words(ref, hyp)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, ref_len)


def missing_output_errors(reference: str, language: str) -> ErrorCounts:
    """A missing output counts as everything deleted: error 1.0."""
    ref_len = len(normalize(reference, language).split())
    return ErrorCounts(0, ref_len, 0, ref_len)


def corpus_error(counts: Sequence[ErrorCounts]) -> float:
    """Total edits over total reference tokens (NaN for no tokens)."""
    total = sum(c.ref_len for c in counts)
    return sum(c.edits for c in counts) / total if total else math.nan


def mean_error(counts: Sequence[ErrorCounts]) -> float:
    """Mean of per-utterance errors (the CV3/seed headline number); NaN when empty."""
    return float(np.mean([c.error for c in counts])) if counts else math.nan


def share_above(errors: Sequence[float], threshold: float = 0.5) -> float:
    """Share of utterances whose error is strictly above ``threshold``."""
    return float(np.mean(np.asarray(errors) > threshold)) if len(errors) else math.nan


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two embedding vectors (D,); 0.0 when either is all zeros or not finite."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0 or not math.isfinite(norm):
        return 0.0
    return float(np.dot(a, b) / norm)


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval; NaN bounds when there was nothing to resample."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _percentiles(stats: np.ndarray, level: float) -> Interval:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high))


def bootstrap_mean_ci(values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of ``values`` (resampling utterances); deterministic per seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))  # (R, n)
    return _percentiles(x[idx].mean(axis=1), level)


def bootstrap_ratio_ci(
    numerators: Sequence[float],
    denominators: Sequence[float],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI of sum(numerators) / sum(denominators), resampling utterances (corpus error)."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.size == 0 or den.sum() == 0:
        return Interval(math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, num.size, size=(resamples, num.size))
    sums = den[idx].sum(axis=1)
    stats = num[idx].sum(axis=1) / np.where(sums == 0, np.nan, sums)
    return _percentiles(stats[np.isfinite(stats)], level)
