"""RAS sampling: nucleus set, repetition exclusion, seeding."""

from __future__ import annotations

import torch

from cosyml.models.generation import SamplingParams, full_sample, nucleus_sample, ras_sample


def log_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_nucleus_keeps_the_entry_that_crosses_top_p_and_no_more() -> None:
    scores = log_probs([0.5, 0.25, 0.15, 0.1])  # before-sums 0, .5, .75, .9: ids 0, 1, 2 kept at top_p .8
    g = torch.Generator().manual_seed(0)
    drawn = {nucleus_sample(scores, 0.8, 25, g) for _ in range(400)}
    assert drawn == {0, 1, 2}


def test_nucleus_respects_top_k() -> None:
    scores = torch.zeros(50)  # uniform: top_p would keep 40 ids
    g = torch.Generator().manual_seed(0)
    drawn = {nucleus_sample(scores, 0.8, 3, g) for _ in range(300)}
    assert len(drawn) == 3


def test_draws_follow_the_kept_probabilities() -> None:
    scores = log_probs([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(1)
    draws = [nucleus_sample(scores, 0.85, 25, g) for _ in range(3000)]
    share0 = draws.count(0) / len(draws)
    assert abs(share0 - 0.6 / 0.9) < 0.05  # un-renormalised kept set {0, 1}: 0.6 of 0.9


def test_repeat_in_window_is_excluded_and_redrawn_from_the_full_distribution() -> None:
    params = SamplingParams(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        scores = log_probs([0.9, 0.05, 0.05])  # nucleus always picks 0 ...
        token = ras_sample(scores, decoded=[2, 0], params=params, generator=g)
        assert token in (1, 2)  # ... which was just decoded, so it is excluded
        assert scores[0] == -float("inf")
    scores = log_probs([0.9, 0.05, 0.05])
    assert ras_sample(scores, decoded=[0] + [1] * 10, params=params, generator=g) == 0  # out of the window


def test_same_seed_same_draws() -> None:
    scores = torch.randn(6564, generator=torch.Generator().manual_seed(3)).log_softmax(0)
    a = [full_sample(scores, torch.Generator().manual_seed(9)) for _ in range(3)]
    b = [full_sample(scores, torch.Generator().manual_seed(9)) for _ in range(3)]
    assert a == b


def test_params_from_yaml_kwargs() -> None:
    assert SamplingParams.from_kwargs({"top_k": 10, "tau_r": "0.2"}) == SamplingParams(top_k=10, tau_r=0.2)
