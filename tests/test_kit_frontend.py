"""The tiny front-end kit: official file names, ONNX interfaces and deterministic content."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cosyml.cli import main
from cosyml.features.speech_tokens import num_tokens
from cosyml.features.whisper_mel import log_mel
from cosyml.kit.frontend import export_campplus, export_speech_tokenizer, write_frontend_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return write_frontend_kit(tmp_path_factory.mktemp("kit"), seed=0)


def test_write_frontend_kit_layout(kit):
    names = sorted(p.name for p in kit.model_dir.iterdir())
    assert names == ["CosyVoice-BlankEN", "campplus.onnx", "speech_tokenizer_v2.onnx", "whisper.pt"]
    assert kit.campplus == kit.model_dir / "campplus.onnx"


def test_campplus_interface(kit):
    sess = ort.InferenceSession(str(kit.campplus), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[2]) == ("input", "tensor(float)", 80)
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[1], str)  # dynamic batch and time
    assert (out.name, out.type, out.shape[1]) == ("output", "tensor(float)", 192)
    y = sess.run(None, {"input": np.zeros((3, 57, 80), np.float32)})[0]
    assert y.shape == (3, 192) and y.dtype == np.float32


def test_speech_tokenizer_interface(kit):
    sess = ort.InferenceSession(str(kit.speech_tokenizer), providers=["CPUExecutionProvider"])
    feats, lengths = sess.get_inputs()
    assert (feats.name, feats.type, feats.shape[1]) == ("feats", "tensor(float)", 128)
    assert (lengths.name, lengths.type) == ("feats_length", "tensor(int32)")
    (out,) = sess.get_outputs()
    assert (out.name, out.type) == ("indices", "tensor(int32)")
    for t in (1, 2, 5, 203, 1000):
        ids = sess.run(None, {"feats": np.zeros((2, 128, t), np.float32), "feats_length": np.array([t, t], np.int32)})[
            0
        ]
        assert ids.shape == (2, num_tokens(t))
        assert ids.min() >= 0 and ids.max() < 6561


def test_tokens_depend_on_audio(kit):
    sess = ort.InferenceSession(str(kit.speech_tokenizer), providers=["CPUExecutionProvider"])
    t = np.arange(32000) / 16000
    outs = []
    for f0 in (150.0, 400.0):
        mel = log_mel((0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.4 * np.sin(2 * np.pi * t)))).astype(np.float32))
        ids = sess.run(None, {"feats": mel[None], "feats_length": np.array([mel.shape[1]], np.int32)})[0][0]
        assert len(set(ids.tolist())) > 5
        outs.append(ids)
    assert not np.array_equal(outs[0], outs[1])


def test_exports_are_deterministic(tmp_path):
    a = export_campplus(tmp_path / "a.onnx", seed=3)
    b = export_campplus(tmp_path / "b.onnx", seed=3)
    c = export_speech_tokenizer(tmp_path / "c.onnx", seed=3)
    d = export_speech_tokenizer(tmp_path / "d.onnx", seed=3)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) and digest(c) == digest(d)


def test_kit_command(tmp_path):
    assert main(["kit", str(tmp_path / "k")]) == 0
    for name in ("campplus.onnx", "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN/vocab.json", "whisper.pt"):
        assert (tmp_path / "k" / name).is_file()
