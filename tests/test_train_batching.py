"""Batching: utterance partitioning, filters, deterministic epoch plans, upstream's batch dict."""

from __future__ import annotations

import pytest
import torch
from train_helpers import encode_text, load_set, write_corpus

from cosyml.config import TrainDataConfig
from cosyml.errors import InputError
from cosyml.train.batching import UtteranceSet, default_featurizer, dynamic_batches


@pytest.fixture(scope="module")
def data_list(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 13)


def test_dynamic_batches_respect_the_padded_frame_budget():
    lengths = [10, 20, 30, 40, 100, 250]
    batches = dynamic_batches(range(6), lengths, max_frames_in_batch=100)
    assert batches == [[0, 1, 2], [3], [4], [5]]  # 30 x 3 = 90 fits; 40 x 4 would not; 250 alone
    for batch in batches[:-1]:
        assert max(lengths[i] for i in batch) * len(batch) <= 100


def test_ranks_partition_utterances_not_shards(data_list):
    whole = load_set(data_list)
    ranks = [load_set(data_list, rank=r, world_size=3) for r in range(3)]
    names = [sorted(s.utt for s in part.samples) for part in ranks]
    assert sorted(u for n in names for u in n) == sorted(s.utt for s in whole.samples)  # every utterance exactly once
    assert all(len(n) >= 4 for n in names)  # 13 utterances in 3 shards of 5: no rank starves


def test_epoch_plan_is_a_function_of_seed_and_epoch(data_list):
    data = load_set(data_list)
    plan = data.plan(seed=7, epoch=2)
    assert plan == load_set(data_list).plan(seed=7, epoch=2)
    assert plan != data.plan(seed=7, epoch=3)
    assert sorted(i for batch in plan for i in batch) == list(range(len(data)))
    for batch in plan:
        lengths = [data.samples[i].num_frames for i in batch]
        assert len(batch) == 1 or max(lengths) * len(batch) <= 300


def test_filters_drop_and_count(tmp_path):
    # 0.5 s is below min_length (1 s); the others are kept
    data_list = write_corpus(tmp_path, 6, durations=[0.5, 1.5, 1.5, 1.5, 1.5, 1.5])
    data = load_set(data_list, token_max_length=5)
    # text lengths are 3 + i % 7 -> utts 3, 4, 5 have 6, 7, 8 tokens (> 5)
    assert data.dropped == {"too_short": 1, "text_tokens_out_of_range": 3}
    assert sorted(s.utt for s in data.samples) == ["spk_0001", "spk_0002"]


def test_missing_data_list_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"data\.list: not found"):
        load_set(tmp_path / "data.list")


def test_collate_builds_upstreams_batch_dict_with_the_real_mel(data_list):
    cfg = TrainDataConfig(max_frames_in_batch=10_000, use_spk_embedding=True)
    data = UtteranceSet.load(data_list, default_featurizer(encode_text), cfg)
    (indices,) = data.plan(seed=0, epoch=0, shuffle=False)
    batch = data.batch(indices)
    b = len(indices)
    assert batch["text_token"].dtype == torch.int64 and batch["text_token_len"].dtype == torch.int32
    assert batch["speech_feat"].shape[0] == b and batch["speech_feat"].shape[2] == 80
    assert batch["speech_feat"].shape[1] == int(batch["speech_feat_len"].max())
    # the trim rule: mel frames == 2 x speech tokens for every utterance
    assert torch.equal(batch["speech_feat_len"], 2 * batch["speech_token_len"])
    assert batch["embedding"].shape == (b, 192) and torch.equal(batch["embedding"], batch["spk_embedding"])
    assert torch.allclose(batch["utt_embedding"].norm(dim=1), torch.ones(b))
    # longest first; padding is zero
    lengths = batch["speech_feat_len"].tolist()
    assert lengths == sorted(lengths, reverse=True)
    shortest = int(batch["speech_feat_len"][-1])
    assert batch["speech_feat"][-1, shortest:].abs().sum() == 0
    assert len(batch["utts"]) == b and batch["text"][0]
