"""Deterministic train/dev split: the split of a clip depends on its utt id alone.

Each utterance gets a number u in [0, 1) from ``sha256("<seed>:<utt>")``; it goes to dev when
``u < dev_ratio``. Nothing else enters the decision: adding, removing or rejecting other clips never
moves a clip between train and dev. There is deliberately no top-up to a minimum dev size (any
top-up makes one clip's split depend on the others); ``prepare`` warns when dev is smaller than
``prepare.min_dev`` so the user can raise ``dev_ratio`` (or change ``seed``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def split_score(utt: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{utt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(utt: str, seed: int, dev_ratio: float) -> str:
    """ "dev" or "train" for one utterance id."""
    return "dev" if split_score(utt, seed) < dev_ratio else "train"


def assign_splits(utts: Iterable[str], seed: int, dev_ratio: float) -> dict[str, str]:
    """{utt: "train" | "dev"}, each from :func:`split_of`."""
    return {utt: split_of(utt, seed, dev_ratio) for utt in utts}
