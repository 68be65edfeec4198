"""Parameter values are validated, not just their types: one line naming the key."""

from __future__ import annotations

import pytest

from cosyml.config import Params, with_overrides
from cosyml.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("prepare.target_peak=5", "prepare.target_peak"),
        ("prepare.target_peak=0", "prepare.target_peak"),
        ("prepare.sample_rate=0", "prepare.sample_rate"),
        ("prepare.dev_ratio=2", "prepare.dev_ratio"),
        ("prepare.dev_ratio=1", "prepare.dev_ratio"),
        ("prepare.min_rms_dbfs=.nan", "prepare.min_rms_dbfs"),
        ("prepare.max_duration_s=.inf", "prepare.max_duration_s"),
        ("prepare.min_duration_s=40", "prepare.min_duration_s"),
        ("prepare.whisper_batch_size=0", "prepare.whisper_batch_size"),
        ("extract.batch_size=0", "extract.batch_size"),
        ("extract.checkpoint_every=-1", "extract.checkpoint_every"),
        ("extract.device=gpu", "extract.device"),
        ("shards.utts_per_shard=0", "shards.utts_per_shard"),
        ("shards.min_shards=0", "shards.min_shards"),
        ("train.lr=.nan", "train.lr"),
    ],
)
def test_out_of_range_values_are_one_line(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        with_overrides(Params(), [override])
    assert str(err.value).startswith(key + ":") and "\n" not in str(err.value)


def test_defaults_and_edges_are_accepted() -> None:
    params = with_overrides(Params(), ["prepare.dev_ratio=0", "prepare.target_peak=1", "shards.utts_per_shard=1"])
    assert params.prepare.dev_ratio == 0.0 and params.shards.utts_per_shard == 1
