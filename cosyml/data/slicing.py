"""Cut a long recording into utterances at its pauses.

A pause is a run of at least ``min_silence_s`` of non-speech frames (see :mod:`cosyml.data.clean`).
Going left to right, each utterance ends at the first pause that makes it at least ``min_s`` long,
so sentences separated by pauses become separate utterances, merged until ``min_s``. When no pause
falls inside ``[min_s, max_s]``, the cut goes at the quietest frame in that window. A last piece
shorter than ``min_s`` is merged into the previous one when the result stays within ``max_s``.
"""

from __future__ import annotations

import numpy as np

from cosyml.data.clean import HOP_S, frame_levels_db, speech_frames


def find_pauses(speech: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """Runs of non-speech frames at least ``min_frames`` long: [(first, last + 1)], in frames."""
    pauses = []
    run_start = None
    for i, is_speech in enumerate([*speech.tolist(), True]):
        if not is_speech and run_start is None:
            run_start = i
        elif is_speech and run_start is not None:
            if i - run_start >= min_frames:
                pauses.append((run_start, i))
            run_start = None
    return pauses


def slice_at_pauses(
    samples: np.ndarray,
    sample_rate: int,
    min_s: float,
    max_s: float,
    top_db: float,
    floor_dbfs: float,
    min_silence_s: float = 0.3,
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) covering ``samples`` (num_samples,) without gaps or overlaps."""
    n = samples.shape[0]
    hop = int(HOP_S * sample_rate)
    levels = frame_levels_db(samples, sample_rate)
    speech = speech_frames(levels, top_db, floor_dbfs)
    pauses = find_pauses(speech, max(1, round(min_silence_s / HOP_S)))
    cuts = [((a + b) // 2) * hop for a, b in pauses]  # cut in the middle of each pause, in samples
    min_len, max_len = int(min_s * sample_rate), int(max_s * sample_rate)

    ranges: list[tuple[int, int]] = []
    start = 0
    while n - start > max_len:
        inside = [c for c in cuts if start + min_len <= c <= start + max_len]
        if inside:
            end = inside[0]
        else:  # no pause in the window: the quietest frame in it
            lo, hi = (start + min_len) // hop, min((start + max_len) // hop, levels.shape[0] - 1)
            end = (lo + int(np.argmin(levels[lo : hi + 1]))) * hop if hi >= lo else start + max_len
        ranges.append((start, end))
        start = end
    # The tail fits in max_s; still cut it at pauses so that sentences stay separate.
    while True:
        inside = [c for c in cuts if start + min_len <= c <= n - min_len]
        if not inside:
            break
        ranges.append((start, inside[0]))
        start = inside[0]
    if n - start < min_len and ranges and n - ranges[-1][0] <= max_len:
        ranges[-1] = (ranges[-1][0], n)
    else:
        ranges.append((start, n))
    return ranges
