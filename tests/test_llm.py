"""The LLM module: sequence layouts, loss, decoding, and the official key set at full size."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config

from cosyml.errors import InputError
from cosyml.kit.model_yaml import OFFICIAL_QWEN_VOCAB, OFFICIAL_V2_DIMS, qwen_config_dict, write_model_yaml
from cosyml.models.keys import TIED_KEYS
from cosyml.models.llm import IGNORE_ID, LLMConfig, Qwen2LM
from cosyml.models.modeldir import load_state_dict_file, load_strict, save_state_dict
from cosyml.models.yaml_io import read_model_yaml

TSV = Path(__file__).parent / "fixtures" / "upstream-state-dicts.tsv"
S = 30  # speech_token_size of the toy model


def official_keys(version: str, file: str) -> dict[str, tuple[int, ...]]:
    out = {}
    with TSV.open() as f:
        for row in csv.reader((line for line in f if not line.startswith("#")), delimiter="\t"):
            if row[0] == version and row[1] == file:
                out[row[2]] = tuple(int(d) for d in row[3].split("x")) if row[3] else ()
    return out


def tiny_qwen(vocab: int = 100, hidden: int = 32) -> Qwen2Config:
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return config


def tiny_llm(version: str = "v2", seed: int = 0, vocab: int = 100) -> Qwen2LM:
    torch.manual_seed(seed)
    cfg = LLMConfig(version=version, llm_input_size=32, llm_output_size=32, speech_token_size=S)  # type: ignore[arg-type]
    return Qwen2LM(cfg, tiny_qwen(vocab))


def toy_batch(text_len: list[int], speech_len: list[int]) -> dict[str, torch.Tensor]:
    b = len(text_len)
    text = torch.zeros(b, max(text_len), dtype=torch.long)
    speech = torch.zeros(b, max(speech_len), dtype=torch.long)
    for i in range(b):
        text[i, : text_len[i]] = torch.arange(1, text_len[i] + 1)
        speech[i, : speech_len[i]] = torch.arange(speech_len[i]) % S
    return {
        "text_token": text,
        "text_token_len": torch.tensor(text_len, dtype=torch.int32),
        "speech_token": speech,
        "speech_token_len": torch.tensor(speech_len, dtype=torch.int32),
    }


# ---------------------------------------------------------------------------------------------
# sequence layouts


def test_bistream_layout_matches_the_documented_example() -> None:
    model = tiny_llm()
    batch = toy_batch([12], [40])
    speech = batch["speech_token"][0].tolist()
    _, target, lengths = model.build_sequences(batch, mode="bistream")
    eos, fill = S, S + 2
    expected = [-1] + [-1] * 4 + speech[0:15] + [fill] + [-1] * 4 + speech[15:30] + [fill] + [-1] * 2
    expected += [*speech[30:40], eos]
    assert lengths.tolist() == [54]
    assert target[0].tolist() == expected


def test_unistream_layout_and_padding() -> None:
    model = tiny_llm()
    batch = toy_batch([12, 3], [40, 5])
    inputs, target, lengths = model.build_sequences(batch, mode="unistream")
    assert lengths.tolist() == [1 + 12 + 1 + 40 + 0, 1 + 3 + 1 + 5]
    assert target[0].tolist() == [-1] * 13 + batch["speech_token"][0].tolist() + [S]
    assert target[1, 10:].eq(IGNORE_ID).all()
    assert inputs[1, 10:].eq(-1.0).all()  # inputs are padded with -1.0 like upstream
    sos, task = model.llm_embedding.weight
    assert torch.equal(inputs[0, 0], sos) and torch.equal(inputs[0, 13], task)
    assert torch.equal(inputs[1, 5], model.speech_embedding.weight[batch["speech_token"][1, 0]])


def test_bistream_only_when_speech_per_text_exceeds_the_ratio() -> None:
    model = tiny_llm()
    # 15/5 = 3: exactly 3x is not eligible, more is.
    assert model.choose_bistream([5, 5, 0], [15, 16, 1], mode="bistream") == [False, True, True]
    assert model.choose_bistream([5], [40], mode="unistream") == [False]


def test_mixed_mode_is_reproducible_and_uses_both_layouts() -> None:
    model = tiny_llm()
    picks = [model.choose_bistream([5] * 64, [40] * 64, "mixed", torch.Generator().manual_seed(s)) for s in (1, 1)]
    assert picks[0] == picks[1]
    assert 10 < sum(picks[0]) < 54


def test_v3_layout_needs_instruct_and_puts_it_after_sos() -> None:
    model = tiny_llm("v3")
    batch = toy_batch([4], [10])
    with pytest.raises(InputError, match="instruct_token"):
        model.build_sequences(batch, mode="unistream")
    batch.update(instruct_token=torch.tensor([[7, 8]]), instruct_token_len=torch.tensor([2], dtype=torch.int32))
    inputs, target, lengths = model.build_sequences(batch, mode="unistream")
    assert lengths.tolist() == [1 + 2 + 4 + 1 + 10]
    assert torch.equal(inputs[0, 0], model.speech_embedding.weight[S])  # v3 sos lives in speech_embedding
    assert torch.equal(inputs[0, 1], model.text_embedding.weight[7])
    assert target[0, -1].item() == S + 1  # v3 eos


# ---------------------------------------------------------------------------------------------
# training and decoding


def test_loss_falls_and_gradients_reach_every_embedding() -> None:
    model = tiny_llm()
    batch = toy_batch([6, 4], [25, 9])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for step in range(12):
        out = model(batch, mode="mixed", generator=torch.Generator().manual_seed(step))
        if step == 0:
            first = out.loss.item()
            out.loss.backward()
            for name in ("llm_embedding.weight", "speech_embedding.weight", "llm_decoder.weight"):
                assert model.get_parameter(name).grad.abs().sum() > 0, name
            assert model.text_embedding.weight.grad.abs().sum() > 0
        else:
            out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert 0.0 <= out.acc.item() <= 1.0
    assert out.loss.item() < 0.5 * first


def test_decode_is_seeded_bounded_and_respects_min_length() -> None:
    model = tiny_llm().eval()
    text = torch.tensor([3, 4, 5])

    def run(seed: int) -> list[int]:
        return list(model.inference(text, generator=torch.Generator().manual_seed(seed)))

    a, b = run(5), run(5)
    assert a == b
    assert all(0 <= t < S for t in a)
    assert 6 <= len(a) <= 60  # min 2x, max 20x the text length (eos masked before min_len)
    with torch.no_grad():
        model.llm_decoder.bias[S] = 100.0  # eos dominates: stops right at min_len
    assert len(run(1)) == 6


def test_v3_decode_requires_end_of_prompt() -> None:
    model = tiny_llm("v3").eval()
    with pytest.raises(InputError, match="endofprompt"):
        next(model.inference(torch.tensor([1, 2, 3])))


# ---------------------------------------------------------------------------------------------
# build from a model yaml; official key sets


def test_build_llm_from_kit_yaml(tmp_path: Path) -> None:
    from cosyml.models.llm import build_llm

    write_model_yaml(tmp_path / "cosyvoice2.yaml")
    config = read_model_yaml(tmp_path / "cosyvoice2.yaml")
    model = build_llm(config, qwen_config=tiny_qwen(hidden=64), device="meta")
    assert model.config.speech_token_size == 6561 and model.config.mix_ratio == (5, 15)
    assert model.llm_decoder.out_features == 6564 and model.llm_decoder.bias is not None


def full_size_llm(version: str, device: str) -> Qwen2LM:
    qwen = Qwen2Config(**qwen_config_dict(OFFICIAL_V2_DIMS, OFFICIAL_QWEN_VOCAB))
    cfg = LLMConfig(version=version)  # type: ignore[arg-type]
    with torch.device(device):
        return Qwen2LM(cfg, qwen)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_full_size_llm_has_the_official_keys_and_shapes(version: str) -> None:
    model = full_size_llm(version, "meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_keys(version, "llm.pt")


def _full_size_part(part: str):
    from cosyml.kit.model_yaml import _yaml_text

    config = read_model_yaml_text(_yaml_text(OFFICIAL_V2_DIMS))
    if part == "flow":
        from cosyml.models.flow.flow import build_flow

        return build_flow(config)
    from cosyml.models.vocoder import build_hift

    return build_hift(config)


def read_model_yaml_text(text: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cosyvoice2.yaml"
        path.write_text(text)
        return read_model_yaml(path)


@pytest.mark.parametrize("part", ["flow", "hift"])
def test_full_size_v2_flow_and_hift_have_the_official_keys_and_shapes(part: str) -> None:
    with torch.device("meta"):
        module = _full_size_part(part)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == official_keys("v2", f"{part}.pt")


@pytest.mark.slow
def test_full_size_v2_llm_saves_once_and_loads_back_strictly(tmp_path: Path) -> None:
    model = full_size_llm("v2", "meta")
    model.to_empty(device="cpu")  # uninitialised weights: the round trip, not the values, is tested
    model.tie_weights()
    with torch.no_grad():
        model.llm_decoder.bias.fill_(0.25)
    path = save_state_dict(model, tmp_path / "llm.pt")
    size = path.stat().st_size
    assert 2.00e9 < size < 2.05e9, size  # tied embed_tokens / lm_head stored once (2.57 GB otherwise)
    state = load_state_dict_file(path)
    for alias, source in TIED_KEYS.items():
        assert state[alias].untyped_storage().data_ptr() == state[source].untyped_storage().data_ptr()
    assert {k: tuple(v.shape) for k, v in state.items()} == official_keys("v2", "llm.pt")
    assert all(v.dtype == torch.float32 for v in state.values())
    del state
    reloaded = full_size_llm("v2", "meta")
    reloaded.to_empty(device="cpu")
    reloaded.tie_weights()
    load_strict(reloaded, path)
    assert reloaded.llm_decoder.bias.eq(0.25).all()


@pytest.mark.slow
@pytest.mark.parametrize("part", ["flow", "hift"])
def test_full_size_v2_flow_and_hift_save_and_load_back_strictly(part: str, tmp_path: Path) -> None:
    with torch.device("meta"):
        module = _full_size_part(part)
    module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():  # finite values, so equality below is meaningful
            tensor.uniform_(-1.0, 1.0, generator=generator)
    path = save_state_dict(module, tmp_path / f"{part}.pt")
    state = load_state_dict_file(path, part=part)
    assert {k: tuple(v.shape) for k, v in state.items()} == official_keys("v2", f"{part}.pt")
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    with torch.device("meta"):
        reloaded = _full_size_part(part)
    reloaded.to_empty(device="cpu")
    load_strict(reloaded, path, part=part)
    loaded = reloaded.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
