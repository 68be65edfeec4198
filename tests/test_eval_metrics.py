"""Normalisation, CER/WER, aggregates, speaker similarity and bootstrap CIs against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cosyml.evaluation.audio_checks import CheckLimits, check_audio, duration_flags, expected_duration_s
from cosyml.evaluation.metrics import (
    PUNCTUATION,
    ErrorCounts,
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


def test_punctuation_set_keeps_apostrophe_and_deletes_cjk_marks():
    assert "'" not in PUNCTUATION
    for ch in '，。！？、；：“”‘’（）《》【】…—～·\u3000!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~':
        assert ch in PUNCTUATION, ch


def test_cer_on_cjk_with_punctuation():
    # ref 你好世界 (4 chars), hyp 你好世介: one substitution -> 1/4
    c = count_errors("你好，世界！", "你好世介。", "zh")
    assert (c.substitutions, c.deletions, c.insertions, c.ref_len) == (1, 0, 0, 4)
    assert c.error == pytest.approx(0.25)
    # one inserted char over 6: whitespace and ideographic space are not characters to score
    assert count_errors("今天 天气\u3000很好。", "今天天气很好啊", "zh").error == pytest.approx(1 / 6)
    # Latin letters inside CJK text are scored letter by letter and case-sensitively (CV3 behaviour)
    c = count_errors("用iPhone拍照", "用iphone拍照", "zh")
    assert (c.substitutions, c.ref_len) == (1, 9)
    assert normalize("《你好》「世界」", "ja") == "你 好 世 界"
    assert metric_name("zh") == metric_name("ko") == "cer" and metric_name("en") == "wer"


def test_wer_with_case_and_apostrophes():
    assert normalize("Don't stop, Mr. Smith!", "en") == "don't stop mr smith"
    c = count_errors("Don't stop, Mr. Smith!", "dont STOP mister smith", "en")
    assert (c.substitutions, c.deletions, c.insertions, c.ref_len) == (2, 0, 0, 4)
    assert c.error == pytest.approx(0.5)
    # hyphens are deleted, not replaced by a space; a curly apostrophe is punctuation and goes too
    assert normalize("In nineteen-seventeen", "en") == "in nineteenseventeen"
    assert normalize("don’t", "en") == "dont"
    assert count_errors("It's fine", "it's  fine.", "en").error == 0.0
    # no number normalisation: "fifty" vs "50" is an error
    assert count_errors("fifty cats", "50 cats", "en").error == pytest.approx(0.5)


def test_insertions_can_push_error_above_one_and_empty_hypothesis_is_all_deletions():
    assert count_errors("a", "a b c", "en").error == pytest.approx(2.0)
    c = count_errors("one two three", "", "en")
    assert (c.deletions, c.error) == (3, 1.0)


def test_corpus_error_differs_from_mean_of_utterance_errors():
    counts = [
        count_errors("hello world", "hello word", "en"),  # 1 / 2
        count_errors("one two three four five six seven eight", "one two three four five six seven eight", "en"),
    ]
    assert mean_error(counts) == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert corpus_error(counts) == pytest.approx(0.1)  # 1 / 10
    assert share_above([0.5, 0.51, 0.0, 2.0]) == pytest.approx(0.5)  # strictly above 50 %


def test_missing_output_counts_as_full_error():
    c = missing_output_errors("你好，世界！", "zh")
    assert c == ErrorCounts(0, 4, 0, 4) and c.error == 1.0
    counts = [c, count_errors("你好世界", "你好世界", "zh")]
    assert mean_error(counts) == pytest.approx(0.5) and corpus_error(counts) == pytest.approx(0.5)


def test_cosine_similarity_on_known_vectors():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine_similarity(np.array([0.6, 0.8]), np.array([0.8, 0.6])) == pytest.approx(0.96)
    assert cosine_similarity(np.array([1.0, 2.0]), np.array([-1.0, -2.0])) == pytest.approx(-1.0)
    assert cosine_similarity(np.zeros(3), np.ones(3)) == 0.0


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    values = np.random.default_rng(5).uniform(0, 0.3, size=40)
    ci = bootstrap_mean_ci(values, resamples=500, level=0.95, seed=7)
    assert ci.low < float(np.mean(values)) < ci.high
    assert ci == bootstrap_mean_ci(values, resamples=500, level=0.95, seed=7)
    assert ci != bootstrap_mean_ci(values, resamples=500, level=0.95, seed=8)
    assert ci.high - ci.low < 0.1  # about 4 standard errors for n=40
    wide = bootstrap_mean_ci(values, resamples=500, level=0.99, seed=7)
    assert wide.low <= ci.low and wide.high >= ci.high
    edits, lengths = [1, 0, 3, 2, 0], [10, 8, 12, 9, 11]
    rci = bootstrap_ratio_ci(edits, lengths, resamples=500, seed=1)
    assert rci.contains(6 / 50)
    assert math.isnan(bootstrap_mean_ci([], seed=1).low)
    constant = bootstrap_mean_ci([0.2] * 5, seed=3)
    assert constant.low == pytest.approx(0.2) and constant.high == pytest.approx(0.2)


def test_audio_checks_flag_silence_clipping_and_duration():
    sr = 16000
    t = np.arange(sr) / sr
    speechy = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert check_audio(speechy, sr).flags == ()
    assert check_audio(np.zeros(sr, np.float32), sr).flags == ("silent",)
    mostly = np.concatenate([np.zeros(9 * sr, np.float32), speechy[: sr // 2]])
    assert check_audio(mostly, sr).flags == ("mostly_silence",)
    clipped = np.clip(4 * speechy, -1, 1)
    result = check_audio(clipped, sr)
    # |1.2 sin| >= 0.999 on a share 1 - (2 / pi) asin(0.999 / 1.2) of a period
    assert "clipped" in result.flags
    assert result.clipped_ratio == pytest.approx(1 - 2 / math.pi * math.asin(0.999 / 1.2), abs=2e-3)
    assert check_audio(np.array([np.nan, 0.1], np.float32), sr).flags == ("not_finite",)
    limits = CheckLimits()
    assert duration_flags(0.3, limits) == ("too_short",) and duration_flags(2.5, limits) == ("too_long",)
    assert duration_flags(1.0, limits) == ()
    # 9 Han characters at 4.5/s + 2 words at 2.7/s + 0.3 s padding
    assert expected_duration_s("今天天气很好，我们去iPhone Store。") == pytest.approx(0.3 + 9 / 4.5 + 2 / 2.7)
    assert expected_duration_s("Don't stop now.") == pytest.approx(0.3 + 3 / 2.7)
