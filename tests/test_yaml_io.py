"""The tolerant model-yaml reader on the kit's official-format yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cosyml.errors import ModelDirError
from cosyml.kit.model_yaml import KitDims, write_model_yaml
from cosyml.models.modeldir import parse_hparams
from cosyml.models.yaml_io import Tagged, read_model_yaml

ODD = KitDims(
    llm_size=48,
    speech_token_size=300,
    spk_embed_dim=96,
    chunk_size=20,
    mix_ratio=(4, 12),
    top_p=0.7,
    top_k=11,
    win_size=7,
    tau_r=0.2,
    flow_size=40,
    flow_encoder_heads=4,
    estimator_channels=24,
    hift_base_channels=16,
    fmax=7600,
)


def test_every_hyperparameter_round_trips(tmp_path: Path) -> None:
    d = ODD
    config = read_model_yaml(write_model_yaml(tmp_path, d), overrides={"qwen_pretrain_path": "/q"})
    llm, flow, hift = config["llm"], config["flow"], config["hift"]
    assert isinstance(llm, Tagged) and llm.target == "cosyvoice.llm.llm.Qwen2LM"
    assert (llm.get("llm_input_size"), llm.get("llm_output_size")) == (48, 48)
    assert llm.get("speech_token_size") == 300 and llm.get("mix_ratio") == [4, 12]
    assert llm.get("llm").get("pretrain_path") == "/q"
    assert llm.get("sampling").kind == "name"
    assert llm.get("sampling").kwargs() == {"top_p": 0.7, "top_k": 11, "win_size": 7, "tau_r": 0.2}
    assert flow.class_name == "CausalMaskedDiffWithXvec" and flow.get("vocab_size") == 300
    enc, cfm = flow.get("encoder"), flow.get("decoder")
    assert (enc.get("output_size"), enc.get("attention_heads"), enc.get("static_chunk_size")) == (40, 4, 20)
    assert cfm.get("cfm_params").get("content")["sigma_min"] == 1e-06
    est = cfm.get("estimator")
    assert est.get("channels") == [24] and est.get("static_chunk_size") == 40  # !ref <chunk_size> * <token_mel_ratio>
    assert est.get("num_decoding_left_chunks") == -1
    assert hift.class_name == "HiFTGenerator" and hift.get("base_channels") == 16
    assert hift.get("istft_params") == {"n_fft": 16, "hop_len": 4}
    assert config["hifigan"].get("generator") == hift
    assert config["get_tokenizer"].get("token_path") == "/q"
    assert len(config["data_pipeline"]) == 10 and config["train_conf"]["optim_conf"]["lr"] == 1e-05
    assert not any(k.startswith("__") for k in config)

    hp = parse_hparams(config, "v2", "x")
    fields = dataclasses.asdict(hp)
    assert fields["sample_rate"] == d.sample_rate and fields["spk_embed_dim"] == 96
    assert fields["mel"] == {
        "n_fft": 1920, "num_mels": 80, "sampling_rate": 24000, "hop_size": 480, "win_size": 1920,
        "fmin": 0.0, "fmax": 7600.0, "center": False,
    }  # fmt: skip
    assert (hp.mix_ratio, hp.chunk_size, hp.token_frame_rate, hp.token_mel_ratio) == ((4, 12), 20, 25, 2)


def test_build_llm_reads_the_llm_node(tmp_path: Path) -> None:
    from transformers import Qwen2Config

    from cosyml.kit.model_yaml import qwen_config_dict
    from cosyml.models.llm import build_llm

    config = read_model_yaml(write_model_yaml(tmp_path, ODD))
    qwen = Qwen2Config(**qwen_config_dict(ODD, 128))
    model = build_llm(config, qwen_config=qwen, device="meta")
    assert model.config.mix_ratio == (4, 12) and model.config.sampling.top_k == 11
    assert model.speech_embedding.weight.shape == (303, 48)


def test_qwen_path_is_required_without_a_model_dir(tmp_path: Path) -> None:
    from cosyml.models.llm import build_llm

    config = read_model_yaml(write_model_yaml(tmp_path))
    with pytest.raises(ModelDirError, match="qwen_pretrain_path"):
        build_llm(config)


def test_unknown_llm_class_is_refused(tmp_path: Path) -> None:
    from cosyml.models.llm import llm_config_from_yaml

    path = write_model_yaml(tmp_path)
    path.write_text(path.read_text().replace("llm.llm.Qwen2LM", "llm.llm.TransformerLM"))
    with pytest.raises(ModelDirError, match="TransformerLM"):
        llm_config_from_yaml(read_model_yaml(path), path)
