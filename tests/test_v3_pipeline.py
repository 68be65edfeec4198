"""CosyVoice3 end to end on the tiny v3 kit, through the CLI: prepare (with the v3 instruct text), extract
(speech_tokenizer_v3.onnx), shards, train the LLM and the flow one epoch each (per-epoch samples go
through the v3 engine), then synthesise with the trained weights. Random weights: plumbing, not quality.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch

from cosyml.cli import main

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy_speaker"
INSTRUCT = "You are a helpful assistant.<|endofprompt|>"


def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("v3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSYML_TRACKING", "off")
        _run(["kit", str(root / "kit"), "--version", "cosyvoice3"])
        yield root


def test_the_v3_kit_is_recognised_as_a_kit(work: Path):
    from cosyml.evaluation.suite import is_tiny_kit

    assert is_tiny_kit(work / "kit")  # evaluation reports then say its numbers prove plumbing only


def test_data_stages_make_v3_shards_with_the_instruct_column(work: Path):
    _run(
        [
            "prepare",
            "--input",
            str(TOY),
            "--output",
            str(work / "data"),
            "--speaker",
            "toy",
            "--set",
            "prepare.transcribe=false",
            "--set",
            f"prepare.instruct={INSTRUCT}",
        ]
    )
    _run(["extract", "--data", str(work / "data"), "--model-dir", str(work / "kit"), "--output", str(work / "feats")])
    assert (
        json.loads((work / "feats" / "extract_info.json").read_text())["speech_tokenizer"] == "speech_tokenizer_v3.onnx"
    )
    _run(["shards", "--data", str(work / "data"), "--features", str(work / "feats"), "--output", str(work / "shards")])
    import pyarrow.parquet as pq

    shard = (work / "shards" / "train" / "data.list").read_text().split()[0]
    table = pq.read_table(work / "shards" / "train" / shard if not Path(shard).is_absolute() else shard)
    assert set(table.column("instruct").to_pylist()) == {INSTRUCT}


def test_both_parts_train_and_the_trained_voice_speaks(work: Path):
    for part in ("llm", "flow"):
        _run(
            [
                "train",
                part,
                "--data",
                str(work / "shards"),
                "--model-dir",
                str(work / "kit"),
                "--output",
                str(work / "exp" / part),
                "--max-epochs",
                "1",
            ]
        )
        state = torch.load(work / "exp" / part / f"{part}.pt", weights_only=True)
        assert all(t.dtype == torch.float32 for t in state.values())
        assert list((work / "exp" / part / "samples" / "epoch_000").glob("*.wav"))  # rendered by the v3 engine
    out = work / "trained.wav"
    _run(
        [
            "synth",
            "--model-dir",
            str(work / "kit"),
            "--llm",
            str(work / "exp" / "llm" / "llm.pt"),
            "--flow",
            str(work / "exp" / "flow" / "flow.pt"),
            "--text",
            "今天天气很好。",
            "--speaker",
            "toy",
            "--speaker-file",
            str(work / "feats" / "train" / "spk2embedding.pt"),
            "--out",
            str(out),
            "--seed",
            "1",
        ]
    )
    wav, sr = sf.read(out)
    assert sr == 24000 and len(wav) > 0


def test_bf16_autocast_the_gpu_default_trains_the_v3_parts_on_the_cpu(work: Path):
    for part in ("llm", "flow"):
        out = work / "exp_bf16" / part
        _run(
            [
                "train",
                part,
                "--data",
                str(work / "shards"),
                "--model-dir",
                str(work / "kit"),
                "--output",
                str(out),
                "--max-epochs",
                "1",
                "--set",
                "train.precision=bf16",
                "--set",
                "train.sample_every_epochs=0",
            ]
        )
        state = torch.load(out / f"{part}.pt", weights_only=True)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in state.values())


def test_v3_llm_training_without_instruct_text_is_one_line(work: Path, tmp_path: Path, capsys):
    _run(
        [
            "prepare",
            "--input",
            str(TOY),
            "--output",
            str(tmp_path / "data"),
            "--speaker",
            "toy",
            "--set",
            "prepare.transcribe=false",
        ]
    )
    _run(
        ["extract", "--data", str(tmp_path / "data"), "--model-dir", str(work / "kit"), "--output", str(tmp_path / "f")]
    )
    _run(
        ["shards", "--data", str(tmp_path / "data"), "--features", str(tmp_path / "f"), "--output", str(tmp_path / "s")]
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "llm",
                "--data",
                str(tmp_path / "s"),
                "--model-dir",
                str(work / "kit"),
                "--output",
                str(tmp_path / "exp"),
                "--max-epochs",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no instruct column, which CosyVoice3 LLM training needs; set prepare.instruct" in err


def test_evaluate_promote_and_load_the_v3_voice(work: Path, tmp_path: Path, monkeypatch):
    """Runs after training (module order): the v3 candidates are scored, registered, promoted and served."""
    import mlflow
    import pandas as pd

    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults plus the flags below
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("COSYML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COSYML_TRACKING", "on")  # the registry needs MLflow
    eval_dir = tmp_path / "eval"
    _run(
        [
            "evaluate",
            "--model-dir",
            str(work / "kit"),
            "--data",
            str(work / "data"),
            "--out",
            str(eval_dir),
            "--test-sets",
            str(Path(__file__).resolve().parents[1] / "eval"),
            "--max-utts",
            "1",
            "--no-progress",
            "--speaker-file",
            str(work / "feats" / "train" / "spk2embedding.pt"),
            "--candidates",
            "llm=base,flow=base",
            "--candidates",
            f"llm={work / 'exp' / 'llm' / 'llm.pt'},flow=base",
            "--set",
            f"evaluate.whisper_model={work / 'kit' / 'whisper.pt'}",
            "--set",
            "prepare.speaker=toy",
        ]
    )
    scored = json.loads((eval_dir / "candidates.json").read_text())["candidates"]
    assert len(scored) == 2 and all(c["summary"] and c["summary"]["n"] > 0 for c in scored)
    _run(
        [
            "promote",
            "--register",
            "--candidates",
            str(eval_dir / "candidates.json"),
            "--set",
            f"registry.speakers={work / 'feats' / 'train' / 'spk2embedding.pt'}",
            "--set",
            "prepare.speaker=toy",
        ]
    )
    voice = mlflow.pyfunc.load_model("models:/cosyml-toy@champion")
    out = voice.predict(pd.DataFrame([{"text": "你好。", "seed": 1}]))
    assert out["error"][0] is None and out["sample_rate"][0] == 24000 and out["duration_s"][0] > 0
