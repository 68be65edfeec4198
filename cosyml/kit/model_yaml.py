"""Tiny ``cosyvoice2.yaml`` / ``cosyvoice3.yaml`` files in the official model-directory format, and a
tiny Qwen2 backbone folder.

Each yaml has every section of the file shipped in ``CosyVoice2-0.5B`` / ``Fun-CosyVoice3-0.5B``
(HyperPyYAML tags naming the upstream classes, ``!ref`` cross references, the seed lines, llm / flow /
hift / GAN modules, frontend callables, data pipelines and training configs), with the sizes of
:class:`KitDims` / :class:`KitDimsV3`. Our reader (:func:`cosyml.models.yaml_io.read_model_yaml`) and
upstream's HyperPyYAML loader both read them.

Only sizes shrink: the mel geometry (80 mels, hop 480 at 24 kHz; fmax 8000 in v2, null = sr/2 in v3),
the speech-token rate and vocabulary (25 Hz, 6561 codes), ``mix_ratio``, the RAS defaults and the v3
tokenizer version are the official values, so every code path that depends on them is exercised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cosyml.models import keys


@dataclass(frozen=True)
class _SharedDims:
    """The sizes both versions have (LLM, HiFT, mel); official value in brackets where it differs."""

    sample_rate: int = 24000
    llm_size: int = 64  # llm_input_size = llm_output_size = Qwen hidden size [896]
    qwen_layers: int = 2  # [24]
    qwen_heads: int = 4  # [14]
    qwen_kv_heads: int = 2  # [2]
    qwen_intermediate: int = 128  # [4864]
    speech_token_size: int = 6561
    spk_embed_dim: int = 192
    token_frame_rate: int = 25
    token_mel_ratio: int = 2
    chunk_size: int = 25
    num_decoding_left_chunks: int = -1
    mix_ratio: tuple[int, int] = (5, 15)
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    # hift
    hift_base_channels: int = 32  # [512]
    f0_cond_channels: int = 32  # [512]
    # mel (feat_extractor)
    num_mels: int = 80
    n_fft: int = 1920
    hop_size: int = 480
    win_size_mel: int = 1920
    fmin: int = 0
    fmax: int | None = 8000  # None: sr/2


@dataclass(frozen=True)
class KitDims(_SharedDims):
    """Sizes of a tiny CosyVoice2 model (official value in brackets where it differs): the shared
    LLM, HiFT and mel sizes, and the v2 flow (a conformer encoder and a U-Net estimator)."""

    fmax: int = 8000
    flow_size: int = 64  # flow input_size = encoder input/output size [512]
    flow_encoder_heads: int = 2  # [8]
    flow_encoder_linear_units: int = 128  # [2048]
    flow_encoder_blocks: int = 1  # [6]
    pre_lookahead_len: int = 3
    estimator_channels: int = 32  # [256]
    estimator_head_dim: int = 16  # [64]
    estimator_n_blocks: int = 1  # [4]
    estimator_mid_blocks: int = 1  # [12]
    estimator_heads: int = 2  # [8]


#: The sizes of the official CosyVoice2-0.5B model (for key/shape checks against the official files).
OFFICIAL_V2_DIMS = KitDims(
    llm_size=896,
    qwen_layers=24,
    qwen_heads=14,
    qwen_kv_heads=2,
    qwen_intermediate=4864,
    flow_size=512,
    flow_encoder_heads=8,
    flow_encoder_linear_units=2048,
    flow_encoder_blocks=6,
    estimator_channels=256,
    estimator_head_dim=64,
    estimator_n_blocks=4,
    estimator_mid_blocks=12,
    estimator_heads=8,
    hift_base_channels=512,
    f0_cond_channels=512,
)
OFFICIAL_QWEN_VOCAB = 151936


@dataclass(frozen=True)
class KitDimsV3(_SharedDims):
    """Sizes of a tiny Fun-CosyVoice3 model (official value in brackets where it differs).

    The LLM, HiFT and mel fields are the shared ones; the flow is the v3 one: a pre-lookahead conv pair
    over 80-wide token embeddings and a DiT estimator. ``fmax`` is None (sr/2), the upstream v3 setting.
    """

    fmax: int | None = None
    # flow: token embedding width = mu width = mel bins (80, as official)
    flow_input_size: int = 80
    pre_lookahead_len: int = 3
    pre_lookahead_channels: int = 64  # [1024]
    dit_dim: int = 64  # [1024]; a multiple of 16 (grouped positional conv)
    dit_depth: int = 1  # [22]
    dit_heads: int = 2  # [16]
    dit_dim_head: int = 32  # [64]; also the RoPE width
    dit_ff_mult: int = 2
    conv_pre_look_right: int = 4  # the causal HiFT's right context (frames)


#: The sizes of the official Fun-CosyVoice3-0.5B model (for key/shape checks against the official files).
OFFICIAL_V3_DIMS = KitDimsV3(
    llm_size=896,
    qwen_layers=24,
    qwen_heads=14,
    qwen_kv_heads=2,
    qwen_intermediate=4864,
    pre_lookahead_channels=1024,
    dit_dim=1024,
    dit_depth=22,
    dit_heads=16,
    dit_dim_head=64,
    hift_base_channels=512,
    f0_cond_channels=512,
)


@dataclass(frozen=True)
class _Differences:
    """Everything the v2 and v3 yaml do not share; :func:`_yaml_text` writes the rest once."""

    version: keys.Version  # which official file: keys.YAML_NAME[version]
    model: str  # the official model directory's name
    llm_class: str  # class names below cosyvoice.llm.llm, .flow.flow, .hifigan.generator
    flow_class: str
    flow_input_size: int
    flow_modules: str  # the flow's own modules before `decoder:` (indented 4)
    estimator: str  # the estimator's tag and its own lines (indented 8 and 12)
    hift_prefix: str  # "Causal" for the causal HiFT and F0 predictor of v3
    hift_lines: str  # HiFT lines of one version only (indented 4)
    tokenizer_version: str | None  # get_tokenizer's `version:` (None: no such line)
    max_length: int  # the data filter's max_length (frames of 10 ms)
    truncate_length: int  # the GAN pipeline's truncate_length (samples)
    whisper_fbank_frames: int | None  # v3's compute_whisper_fbank step, and compute_fbank's num_frames


def _differences(d: KitDims | KitDimsV3) -> _Differences:
    """The description of what one version's yaml has of its own, for sizes ``d``."""
    if isinstance(d, KitDims):
        return _Differences(
            version="v2",
            model="CosyVoice2-0.5B",
            llm_class="Qwen2LM",
            flow_class="CausalMaskedDiffWithXvec",
            flow_input_size=d.flow_size,
            flow_modules=f"""\
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: {d.flow_size}
        attention_heads: {d.flow_encoder_heads}
        linear_units: {d.flow_encoder_linear_units}
        num_blocks: {d.flow_encoder_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {d.flow_size}
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
""",
            estimator=f"""\
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: {4 * d.num_mels}
            out_channels: {d.num_mels}
            channels: [{d.estimator_channels}]
            dropout: 0.0
            attention_head_dim: {d.estimator_head_dim}
            n_blocks: {d.estimator_n_blocks}
            num_mid_blocks: {d.estimator_mid_blocks}
            num_heads: {d.estimator_heads}
            act_fn: 'gelu'
""",
            hift_prefix="",
            hift_lines="",
            tokenizer_version=None,
            max_length=40960,
            truncate_length=24480,
            whisper_fbank_frames=None,
        )
    return _Differences(
        version="v3",
        model="Fun-CosyVoice3-0.5B",
        llm_class="CosyVoice3LM",
        flow_class="CausalMaskedDiffWithDiT",
        flow_input_size=d.flow_input_size,
        flow_modules=f"""\
    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: {d.flow_input_size}
        channels: {d.pre_lookahead_channels}
        pre_lookahead_len: {d.pre_lookahead_len}
""",
        estimator=f"""\
        estimator: !new:cosyvoice.flow.DiT.dit.DiT
            dim: {d.dit_dim}
            depth: {d.dit_depth}
            heads: {d.dit_heads}
            dim_head: {d.dit_dim_head}
            ff_mult: {d.dit_ff_mult}
            mel_dim: {d.num_mels}
            mu_dim: {d.flow_input_size}
            spk_dim: {d.num_mels}
            out_channels: {d.num_mels}
""",
        hift_prefix="Causal",
        hift_lines=f"    conv_pre_look_right: {d.conv_pre_look_right}\n",
        tokenizer_version="cosyvoice3",
        max_length=6000,
        truncate_length=24960,
        whisper_fbank_frames=960,
    )


def _yaml_text(d: KitDims | KitDimsV3) -> str:
    """The yaml of a tiny model with sizes ``d``: the official file's sections, tags and keys."""
    v = _differences(d)
    m0, m1 = d.mix_ratio
    fmax = "null" if d.fmax is None else d.fmax
    tokenizer_version = f"    version: {v.tokenizer_version}\n" if v.tokenizer_version else ""
    whisper_fbank, whisper_fbank_step = "", ""
    if v.whisper_fbank_frames is not None:
        whisper_fbank = f"""\
    num_frames: {v.whisper_fbank_frames}
compute_whisper_fbank: !name:cosyvoice.dataset.processor.compute_whisper_fbank
    num_frames: {v.whisper_fbank_frames}
"""
        whisper_fbank_step = "    !ref <compute_whisper_fbank>,\n"
    return f"""\
# Tiny {v.model.removesuffix("-0.5B")} model directory written by cosyml.kit.model_yaml (random weights: plumbing only,
# not voice quality). Same sections, tags and keys as the official {v.model} {keys.YAML_NAME[v.version]}.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

sample_rate: {d.sample_rate}
llm_input_size: {d.llm_size}
llm_output_size: {d.llm_size}
spk_embed_dim: {d.spk_embed_dim}
qwen_pretrain_path: ''
token_frame_rate: {d.token_frame_rate}
token_mel_ratio: {d.token_mel_ratio}

chunk_size: {d.chunk_size}
num_decoding_left_chunks: {d.num_decoding_left_chunks}

llm: !new:cosyvoice.llm.llm.{v.llm_class}
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: {d.speech_token_size}
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [{m0}, {m1}]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: {d.top_p}
        top_k: {d.top_k}
        win_size: {d.win_size}
        tau_r: {d.tau_r}

flow: !new:cosyvoice.flow.flow.{v.flow_class}
    input_size: {v.flow_input_size}
    output_size: {d.num_mels}
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {d.speech_token_size}
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: {d.pre_lookahead_len}
{v.flow_modules}\
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: {3 * d.num_mels}
        n_spks: 1
        spk_emb_dim: {d.num_mels}
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
{v.estimator}\
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.{v.hift_prefix}HiFTGenerator
    in_channels: {d.num_mels}
    base_channels: {d.hift_base_channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
{v.hift_lines}\
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.{v.hift_prefix}ConvRNNF0Predictor
        num_class: 1
        in_channels: {d.num_mels}
        cond_channels: {d.f0_cond_channels}

mel_spec_transform1: !name:matcha.utils.audio.mel_spectrogram
    n_fft: {d.n_fft}
    num_mels: {d.num_mels}
    sampling_rate: !ref <sample_rate>
    hop_size: {d.hop_size}
    win_size: {d.win_size_mel}
    fmin: {d.fmin}
    fmax: null
    center: False
hifigan: !new:cosyvoice.hifigan.hifigan.HiFiGan
    generator: !ref <hift>
    discriminator: !new:cosyvoice.hifigan.discriminator.MultipleDiscriminator
        mpd: !new:matcha.hifigan.models.MultiPeriodDiscriminator
        mrd: !new:cosyvoice.hifigan.discriminator.MultiResSpecDiscriminator
    mel_spec_transform: [
        !ref <mel_spec_transform1>
    ]

parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
{tokenizer_version}\
allowed_special: 'all'
tokenize: !name:cosyvoice.dataset.processor.tokenize
    get_tokenizer: !ref <get_tokenizer>
    allowed_special: !ref <allowed_special>
filter: !name:cosyvoice.dataset.processor.filter
    max_length: {v.max_length}
    min_length: 100
    token_max_length: 200
    token_min_length: 1
resample: !name:cosyvoice.dataset.processor.resample
    resample_rate: !ref <sample_rate>
truncate: !name:cosyvoice.dataset.processor.truncate
    truncate_length: {v.truncate_length}
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: {d.n_fft}
    num_mels: {d.num_mels}
    sampling_rate: !ref <sample_rate>
    hop_size: {d.hop_size}
    win_size: {d.win_size_mel}
    fmin: {d.fmin}
    fmax: {fmax}
    center: False
compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank
    feat_extractor: !ref <feat_extractor>
{whisper_fbank}\
compute_f0: !name:cosyvoice.dataset.processor.compute_f0
    sample_rate: !ref <sample_rate>
    hop_size: {d.hop_size}
parse_embedding: !name:cosyvoice.dataset.processor.parse_embedding
    normalize: True
shuffle: !name:cosyvoice.dataset.processor.shuffle
    shuffle_size: 1000
sort: !name:cosyvoice.dataset.processor.sort
    sort_size: 500
batch: !name:cosyvoice.dataset.processor.batch
    batch_type: 'dynamic'
    max_frames_in_batch: 2000
padding: !name:cosyvoice.dataset.processor.padding
    use_spk_embedding: False

data_pipeline: [
    !ref <parquet_opener>,
    !ref <tokenize>,
    !ref <filter>,
    !ref <resample>,
    !ref <compute_fbank>,
    !ref <parse_embedding>,
{whisper_fbank_step}\
    !ref <shuffle>,
    !ref <sort>,
    !ref <batch>,
    !ref <padding>,
]
data_pipeline_gan: [
    !ref <parquet_opener>,
    !ref <tokenize>,
    !ref <filter>,
    !ref <resample>,
    !ref <truncate>,
    !ref <compute_fbank>,
    !ref <compute_f0>,
    !ref <parse_embedding>,
    !ref <shuffle>,
    !ref <sort>,
    !ref <batch>,
    !ref <padding>,
]

train_conf:
    optim: adam
    optim_conf:
        lr: 1e-5
    scheduler: constantlr
    scheduler_conf:
        warmup_steps: 2500
    max_epoch: 200
    grad_clip: 5
    accum_grad: 2
    log_interval: 100
    save_per_step: -1

train_conf_gan:
    optim: adam
    optim_conf:
        lr: 0.0002
    scheduler: constantlr
    optim_d: adam
    optim_conf_d:
        lr: 0.0002
    scheduler_d: constantlr
    max_epoch: 200
    grad_clip: 5
    accum_grad: 1
    log_interval: 100
    save_per_step: -1

"""


def write_model_yaml(path: str | Path, dims: KitDims | KitDimsV3 | None = None) -> Path:
    """Write a tiny ``cosyvoice2.yaml`` (``dims`` a :class:`KitDims`, the default) or ``cosyvoice3.yaml``
    (a :class:`KitDimsV3`) at ``path`` (a file path, or a folder to write it into)."""
    dims = dims or KitDims()
    path = Path(path)
    if path.is_dir():
        path = path / keys.YAML_NAME[_differences(dims).version]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_yaml_text(dims), encoding="utf-8")
    return path


def qwen_config_dict(dims: KitDims | KitDimsV3, vocab_size: int, endoftext_id: int | None = None) -> dict[str, Any]:
    """``config.json`` of the tiny backbone: Qwen2.5-0.5B's file with the kit's sizes.

    ``endoftext_id`` is the tokenizer's ``<|endoftext|>`` id (151643 officially); None leaves bos/eos unset.
    """
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": endoftext_id,
        "eos_token_id": endoftext_id,
        "hidden_act": "silu",
        "hidden_size": dims.llm_size,
        "initializer_range": 0.02,
        "intermediate_size": dims.qwen_intermediate,
        "max_position_embeddings": 32768,
        "max_window_layers": dims.qwen_layers,
        "model_type": "qwen2",
        "num_attention_heads": dims.qwen_heads,
        "num_hidden_layers": dims.qwen_layers,
        "num_key_value_heads": dims.qwen_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def write_qwen_backbone(
    qwen_dir: str | Path,
    vocab_size: int,
    dims: KitDims | KitDimsV3 | None = None,
    seed: int = 0,
    endoftext_id: int | None = None,
) -> Path:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors`` of a tiny random Qwen2.

    ``vocab_size`` must cover every text-token id the tokenizer in the same folder can produce
    (see :func:`cosyml.kit.tokenizer.qwen_vocab_size`). Tokenizer files in the folder are left alone.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dims = dims or KitDims()
    qwen_dir = Path(qwen_dir)
    qwen_dir.mkdir(parents=True, exist_ok=True)
    if endoftext_id is not None and not 0 <= endoftext_id < vocab_size:
        raise ValueError(f"endoftext_id {endoftext_id} is outside the vocabulary of {vocab_size}")
    config_dict = qwen_config_dict(dims, vocab_size, endoftext_id)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(Qwen2Config(**config_dict))
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(qwen_dir, safe_serialization=True)
    # Our own config.json (the official field set) replaces the one transformers writes.
    (qwen_dir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    GenerationConfig(
        bos_token_id=endoftext_id, eos_token_id=endoftext_id, max_new_tokens=2048, do_sample=False
    ).save_pretrained(qwen_dir)
    return qwen_dir
