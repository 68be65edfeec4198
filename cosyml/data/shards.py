"""Parquet shards in upstream's training-data format, and a reader for them.

A split directory (``DATA/train``) written by ``prepare`` and ``extract`` holds the kaldi files
(``wav.scp``, ``text``, ``utt2spk``, optional ``instruct``) and the feature files
(``utt2embedding.pt``, ``spk2embedding.pt``, ``utt2speech_token.pt``). :func:`write_shards` turns it
into ``<split>/shards/parquet_{i:09d}.tar`` (Parquet files, despite the name upstream uses) plus
``utt2parquet_*.json`` / ``spk2parquet_*.json`` and the three list files ``data.list``,
``utt2data.list`` and ``spk2data.list`` that upstream's trainer also reads.

Columns and Arrow types (as pandas writes them upstream): ``utt``, ``wav``, ``text``, ``spk``
(string), ``audio_data`` (binary: the raw bytes of the wav file), ``utt_embedding`` and
``spk_embedding`` (list<double>, 192 values), ``speech_token`` (list<int64>), ``instruct`` (string,
only when the split has an ``instruct`` file). Feature columns are written only when their file
exists, as upstream does. Utterances listed in the feature folder's ``excluded_utts`` (``<utt> <reason>``
lines, written by ``extract``: speaker outliers the user asked to drop) are left out and counted.

Shard count: upstream's sampler hands whole shards to each (rank, worker) and *replicates* the shard
list when there are fewer shards than readers, so a small speaker set would be read several times
per epoch. We therefore write at least ``min_shards`` shards (set it to ranks x workers) and spread
utterances evenly over them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cosyml.data.kaldi import read_kaldi_map, resolve_wav_path
from cosyml.errors import InputError

SHARD_SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class ShardsResult:
    """What :func:`write_shards` wrote for one split."""

    split_dir: Path
    num_utts: int
    shard_files: list[Path]
    columns: list[str]
    missing_features: dict[str, int] = field(default_factory=dict)  # feature file -> utts without a value
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> utts left out (excluded_utts)
    excluded_file: Path | None = None  # the excluded_utts file read, when it listed any


def _load_feature(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign pickle: name the file, say what to do
        raise InputError(f"{path}: cannot read feature file ({type(exc).__name__}); rerun `cosyml extract`") from None


def _as_float_list(value: Any) -> list[float]:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.flatten().tolist()]
    return [float(v) for v in value]


def _as_int_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in value]


def plan_shards(num_utts: int, utts_per_shard: int, min_shards: int) -> list[tuple[int, int]]:
    """Split ``num_utts`` into contiguous [start, end) ranges: at least ``min_shards`` (when there are
    that many utterances), at most ``utts_per_shard`` each, sizes differing by at most one."""
    if num_utts == 0:
        return []
    count = max(math.ceil(num_utts / max(1, utts_per_shard)), min(max(1, min_shards), num_utts))
    base, extra = divmod(num_utts, count)
    ranges, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def _relative_or_absolute(path: Path, anchor: Path, absolute: bool) -> str:
    return str(path.resolve()) if absolute else os.path.relpath(path.resolve(), anchor.resolve())


def write_shards(
    split_dir: str | Path,
    out_dir: str | Path | None = None,
    feature_dir: str | Path | None = None,
    utts_per_shard: int = 1000,
    min_shards: int = 1,
    absolute_paths: bool = False,
    metadata: dict[str, str] | None = None,
) -> ShardsResult:
    """Write the parquet shards and list files for one split directory.

    Kaldi files come from ``split_dir``, the ``*.pt`` feature files from ``feature_dir`` (default:
    ``split_dir``), and shards plus list files go to ``out_dir`` (default: ``split_dir``); keeping
    them apart lets each DVC stage own its own output folder.
    Paths inside the list files are relative to the list file's directory unless ``absolute_paths``
    (upstream's trainer opens them relative to its working directory: use absolute paths for it).
    ``metadata`` is stored in each shard's schema (e.g. the speech tokenizer the tokens came from),
    so a trainer can refuse shards made for another model version.
    """
    split_dir = Path(split_dir)
    out_dir = Path(out_dir) if out_dir is not None else split_dir
    feature_dir = Path(feature_dir) if feature_dir is not None else split_dir
    wav_scp = split_dir / "wav.scp"
    if not wav_scp.is_file():
        raise InputError(f"{wav_scp}: not found; run `cosyml prepare` first (it writes the kaldi files)")
    utt2wav = read_kaldi_map(wav_scp)
    utt2text = read_kaldi_map(split_dir / "text")
    utt2spk = read_kaldi_map(split_dir / "utt2spk")
    utt2instruct = read_kaldi_map(split_dir / "instruct") if (split_dir / "instruct").is_file() else None
    utt2embedding = _load_feature(feature_dir / "utt2embedding.pt")
    spk2embedding = _load_feature(feature_dir / "spk2embedding.pt")
    utt2speech_token = _load_feature(feature_dir / "utt2speech_token.pt")

    excluded_file = feature_dir / "excluded_utts"
    utt2excluded = read_kaldi_map(excluded_file) if excluded_file.is_file() else {}
    utts = [u for u in utt2wav if u not in utt2excluded]
    excluded: dict[str, int] = {}
    for u in utt2wav:
        if u in utt2excluded:
            excluded[utt2excluded[u]] = excluded.get(utt2excluded[u], 0) + 1
    for name, mapping in (("text", utt2text), ("utt2spk", utt2spk)):
        missing = [u for u in utts if u not in mapping]
        if missing:
            raise InputError(f"{split_dir / name}: no entry for utterance '{missing[0]}'; rerun `cosyml prepare`")

    missing_features: dict[str, int] = {}
    for name, features, keys in (
        ("utt2embedding.pt", utt2embedding, utts),
        ("utt2speech_token.pt", utt2speech_token, utts),
        ("spk2embedding.pt", spk2embedding, [utt2spk[u] for u in utts]),
    ):
        if features is not None:
            absent = sum(1 for k in keys if k not in features)
            if absent:
                missing_features[name] = absent

    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob("*parquet_*"):
        stale.unlink()

    schema_fields = [
        pa.field("utt", pa.string()),
        pa.field("audio_data", pa.binary()),
        pa.field("wav", pa.string()),
        pa.field("text", pa.string()),
        pa.field("spk", pa.string()),
    ]
    if utt2embedding is not None:
        schema_fields.append(pa.field("utt_embedding", pa.list_(pa.float64())))
    if spk2embedding is not None:
        schema_fields.append(pa.field("spk_embedding", pa.list_(pa.float64())))
    if utt2speech_token is not None:
        schema_fields.append(pa.field("speech_token", pa.list_(pa.int64())))
    if utt2instruct is not None:
        schema_fields.append(pa.field("instruct", pa.string()))
    schema = pa.schema(
        schema_fields,
        metadata={"cosyml.shard_schema": SHARD_SCHEMA_VERSION, **(metadata or {})},
    )

    shard_files: list[Path] = []
    utt_lists: list[Path] = []
    spk_lists: list[Path] = []
    for index, (start, end) in enumerate(plan_shards(len(utts), utts_per_shard, min_shards)):
        chunk = utts[start:end]
        columns: dict[str, list[Any]] = {
            "utt": chunk,
            "audio_data": [_read_bytes(Path(utt2wav[u]), split_dir) for u in chunk],
            "wav": [utt2wav[u] for u in chunk],
            "text": [utt2text[u] for u in chunk],
            "spk": [utt2spk[u] for u in chunk],
        }
        if utt2embedding is not None:
            columns["utt_embedding"] = [_optional(utt2embedding.get(u), _as_float_list) for u in chunk]
        if spk2embedding is not None:
            columns["spk_embedding"] = [_optional(spk2embedding.get(utt2spk[u]), _as_float_list) for u in chunk]
        if utt2speech_token is not None:
            columns["speech_token"] = [_optional(utt2speech_token.get(u), _as_int_list) for u in chunk]
        if utt2instruct is not None:
            columns["instruct"] = [utt2instruct.get(u, "") for u in chunk]
        table = pa.Table.from_pydict(columns, schema=schema)
        shard = shard_dir / f"parquet_{index:09d}.tar"
        tmp = shard.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(shard)
        shard_ref = _relative_or_absolute(shard, out_dir, absolute_paths)
        utt_json = shard_dir / f"utt2parquet_{index:09d}.json"
        spk_json = shard_dir / f"spk2parquet_{index:09d}.json"
        utt_json.write_text(json.dumps({u: shard_ref for u in chunk}, ensure_ascii=False, indent=2))
        spk_json.write_text(
            json.dumps({s: shard_ref for s in sorted(set(columns["spk"]))}, ensure_ascii=False, indent=2)
        )
        shard_files.append(shard)
        utt_lists.append(utt_json)
        spk_lists.append(spk_json)

    for list_name, files in (("data.list", shard_files), ("utt2data.list", utt_lists), ("spk2data.list", spk_lists)):
        lines = [_relative_or_absolute(f, out_dir, absolute_paths) for f in files]
        (out_dir / list_name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    return ShardsResult(
        split_dir=out_dir,
        num_utts=len(utts),
        shard_files=shard_files,
        columns=[f.name for f in schema_fields],
        missing_features=missing_features,
        excluded=excluded,
        excluded_file=excluded_file if excluded else None,
    )


def _optional(value: Any, convert: Any) -> Any:
    return None if value is None else convert(value)


def _read_bytes(path: Path, split_dir: Path) -> bytes:
    """Raw file bytes of a wav.scp entry (see :func:`cosyml.data.kaldi.resolve_wav_path`)."""
    resolved = resolve_wav_path(path, split_dir)
    if not resolved.is_file():
        raise InputError(f"{path}: audio file listed in wav.scp is missing; rerun `cosyml prepare`")
    return resolved.read_bytes()


def read_data_list(list_file: str | Path) -> list[Path]:
    """Shard paths from a ``data.list`` (relative entries resolve against the list file's folder)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise InputError(f"{list_file}: not found; run `cosyml shards` first")
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            p = Path(line.strip())
            paths.append(p if p.is_absolute() else list_file.parent / p)
    return paths


def shard_metadata(shard: str | Path) -> dict[str, str]:
    """The key/value metadata stored in a shard's schema."""
    meta = pq.read_schema(shard).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"pandas")}


def iter_shard_rows(shards: list[Path], columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one dict per utterance from the given shards, in order (64-row record batches)."""
    for shard in shards:
        parquet = pq.ParquetFile(shard)
        for batch in parquet.iter_batches(batch_size=64, columns=columns):
            yield from batch.to_pylist()
