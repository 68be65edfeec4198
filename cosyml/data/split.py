"""Deterministic train/dev split that does not reshuffle when clips are added.

Each utterance gets a number u in [0, 1) from ``sha256("<seed>:<utt>")``; it goes to dev when
``u < dev_ratio``. That decision depends only on the utt id and the seed, so adding or removing
other clips never moves it. When that leaves fewer than ``min_dev`` dev utterances, the train
utterances with the smallest u are moved to dev (this top-up is the one case where a newly added
clip can change the split of another; it only happens on very small corpora). At least one
utterance always stays in train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def split_score(utt: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{utt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(utts: Iterable[str], seed: int, dev_ratio: float, min_dev: int) -> dict[str, str]:
    """{utt: "train" | "dev"}."""
    scores = {utt: split_score(utt, seed) for utt in utts}
    splits = {utt: ("dev" if s < dev_ratio else "train") for utt, s in scores.items()}
    dev_target = min(max(0, min_dev), max(0, len(scores) - 1))
    missing = dev_target - sum(1 for v in splits.values() if v == "dev")
    if missing > 0:
        for utt in sorted((u for u, v in splits.items() if v == "train"), key=lambda u: (scores[u], u))[:missing]:
            splits[utt] = "dev"
    if splits and all(v == "dev" for v in splits.values()):
        splits[max(scores, key=lambda u: (scores[u], u))] = "train"
    return splits
