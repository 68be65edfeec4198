"""Parquet shards: upstream's columns and types, shard planning, list files, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cosyml.audio import write_wav
from cosyml.cli import main
from cosyml.data.shards import iter_shard_rows, plan_shards, read_data_list, shard_metadata, write_shards
from cosyml.errors import InputError


def write_kaldi_map(path: Path, entries: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in entries.items()), encoding="utf-8")


def make_split(root: Path, n: int, with_features: bool = True, instruct: str | None = None) -> Path:
    split = root / "train"
    utts = [f"spk_{i:04d}" for i in range(n)]
    for i, utt in enumerate(utts):
        write_wav(root / "wavs" / f"{utt}.wav", 0.1 * np.sin(np.arange(2400 + 240 * i) / 10.0), 24000)
    write_kaldi_map(split / "wav.scp", {u: str(root / "wavs" / f"{u}.wav") for u in utts})
    write_kaldi_map(split / "text", {u: f"第{i}句 hello world" for i, u in enumerate(utts)})
    write_kaldi_map(split / "utt2spk", {u: "spk" for u in utts})
    if instruct is not None:
        write_kaldi_map(split / "instruct", {u: instruct for u in utts})
    if with_features:
        torch.save({u: [float(i)] * 192 for i, u in enumerate(utts)}, split / "utt2embedding.pt")
        torch.save({"spk": [0.5] * 192}, split / "spk2embedding.pt")
        torch.save({u: list(range(i + 1)) for i, u in enumerate(utts)}, split / "utt2speech_token.pt")
    return split


@pytest.mark.parametrize(
    ("num_utts", "per_shard", "min_shards", "expected_sizes"),
    [
        (0, 1000, 4, []),
        (10, 1000, 1, [10]),
        (10, 1000, 4, [3, 3, 2, 2]),
        (3, 1000, 8, [1, 1, 1]),
        (2500, 1000, 1, [834, 833, 833]),
    ],
)
def test_plan_shards_sizes(num_utts, per_shard, min_shards, expected_sizes):
    ranges = plan_shards(num_utts, per_shard, min_shards)
    assert [end - start for start, end in ranges] == expected_sizes
    assert sum(expected_sizes) == num_utts
    if ranges:
        assert ranges[0][0] == 0 and ranges[-1][1] == num_utts


def test_shards_have_upstream_columns_and_types(tmp_path):
    split = make_split(tmp_path, 5)
    result = write_shards(split, utts_per_shard=1000, min_shards=2, metadata={"cosyml.speech_tokenizer": "v2"})
    assert len(result.shard_files) == 2
    schema = pq.read_schema(result.shard_files[0])
    assert schema.field("utt").type == pa.string()
    assert schema.field("audio_data").type == pa.binary()
    assert schema.field("utt_embedding").type == pa.list_(pa.float64())
    assert schema.field("spk_embedding").type == pa.list_(pa.float64())
    assert schema.field("speech_token").type == pa.list_(pa.int64())
    assert "instruct" not in schema.names
    assert shard_metadata(result.shard_files[0])["cosyml.speech_tokenizer"] == "v2"

    rows = list(iter_shard_rows(read_data_list(split / "data.list")))
    assert [r["utt"] for r in rows] == [f"spk_{i:04d}" for i in range(5)]
    assert rows[3]["speech_token"] == [0, 1, 2, 3]
    assert rows[3]["utt_embedding"] == [3.0] * 192
    assert rows[0]["audio_data"] == Path(rows[0]["wav"]).read_bytes()
    # the three list files have one line per shard and resolve from the list file's folder
    for name in ("data.list", "utt2data.list", "spk2data.list"):
        entries = read_data_list(split / name)
        assert len(entries) == 2 and all(p.is_file() for p in entries)


def test_shards_without_features_and_with_instruct(tmp_path):
    split = make_split(tmp_path, 3, with_features=False, instruct="You are a helpful assistant.<|endofprompt|>")
    result = write_shards(split)
    assert result.columns == ["utt", "audio_data", "wav", "text", "spk", "instruct"]
    rows = list(iter_shard_rows(result.shard_files))
    assert rows[0]["instruct"] == "You are a helpful assistant.<|endofprompt|>"
    assert rows[1]["text"] == "第1句 hello world"


def test_rewrite_removes_stale_shards(tmp_path):
    split = make_split(tmp_path, 6)
    write_shards(split, min_shards=3)
    write_shards(split, min_shards=1)
    assert len(list((split / "shards").glob("parquet_*.tar"))) == 1


def test_missing_feature_entries_are_counted(tmp_path):
    split = make_split(tmp_path, 4)
    tokens = torch.load(split / "utt2speech_token.pt", weights_only=True)
    del tokens["spk_0002"]
    torch.save(tokens, split / "utt2speech_token.pt")
    result = write_shards(split)
    assert result.missing_features == {"utt2speech_token.pt": 1}
    rows = {r["utt"]: r for r in iter_shard_rows(result.shard_files)}
    assert rows["spk_0002"]["speech_token"] is None


def test_missing_audio_is_one_clear_error(tmp_path):
    split = make_split(tmp_path, 2)
    (tmp_path / "wavs" / "spk_0001.wav").unlink()
    with pytest.raises(InputError, match=r"spk_0001\.wav: audio file listed in wav.scp is missing"):
        write_shards(split)


def test_cli_without_prepared_data_prints_one_line(tmp_path, capsys):
    assert main(["shards", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run `cosyml prepare" in err[0]


def test_cli_writes_both_splits(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COSYML_TRACKING", "off")
    make_split(tmp_path, 4)
    assert main(["shards", "--data", str(tmp_path), "--min-shards", "2"]) == 0
    assert len(read_data_list(tmp_path / "train" / "data.list")) == 2
    assert (tmp_path / "shards_summary.json").is_file()


def test_separate_feature_and_output_folders(tmp_path):
    split = make_split(tmp_path / "prepared", 3)
    features = tmp_path / "features" / "train"
    features.mkdir(parents=True)
    for name in ("utt2embedding.pt", "spk2embedding.pt", "utt2speech_token.pt"):
        (split / name).rename(features / name)
    out = tmp_path / "shards" / "train"
    result = write_shards(split, out_dir=out, feature_dir=features)
    assert "speech_token" in result.columns
    assert read_data_list(out / "data.list") == [out / "shards" / "parquet_000000000.tar"]
    assert not (split / "data.list").exists()
