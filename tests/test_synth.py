"""The synthesis engine on the tiny kit: every mode, hot swap, seeds, streaming, batches, the CLI, bad input.

The kit's weights are random: these tests prove plumbing (shapes, which weights are used, determinism,
error handling), never voice quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyml.audio import read_audio, write_wav
from cosyml.cli import main
from cosyml.errors import CosymlError
from cosyml.kit.build import build_kit
from cosyml.kit.model_yaml import KitDims
from cosyml.models.flow import build_flow
from cosyml.models.llm import build_llm
from cosyml.models.modeldir import ModelDir, save_state_dict
from cosyml.synth.engine import SynthEngine
from cosyml.synth.errors import (
    EmptyTextError,
    NoSpeechError,
    PromptAudioError,
    SynthParamError,
    UnknownSpeakerError,
)
from cosyml.synth.request import SynthRequest
from cosyml.synth.token2wav import StreamSchedule

SAMPLES_PER_TOKEN = 2 * 480  # 2 mel frames per token, 480 samples per frame at 24 kHz
CAP = 24  # speech tokens per request: keeps every test short


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth_kit")
    model_dir = root / "model"
    build_kit(model_dir, seed=0, dims=KitDims())  # tiny everywhere (the flow too)
    gen = torch.Generator().manual_seed(7)
    torch.save(
        {
            "alice": {"embedding": torch.randn(1, 192, generator=gen)},
            "bob": {"embedding": torch.randn(1, 192, generator=gen)},
        },
        model_dir / "spk2info.pt",
    )
    md = ModelDir(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        other_llm = build_llm(md)
        other_llm.tie_weights()
        other_flow = build_flow(md.config)
    # A "fine-tuned" LLM as an upstream training checkpoint (weights + epoch/step) and another flow.
    llm_ckpt = root / "epoch_3_whole.pt"
    state = dict(other_llm.state_dict())
    torch.save({**state, "epoch": 3, "step": 120}, llm_ckpt)
    flow_pt = save_state_dict(other_flow, root / "flow_ft.pt")
    # An LLM that always stops at once: eos gets an overwhelming bias.
    mute = dict(state)
    bias = mute["llm_decoder.bias"].clone()
    bias[md.hparams.speech_token_size] = 1e4
    mute["llm_decoder.bias"] = bias
    mute_pt = root / "mute_llm.pt"
    torch.save(mute, mute_pt)

    t = np.arange(int(16000 * 2.5)) / 16000
    rng = np.random.default_rng(0)
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(
        t.size
    )
    prompt = root / "prompt.wav"
    write_wav(prompt, voice.astype(np.float32), 16000)
    short = root / "short.wav"
    write_wav(short, voice[:400].astype(np.float32), 16000)  # 25 ms: not one speech token
    long = root / "long.wav"
    write_wav(long, np.zeros(16000 * 31, dtype=np.float32), 16000)
    broken = root / "broken.wav"
    broken.write_text("this is not audio")
    return {
        "model_dir": model_dir,
        "llm_ckpt": llm_ckpt,
        "flow_pt": flow_pt,
        "mute_llm": mute_pt,
        "prompt": prompt,
        "short": short,
        "long": long,
        "broken": broken,
        "root": root,
    }


@pytest.fixture(scope="session")
def engine(kit: dict[str, Path]) -> SynthEngine:
    return SynthEngine.load(kit["model_dir"], device="cpu")


@pytest.fixture(autouse=True)
def _base_weights(engine: SynthEngine):
    engine.swap(llm="base", flow="base")
    yield


def sft(text: str = "Hello world, this is a test.", **kw) -> SynthRequest:
    fields = {"mode": "sft", "speaker": "alice", "seed": 1, "max_tokens": CAP, **kw}
    return SynthRequest(text=text, **fields)


def mode_request(mode: str, kit: dict[str, Path]) -> SynthRequest:
    common = {"text": "Good morning.", "seed": 3, "max_tokens": CAP}
    if mode == "sft":
        return SynthRequest(mode="sft", speaker="bob", **common)
    if mode == "zero_shot":
        return SynthRequest(mode="zero_shot", prompt_wav=kit["prompt"], prompt_text="a short prompt", **common)
    if mode == "cross_lingual":
        return SynthRequest(mode="cross_lingual", prompt_wav=kit["prompt"], **common)
    return SynthRequest(mode="instruct", instruct="speak slowly", prompt_wav=kit["prompt"], **common)


# ------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["sft", "zero_shot", "cross_lingual", "instruct"])
def test_every_mode_gives_24khz_audio_of_two_mel_frames_per_token(engine, kit, mode) -> None:
    result = engine.synthesize(mode_request(mode, kit))
    assert result.sample_rate == 24000
    assert result.wav.dtype == np.float32 and result.wav.ndim == 1
    assert 0 < len(result.tokens) <= CAP and all(0 <= t < 6561 for t in result.tokens)
    assert result.wav.shape[0] == len(result.tokens) * SAMPLES_PER_TOKEN
    assert np.isfinite(result.wav).all() and np.abs(result.wav).max() <= 0.99 + 1e-6
    assert result.timings.total_s > 0 and result.segments == ["Good morning."]


def test_modes_feed_different_prompts(engine, kit) -> None:
    """Same text and seed: the prompt changes what the LLM sees (zero_shot / instruct) or only the flow."""
    outs = {m: engine.synthesize(mode_request(m, kit)) for m in ("zero_shot", "cross_lingual", "instruct")}
    sft_other = engine.synthesize(
        SynthRequest(text="Good morning.", mode="sft", speaker="alice", seed=3, max_tokens=CAP)
    )
    sft_bob = engine.synthesize(mode_request("sft", kit))
    # cross_lingual and sft give the LLM the same input: identical tokens; the voice differs in the flow.
    assert outs["cross_lingual"].tokens == sft_bob.tokens == sft_other.tokens
    assert not np.allclose(sft_bob.wav, sft_other.wav)
    assert outs["zero_shot"].tokens != outs["cross_lingual"].tokens
    assert outs["instruct"].tokens != outs["cross_lingual"].tokens


def test_instruct_with_a_stored_speaker_and_speaker_files(engine, kit, tmp_path) -> None:
    result = engine.synthesize(
        SynthRequest(text="Hi there.", mode="instruct", instruct="whisper", speaker="bob", max_tokens=CAP)
    )
    assert result.wav.shape[0] == len(result.tokens) * SAMPLES_PER_TOKEN
    # spk2embedding.pt from `cosyml extract` ({name: list of 192 floats}) and a lone embedding tensor
    spk2emb = tmp_path / "spk2embedding.pt"
    torch.save({"carol": torch.linspace(-1, 1, 192).tolist()}, spk2emb)
    lone = tmp_path / "dave.pt"
    torch.save(torch.ones(192), lone)
    a = engine.synthesize(SynthRequest(text="Hi there.", speaker="carol", speaker_file=spk2emb, seed=2, max_tokens=CAP))
    b = engine.synthesize(SynthRequest(text="Hi there.", speaker_file=lone, seed=2, max_tokens=CAP))
    assert a.tokens == b.tokens and not np.allclose(a.wav, b.wav)


def test_a_stored_zero_shot_speaker_equals_its_prompt_wav(engine, kit, tmp_path) -> None:
    """An upstream-style spk2info entry (what add_zero_shot_spk stores) replays the prompt exactly."""
    feats = engine.prompt.features(kit["prompt"])
    prompt_ids = engine.text.encode(engine.text.prompt_text("a short prompt", True))
    entry = {
        "prompt_text": prompt_ids[None].int(),
        "llm_prompt_speech_token": feats.tokens.int(),
        "flow_prompt_speech_token": feats.tokens.int(),
        "prompt_speech_feat": feats.feat,
        "llm_embedding": feats.embedding,
        "flow_embedding": feats.embedding,
    }
    spk2info = tmp_path / "spk2info.pt"
    torch.save({"eve": entry}, spk2info)
    stored = engine.synthesize(
        SynthRequest(
            text="Good morning.", mode="zero_shot", speaker="eve", speaker_file=spk2info, seed=3, max_tokens=CAP
        )
    )
    from_wav = engine.synthesize(mode_request("zero_shot", kit))
    assert stored.tokens == from_wav.tokens and np.array_equal(stored.wav, from_wav.wav)


def test_instruct_text_is_not_normalised_and_ends_in_endofprompt(engine) -> None:
    assert engine.text.instruct_text("用四川话说这句话") == "用四川话说这句话<|endofprompt|>"
    assert engine.text.instruct_text("Speak 2 times slower<|endofprompt|>") == "Speak 2 times slower<|endofprompt|>"
    ids = engine.text.encode(engine.text.instruct_text("slowly"))
    assert ids[-1].item() == engine.text.tokenizer.token_id("<|endofprompt|>")


# ------------------------------------------------------------------------------------------- seeds, swap


def test_seeded_runs_are_reproducible_and_seeds_matter(engine) -> None:
    first, again = engine.synthesize(sft()), engine.synthesize(sft())
    assert first.tokens == again.tokens and np.array_equal(first.wav, again.wav)
    other = engine.synthesize(sft().replace(seed=2))
    assert other.tokens != first.tokens
    unseeded = engine.synthesize(sft().replace(seed=None))
    assert engine.synthesize(sft().replace(seed=unseeded.seed)).tokens == unseeded.tokens


def test_hot_swap_uses_the_swapped_part_and_only_it(engine, kit) -> None:
    base = engine.synthesize(sft())
    assert engine.weights["llm"] == "base" and engine.weights["flow"] == "base"

    engine.swap(flow=kit["flow_pt"])
    flow_swapped = engine.synthesize(sft())
    assert engine.weights["flow"] == str(kit["flow_pt"].resolve())
    assert flow_swapped.tokens == base.tokens  # the LLM is untouched
    assert not np.allclose(flow_swapped.wav, base.wav)

    engine.swap(llm=kit["llm_ckpt"], flow="base")  # training checkpoint with epoch/step
    llm_swapped = engine.synthesize(sft())
    assert llm_swapped.tokens != base.tokens
    assert llm_swapped.weights == {"llm": str(kit["llm_ckpt"].resolve()), "flow": "base", "hift": "base"}

    restored = engine.synthesize(sft().replace(llm="base"))  # per-request weights
    assert restored.tokens == base.tokens and np.array_equal(restored.wav, base.wav)


def test_swap_to_a_file_of_the_wrong_part_fails_in_one_line_and_keeps_weights(engine, kit) -> None:
    before = engine.synthesize(sft())
    with pytest.raises(CosymlError) as info:
        engine.swap(llm=kit["flow_pt"])
    assert "\n" not in str(info.value) and "does not match" in str(info.value)
    assert engine.weights["llm"] == "base"
    assert engine.synthesize(sft()).tokens == before.tokens


# ------------------------------------------------------------------------------------------- stream, speed, split


def test_stream_chunks_match_the_non_stream_length_and_tokens(engine) -> None:
    request = sft(max_tokens=90)
    whole = engine.synthesize(request)
    stream = engine.stream(request)
    chunks = list(stream)
    assert stream.result is not None and stream.result.tokens == whole.tokens
    n = len(whole.tokens)
    assert n == 90
    sizes = [c.wav.shape[0] for c in chunks]
    # hop 25 (+3 look-ahead) then 50: chunks of 25 and 50 tokens, the first minus the held-back 3840 samples
    assert sizes[0] == 25 * SAMPLES_PER_TOKEN - 3840 and sizes[1] == 50 * SAMPLES_PER_TOKEN
    assert sum(sizes) == whole.wav.shape[0] == n * SAMPLES_PER_TOKEN
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.wav.dtype == np.float32 for c in chunks)
    joined = np.concatenate([c.wav for c in chunks])
    assert np.array_equal(joined, stream.result.wav) and np.isfinite(joined).all()
    # continuity: steps across chunk boundaries are no larger than the steps inside the chunks (a boundary
    # step is joined[b] - joined[b - 1], i.e. steps[b - 1]; the interior excludes those)
    steps = np.abs(np.diff(joined))
    bounds = np.cumsum(sizes)[:-1]
    interior = np.delete(steps, bounds - 1)
    assert steps[bounds - 1].max() <= interior.max()
    assert stream.result.timings.first_chunk_s is not None
    # the schedule starts over on every call (upstream keeps the doubled hop between calls)
    assert [c.wav.shape[0] for c in engine.stream(request)] == sizes


def test_a_stream_shorter_than_one_hop_equals_the_whole_render(engine) -> None:
    request = sft(max_tokens=20)
    whole = engine.synthesize(request)
    chunks = list(engine.stream(request))
    assert len(chunks) == 1 and np.array_equal(chunks[0].wav, whole.wav)


def test_stream_schedule_pads_the_first_hop_to_the_prompt() -> None:
    schedule = StreamSchedule(chunk_size=25, pre_lookahead=3, prompt_tokens=60)
    assert schedule.this_hop == 25 + 15  # 60 + 40 = 100, a chunk boundary
    assert not schedule.due(42) and schedule.due(43)
    schedule.advance()
    assert (schedule.offset, schedule.this_hop) == (40, 50)


def test_speed_stretches_the_mel(engine) -> None:
    normal = engine.synthesize(sft())
    fast = engine.synthesize(sft(speed=2.0))
    assert fast.tokens == normal.tokens
    assert fast.wav.shape[0] == int(len(normal.tokens) * 2 / 2.0) * 480
    with pytest.raises(SynthParamError):
        engine.stream(sft(speed=1.5))


def test_text_is_one_segment_unless_split_is_asked(engine) -> None:
    text = " ".join(
        f"This is sentence number {w} of a long paragraph about nothing."
        for w in ["one", "two", "three", "four", "five", "six"]
    )
    whole = engine.synthesize(sft(text))
    assert len(whole.segments) == 1 and whole.segments[0].startswith("This is sentence number one")
    split = engine.synthesize(sft(text, split_sentences=True))
    assert len(split.segments) > 1 and len(split.segment_tokens) == len(split.segments)
    assert split.wav.shape[0] == len(split.tokens) * SAMPLES_PER_TOKEN
    raw = engine.synthesize(sft("Room 101 costs 5 dollars.", normalize=False))
    assert raw.segments == ["Room 101 costs 5 dollars."]


def test_batch_reports_a_bad_request_and_finishes_the_others(engine, kit) -> None:
    requests = [sft("First one."), sft("Second.").replace(speaker="nobody"), sft("Third one.")]
    results = engine.synthesize_batch(requests)
    assert isinstance(results[1], UnknownSpeakerError)
    assert results[0].wav.size > 0 and results[2].wav.size > 0


def test_batched_decoding_gives_the_tokens_of_one_by_one_decoding(engine, kit) -> None:
    requests = [mode_request(m, kit) for m in ("sft", "zero_shot", "cross_lingual", "instruct")]
    requests.append(sft("A somewhat longer text, with a few more words in it.", seed=9, max_tokens=40))
    one_by_one = [engine.synthesize(r) for r in requests]
    batched = engine.synthesize_batch(requests, batch_size=3)
    for single, together in zip(one_by_one, batched, strict=True):
        assert together.tokens == single.tokens
        assert np.array_equal(together.wav, single.wav)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "needle"),
    [
        (lambda k: sft().replace(speaker="nobody"), UnknownSpeakerError, "known speakers: alice, bob"),
        (lambda k: sft("   "), EmptyTextError, "empty"),
        (lambda k: sft("?!..."), EmptyTextError, "nothing speakable"),
        (
            lambda k: SynthRequest(text="Hi.", mode="cross_lingual", prompt_wav=k["root"] / "missing.wav"),
            PromptAudioError,
            "not found",
        ),
        (
            lambda k: SynthRequest(text="Hi.", mode="cross_lingual", prompt_wav=k["broken"]),
            PromptAudioError,
            "cannot decode",
        ),
        (
            lambda k: SynthRequest(text="Hi.", mode="cross_lingual", prompt_wav=k["short"]),
            PromptAudioError,
            "too short",
        ),
        (
            lambda k: SynthRequest(text="Hi.", mode="cross_lingual", prompt_wav=k["long"]),
            PromptAudioError,
            "at most 30 s",
        ),
        (lambda k: sft(speed=0.0), SynthParamError, "speed"),
        (lambda k: sft(speed=-1.0), SynthParamError, "speed"),
        (
            lambda k: SynthRequest(text="Hi.", mode="zero_shot", prompt_wav=k["prompt"]),
            SynthParamError,
            "--prompt-text",
        ),
        (lambda k: sft(llm=str(k["mute_llm"]), min_token_text_ratio=0.0), NoSpeechError, "no speech tokens"),
    ],
)
def test_bad_input_is_one_line(engine, kit, make, error, needle) -> None:
    with pytest.raises(error) as info:
        engine.synthesize(make(kit))
    assert "\n" not in str(info.value) and needle in str(info.value)


def test_errors_of_the_background_decoder_reach_the_stream_consumer(engine, kit) -> None:
    with pytest.raises(NoSpeechError):
        list(engine.stream(sft(llm=str(kit["mute_llm"]), min_token_text_ratio=0.0)))
    stream = iter(engine.stream(sft(max_tokens=90)))
    next(stream)
    stream.close()  # leaving early stops the decoder thread
    assert engine.synthesize(sft()).tokens == engine.synthesize(sft()).tokens


def test_request_objects_from_json_reject_unknown_keys_and_wrong_types() -> None:
    request = SynthRequest.from_dict({"text": "Hi.", "speaker": "alice", "seed": 4, "speed": 1}, "x.jsonl:1")
    assert request.speed == 1.0 and request.seed == 4
    with pytest.raises(SynthParamError, match=r"x.jsonl:2: unknown key\(s\) voice"):
        SynthRequest.from_dict({"text": "Hi.", "voice": "alice"}, "x.jsonl:2")
    with pytest.raises(SynthParamError, match="'seed' must be an integer"):
        SynthRequest.from_dict({"text": "Hi.", "seed": "4"}, "x.jsonl:3")
    with pytest.raises(SynthParamError, match="needs --speaker"):
        SynthRequest(text="Hi.").validate()


# ------------------------------------------------------------------------------------------- CLI


def test_cli_batch_of_all_modes_with_one_bad_request(kit, tmp_path, capsys) -> None:
    lines = [
        {"text": "Good morning.", "mode": "sft", "speaker": "alice"},
        {"text": "Good morning.", "prompt_wav": "prompt.wav", "prompt_text": "a short prompt"},  # auto: zero_shot
        {"text": "Good morning.", "prompt_wav": "prompt.wav"},  # auto: cross_lingual
        {"text": "Good morning.", "instruct": "speak slowly", "speaker": "bob", "name": "instructed"},
        {"text": "Good morning.", "speaker": "nobody"},
        {"text": "Good morning.", "speaker": "alice", "llm": str(kit["llm_ckpt"])},  # per-line weights
    ]
    requests = kit["root"] / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "batch"
    code = main(
        [
            "synth",
            "--model-dir",
            str(kit["model_dir"]),
            "--requests",
            str(requests),
            "--out-dir",
            str(out),
            "--seed",
            "5",
            "--max-tokens",
            str(CAP),
            "--no-log-text",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "1 failed" in err and "unknown speaker 'nobody'" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.wav")) == [
        "0001.wav",
        "0002.wav",
        "0003.wav",
        "0006.wav",
        "instructed.wav",
    ]
    log = json.loads((out / "run.json").read_text())
    assert [i["status"] for i in log["items"]] == ["ok", "ok", "ok", "ok", "error", "ok"]
    assert [i["weights"]["llm"] for i in log["items"] if i["status"] == "ok"] == ["base"] * 4 + [
        str(kit["llm_ckpt"].resolve())
    ]
    assert [i["request"]["mode"] for i in log["items"][:4]] == ["sft", "zero_shot", "cross_lingual", "instruct"]
    assert [i["seed"] for i in log["items"][:4]] == [5, 6, 7, 8]
    assert "Good morning" not in (out / "run.json").read_text()  # --no-log-text
    audio = read_audio(out / "0001.wav")
    assert audio.sample_rate == 24000 and audio.num_samples == log["items"][0]["num_tokens"] * SAMPLES_PER_TOKEN


def test_cli_single_sft_with_swapped_weights_and_stream(kit, tmp_path, capsys) -> None:
    out = tmp_path / "one" / "out.wav"
    code = main(
        [
            "synth",
            "--model-dir",
            str(kit["model_dir"]),
            "--llm",
            str(kit["llm_ckpt"]),
            "--mode",
            "sft",
            "--speaker",
            "alice",
            "--text",
            "Hello there.",
            "--out",
            str(out),
            "--seed",
            "1",
            "--max-tokens",
            "40",
            "--stream",
        ]
    )
    assert code == 0 and out.is_file()
    assert "first chunk" in capsys.readouterr().out
    log = json.loads((out.parent / "out.run.json").read_text())
    assert log["items"][0]["sampling"]["top_k"] == 25 and log["items"][0]["seed"] == 1
    assert log["weights"]["llm"] == str(kit["llm_ckpt"].resolve()) and log["weights"]["flow"] == "base"
    assert log["items"][0]["request"]["text"] == "Hello there." and log["flags"]["stream"] is True
    assert log["items"][0]["stream_chunks"][0] == 25 * SAMPLES_PER_TOKEN - 3840


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--speaker", "nobody"], "known speakers: alice, bob"),
        (["--speaker", "alice", "--speed", "0"], "speed must be a positive number"),
        (["--mode", "zero_shot", "--prompt-wav", "nowhere.wav", "--prompt-text", "x"], "prompt wav not found"),
    ],
)
def test_cli_bad_single_request_is_one_line(kit, tmp_path, capsys, extra, needle) -> None:
    code = main(
        [
            "synth",
            "--model-dir",
            str(kit["model_dir"]),
            "--text",
            "Hi.",
            "--out",
            str(tmp_path / "x.wav"),
            "--max-tokens",
            "5",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err


@pytest.mark.parametrize(
    "case",
    [
        "binary_text_file",
        "latin1_text_file",
        "out_under_a_file",
        "out_is_a_folder",
        "seed_overflow",
        "batch_seed_overflow",
    ],
)
def test_cli_bad_files_and_seeds_are_one_line_without_traceback(kit, tmp_path, capsys, case) -> None:
    """Before: a binary --text-file, an unwritable --out and a seed beyond 64 bits ended in tracebacks."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("Hi.\n")
    single = ["--text", "Hi.", "--speaker", "alice", "--max-tokens", "5"]
    argv, needle = {
        "binary_text_file": (
            ["--text-file", str(tmp_path / "binary.txt"), "--out-dir", str(tmp_path / "o")],
            "a binary file, not text",
        ),
        "latin1_text_file": (
            ["--text-file", str(tmp_path / "latin1.txt"), "--out-dir", str(tmp_path / "o")],
            "not UTF-8 text",
        ),
        "out_under_a_file": ([*single, "--out", str(tmp_path / "a_file" / "x.wav")], "cannot write there"),
        "out_is_a_folder": ([*single, "--out", str(tmp_path)], "is a folder"),
        "seed_overflow": (
            [*single, "--out", str(tmp_path / "x.wav"), "--seed", str(2**64)],
            "--seed must be from 0 to",
        ),
        "batch_seed_overflow": (
            [
                "--text-file",
                str(tmp_path / "ok.txt"),
                "--out-dir",
                str(tmp_path / "o"),
                "--speaker",
                "alice",
                "--seed",
                str(2**80),
            ],
            "--seed must be from 0 to",
        ),
    }[case]
    code = main(["synth", "--model-dir", str(kit["model_dir"]), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_one_rule_gives_a_request_its_mode_in_the_cli_the_server_and_the_suite():
    """Before: the CLI, the served pyfunc and the evaluation suite each had their own copy of the rule (and
    disagreed on a blank prompt transcript)."""
    from cosyml.commands.synth import _build
    from cosyml.evaluation.suite import synthesis_mode
    from cosyml.evaluation.testset import TestItem
    from cosyml.synth.request import infer_mode

    assert infer_mode(None, None, None) == "sft"
    assert infer_mode("speak softly", "p.wav", "hi") == "instruct"
    assert infer_mode(None, "p.wav", "hi") == "zero_shot"
    assert infer_mode(None, "p.wav", "  ") == "cross_lingual"  # a blank transcript is no transcript
    assert _build({"text": "hi", "prompt_wav": "p.wav", "prompt_text": " "}, "cli").mode == "cross_lingual"
    item = TestItem(utt="u", text="hi", language="en", prompt_wav=Path("p.wav"), prompt_text="hi")
    assert synthesis_mode("zero_shot/en", item) == "zero_shot"
    assert synthesis_mode("cross_lingual/en", item) == "cross_lingual"
