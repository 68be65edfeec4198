"""The speaker check of ``extract``: a stray voice planted in the toy corpus is found, good clips stay.

The toy speaker's clips (espeak-ng ``+f2``) and the four ``examples/toy_stray`` clips (another espeak
voice) go into one folder as one speaker; ``prepare`` + ``extract`` run with the real tiny kit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cosyml.cli import main
from cosyml.config import PrepareConfig
from cosyml.data.kaldi import read_kaldi_map
from cosyml.data.prepare import prepare
from cosyml.features.speaker_check import SpeakerCheckConfig, check_speakers

REPO = Path(__file__).resolve().parents[1]
SPEAKER = "toy"


def _corpus(folder: Path, good: int | None = None, stray: bool = True) -> Path:
    """The toy speaker's good clips (the first ``good`` of them) and, with ``stray``, the stray ones."""
    folder.mkdir(parents=True)
    wavs = sorted((REPO / "examples" / "toy_speaker").glob("vo_[ze][hn]_[0-9]*.wav"))[:good]
    if stray:
        wavs += sorted((REPO / "examples" / "toy_stray").glob("*.wav"))
    for wav in wavs:
        shutil.copy(wav, folder / wav.name)
        shutil.copy(wav.with_suffix(".lab"), folder / wav.with_suffix(".lab").name)
    return folder


def _stem_of(prepared: Path) -> dict[str, str]:
    """utt id -> source file stem, from prepare's manifests."""
    out = {}
    for split in ("train", "dev"):
        manifest = prepared / split / "manifest.jsonl"
        if manifest.is_file():
            for line in manifest.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                out[row["utt"]] = Path(row["source"]).stem
    return out


def _shard_utts(shards: Path) -> set[str]:
    return {
        u for f in shards.glob("*/shards/parquet_*.tar") for u in pq.read_table(f, columns=["utt"])["utt"].to_pylist()
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spk")
    out = root / "prepared"
    prepare(
        [_corpus(root / "clips")],
        out,
        PrepareConfig(speaker=SPEAKER, transcribe=False),
        progress=False,
        warn=lambda m: None,
    )
    return out


def test_check_flags_the_odd_vector_and_needs_five_clips():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(192)
    good = {f"a_{i}": (base + 0.3 * rng.standard_normal(192)).tolist() for i in range(8)}
    odd = {"a_odd": rng.standard_normal(192).tolist()}
    vectors = {**good, **odd}
    result = check_speakers(vectors, {u: "a" for u in vectors}, SpeakerCheckConfig(min_similarity=0.5))
    assert [c.utt for c in result.outliers] == ["a_odd"]
    assert all(c.similarity > 0.8 for c in result.clips if c.utt != "a_odd")
    few = {u: good[u] for u in list(good)[:3]} | odd
    small = check_speakers(few, {u: "a" for u in few}, SpeakerCheckConfig())
    assert small.outliers == [] and all(c.outlier is None and c.z is None for c in small.clips)
    assert [(s.speaker, s.clips, s.checked) for s in small.unchecked] == [("a", 4, False)]


def test_stray_voice_is_found_and_dropped_on_request(prepared, kit_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSYML_TRACKING", "off")
    stems = _stem_of(prepared)
    stray = {u for u, stem in stems.items() if stem.startswith("vo_stray_")}
    assert len(stray) == 4 and len(stems) == 74  # every clip was accepted by prepare
    features = tmp_path / "features"
    common = ["--data", str(prepared), "--model-dir", str(kit_dir), "--output", str(features)]
    assert main(["extract", *common, "--metrics", "metrics.json"]) == 0
    out = capsys.readouterr().out
    report = json.loads((features / "speaker_check.json").read_text(encoding="utf-8"))
    assert {o["utt"] for o in report["outliers"]} == stray
    assert all(o["reason"] == "speaker_outlier" and o["similarity"] < 0.5 for o in report["outliers"])
    assert all(Path(o["wav"]).is_file() for o in report["outliers"])
    good_scores = [c["similarity"] for u, c in report["clips"].items() if u not in stray]
    assert len(good_scores) == 70 and min(good_scores) > 0.6
    assert (
        f"speaker check: 4 of 74 clips are speaker_outlier (cosine < 0.5); see {features / 'speaker_check.json'}" in out
    )
    assert "outliers stay in the shards (set extract.drop_speaker_outliers: true" in out
    metrics = json.loads(Path("metrics.json").read_text())
    assert metrics["speaker_outliers"] == 4 and metrics["speaker_outliers_dropped"] == 0

    # The voice's embedding leaves the outliers out: the mean of the good clips, split by split.
    splits = [s for s in ("train", "dev") if (features / s / "utt2embedding.pt").is_file()]
    for split in splits:
        utt2emb = torch.load(features / split / "utt2embedding.pt", weights_only=True)
        spk2emb = torch.load(features / split / "spk2embedding.pt", weights_only=True)
        kept = [v for u, v in utt2emb.items() if u not in stray]
        assert spk2emb[SPEAKER] == torch.tensor(kept).mean(dim=0).tolist()
        assert (features / split / "excluded_utts").read_text() == ""

    assert main(["shards", "--data", str(prepared), "--features", str(features), "--output", "shards"]) == 0
    assert stray <= _shard_utts(Path("shards"))  # drop off: kept, only reported

    # Drop on: the features are up to date, only the check reruns; shards leave the clips out and say so.
    argv = ["extract", *common, "--metrics", "metrics.json", "--set", "extract.drop_speaker_outliers=true"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    assert "speaker check: 4 outliers left out of the shards (listed in <split>/excluded_utts)" in out
    assert json.loads(Path("metrics.json").read_text())["speaker_outliers_dropped"] == 4
    excluded = {u for s in splits for u in read_kaldi_map(features / s / "excluded_utts")}
    assert excluded == stray
    assert main(["shards", "--data", str(prepared), "--features", str(features), "--output", "shards"]) == 0
    out = capsys.readouterr().out
    assert "left out" in out and "speaker_outlier listed in" in out
    utts = _shard_utts(Path("shards"))
    assert not (utts & stray) and len(utts) == 70


def test_speaker_with_few_clips_gets_no_verdicts(kit_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSYML_TRACKING", "off")
    prepared, features = tmp_path / "prepared", tmp_path / "features"
    cfg = PrepareConfig(speaker=SPEAKER, transcribe=False)
    prepare([_corpus(tmp_path / "clips", good=4, stray=False)], prepared, cfg, progress=False, warn=lambda m: None)
    assert main(["extract", "--data", str(prepared), "--model-dir", str(kit_dir), "--output", str(features)]) == 0
    out = capsys.readouterr().out
    assert f"speaker check: speaker '{SPEAKER}' has 4 clips (fewer than 5): no outlier verdicts" in out
    assert "speaker check: 0 of 0 clips are speaker_outlier" in out
    report = json.loads((features / "speaker_check.json").read_text(encoding="utf-8"))
    assert report["outliers"] == [] and all(c["outlier"] is None for c in report["clips"].values())
