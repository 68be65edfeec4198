"""Every kind of bad input next to a good corpus: the junk gets its reason (or its documented
normalisation), and every good clip is still accepted, identically, in the same split."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import pytest
from _bad_inputs import KINDS, Expect, make_all, make_good

from cosyml.config import PrepareConfig
from cosyml.data.kaldi import read_kaldi_map
from cosyml.data.prepare import prepare

CFG = PrepareConfig(speaker="toy", transcribe=False, dev_ratio=0.3)


def _outcome(out: Path, result) -> dict[str, tuple[str, str, str, str]]:
    """utt -> (split, text, source, sha1 of the written wav)."""
    return {
        e.utt: (e.split, e.text, e.source.rsplit("/raw/", 1)[-1], hashlib.sha1((out / e.wav).read_bytes()).hexdigest())
        for e in result.entries
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[str, tuple[str, str, str, str]]:
    root = tmp_path_factory.mktemp("good")
    make_good(root / "raw")
    result = prepare([root / "raw"], root / "data", CFG, progress=False, warn=lambda m: None)
    assert not result.rejects and {s for s, *_ in _outcome(root / "data", result).values()} == {"train", "dev"}
    return _outcome(root / "data", result)


def _check(result, out: Path, expect: Expect, baseline) -> None:
    got = _outcome(out, result)
    for utt, before in baseline.items():  # the good corpus: same ids, splits, texts and bytes
        assert got.get(utt) == before, utt
    rejects = {r.source: r.reason for r in result.rejects}
    accepted = {e.source: e.text for e in result.entries}
    for suffix, reason in expect.rejects.items():
        hits = [s for s in rejects if s.endswith(suffix)]
        assert len(hits) == 1 and rejects[hits[0]] == reason, (suffix, rejects)
    for suffix, text in expect.accepted.items():
        hits = [s for s in accepted if s.endswith(suffix)]
        assert len(hits) == 1, (suffix, sorted(accepted))
        assert text is None or accepted[hits[0]] == text
    for suffix in expect.either:
        assert sum(s.endswith(suffix) for s in [*rejects, *accepted]) == 1, suffix
    # Nothing beyond the good corpus and what the kind adds; each source appears once.
    assert len(accepted) == len(baseline) + len(expect.accepted) + sum(
        any(s.endswith(x) for x in expect.either) for s in accepted
    )
    assert all(r.detail and "\n" not in r.detail for r in result.rejects)
    for split in ("train", "dev"):  # kaldi files: one clean line per utt
        lines = (out / split / "text").read_text(encoding="utf-8").splitlines()
        assert len(lines) == result.counts[split]
        for line in lines:
            assert all(unicodedata.category(c) != "Cc" for c in line), line
            assert "<|" not in line
        assert set(read_kaldi_map(out / split / "wav.scp")) == {e.utt for e in result.entries if e.split == split}


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_next_to_good_corpus(kind: str, tmp_path: Path, baseline) -> None:
    raw = tmp_path / "raw"
    make_good(raw)
    expect = KINDS[kind](raw)
    result = prepare([raw], tmp_path / "data", CFG, progress=False, warn=lambda m: None)
    _check(result, tmp_path / "data", expect, baseline)


def test_all_kinds_together(tmp_path: Path, baseline) -> None:
    raw = tmp_path / "raw"
    make_good(raw)
    expect = make_all(raw)
    result = prepare([raw], tmp_path / "data", CFG, progress=False, warn=lambda m: None)
    _check(result, tmp_path / "data", expect, baseline)
    # Normalisations: UTF-16 decoded, DC removed.
    import numpy as np
    import soundfile as sf

    dc = next(e for e in result.entries if e.source.endswith("dc.wav"))
    samples, _ = sf.read(str(tmp_path / "data" / dc.wav))
    assert abs(float(np.mean(samples))) < 0.01


def test_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    from cosyml.data.layouts import scan_inputs

    raw = tmp_path / "raw"
    make_good(raw, 2)
    KINDS["symlink_loop"](raw)
    scan = scan_inputs([raw])
    assert len(scan.clips) == 2
