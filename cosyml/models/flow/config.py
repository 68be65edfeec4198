"""Hyperparameters of the CosyVoice2 flow, read from the ``flow`` node of a model-directory yaml.

The yaml names upstream classes (``CausalMaskedDiffWithXvec`` with an ``UpsampleConformerEncoder``,
a ``CausalConditionalCFM`` and a ``CausalConditionalDecoder`` estimator). We read their arguments as
data; where the yaml leaves an argument out, the upstream constructor default applies, so the same
defaults are written here. Settings our implementation does not cover stop with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cosyml.errors import ModelDirError

FLOW_CLASS = "CausalMaskedDiffWithXvec"
ENCODER_CLASS = "UpsampleConformerEncoder"
CFM_CLASS = "CausalConditionalCFM"
ESTIMATOR_CLASS = "CausalConditionalDecoder"


@dataclass(frozen=True)
class EncoderConfig:
    """The upsampling conformer that turns speech-token embeddings into mel-rate features.

    ``num_blocks`` conformer blocks run at the token rate, then the sequence is upsampled by
    ``upsample_stride`` (= token_mel_ratio) and ``num_up_blocks`` more blocks run at the mel rate
    (upstream hard-codes 4). ``static_chunk_size`` is the streaming attention chunk in tokens.
    """

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    static_chunk_size: int = 0
    pre_lookahead_len: int = 3
    upsample_stride: int = 2
    key_bias: bool = True


@dataclass(frozen=True)
class EstimatorConfig:
    """The causal U-Net that predicts the flow velocity (upstream ``CausalConditionalDecoder``).

    ``in_channels`` is the width of the packed input [x, mu, spks, cond] (4 × 80 = 320);
    ``static_chunk_size`` is the streaming attention chunk in mel frames.
    """

    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256, 256)
    dropout: float = 0.05
    attention_head_dim: int = 64
    n_blocks: int = 1
    num_mid_blocks: int = 2
    num_heads: int = 4
    act_fn: str = "gelu"
    static_chunk_size: int = 50
    num_decoding_left_chunks: int = 2


@dataclass(frozen=True)
class CFMConfig:
    """Conditional flow matching: training noise floor, CFG rates and the inference time schedule."""

    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"
    training_cfg_rate: float = 0.2
    inference_cfg_rate: float = 0.7
    spk_emb_dim: int = 80


@dataclass(frozen=True)
class FlowConfig:
    """The whole v2 flow. ``input_size`` is the token-embedding width, ``output_size`` the mel bins."""

    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 4096
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    n_timesteps: int = 10
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    cfm: CFMConfig = field(default_factory=CFMConfig)

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> FlowConfig:
        """Read ``config["flow"]`` from a parsed model yaml (``cosyml.models.yaml_io.read_model_yaml``)."""
        flow = config.get("flow")
        if flow is None or not hasattr(flow, "kwargs"):
            raise ModelDirError("model yaml: missing 'flow' section (a '!new:' node); restore the official yaml")
        return cls.from_yaml_node(flow)

    @classmethod
    def from_yaml_node(cls, flow: Any) -> FlowConfig:
        """Read a ``flow`` :class:`~cosyml.models.yaml_io.Tagged` node."""
        _expect_class(flow, FLOW_CLASS, "flow")
        args = flow.kwargs()
        enc_node, cfm_node = args.get("encoder"), args.get("decoder")
        _expect_class(enc_node, ENCODER_CLASS, "flow.encoder")
        _expect_class(cfm_node, CFM_CLASS, "flow.decoder")
        est_node = cfm_node.kwargs().get("estimator")
        _expect_class(est_node, ESTIMATOR_CLASS, "flow.decoder.estimator")

        token_mel_ratio = _int(args, "token_mel_ratio", 2, "flow")
        pre_lookahead_len = _int(args, "pre_lookahead_len", 3, "flow")
        enc = enc_node.kwargs()
        _require(enc, "input_layer", "conv2d", "linear", "flow.encoder")
        _require(enc, "pos_enc_layer_type", "rel_pos", "rel_pos_espnet", "flow.encoder")
        _require(enc, "selfattention_layer_type", "rel_selfattn", "rel_selfattn", "flow.encoder")
        _require(enc, "activation_type", "swish", "swish", "flow.encoder")
        _require(enc, "normalize_before", True, True, "flow.encoder")
        _require(enc, "macaron_style", True, False, "flow.encoder")
        _require(enc, "use_cnn_module", True, False, "flow.encoder")
        _require(enc, "use_dynamic_chunk", False, False, "flow.encoder")
        if enc.get("global_cmvn") is not None:
            raise ModelDirError("model yaml 'flow.encoder.global_cmvn' is set; cosyml supports the CosyVoice2 flow only")
        encoder = EncoderConfig(
            input_size=_int(enc, "input_size", None, "flow.encoder"),
            output_size=_int(enc, "output_size", 256, "flow.encoder"),
            attention_heads=_int(enc, "attention_heads", 4, "flow.encoder"),
            linear_units=_int(enc, "linear_units", 2048, "flow.encoder"),
            num_blocks=_int(enc, "num_blocks", 6, "flow.encoder"),
            dropout_rate=_float(enc, "dropout_rate", 0.1, "flow.encoder"),
            positional_dropout_rate=_float(enc, "positional_dropout_rate", 0.1, "flow.encoder"),
            attention_dropout_rate=_float(enc, "attention_dropout_rate", 0.0, "flow.encoder"),
            static_chunk_size=_int(enc, "static_chunk_size", 0, "flow.encoder"),
            pre_lookahead_len=pre_lookahead_len,
            upsample_stride=token_mel_ratio,
            key_bias=bool(enc.get("key_bias", True)),
        )

        cfm_args = cfm_node.kwargs()
        params = cfm_args.get("cfm_params", {})
        if hasattr(params, "kwargs"):  # !new:omegaconf.DictConfig {content: {...}}
            params = params.kwargs().get("content", params.kwargs())
        params = dict(params or {})
        if params.get("solver", "euler") != "euler":
            raise ModelDirError("model yaml 'flow.decoder.cfm_params.solver' must be 'euler' (the only solver upstream has)")
        cfm = CFMConfig(
            sigma_min=_float(params, "sigma_min", 1e-4, "flow.decoder.cfm_params"),
            t_scheduler=str(params.get("t_scheduler", "cosine")),
            training_cfg_rate=_float(params, "training_cfg_rate", 0.2, "flow.decoder.cfm_params"),
            inference_cfg_rate=_float(params, "inference_cfg_rate", 0.7, "flow.decoder.cfm_params"),
            spk_emb_dim=_int(cfm_args, "spk_emb_dim", 64, "flow.decoder"),
        )
        if cfm.t_scheduler not in ("cosine", "linear"):
            raise ModelDirError(
                f"model yaml 'flow.decoder.cfm_params.t_scheduler' is '{cfm.t_scheduler}'; use 'cosine' or 'linear'"
            )

        est = est_node.kwargs()
        channels = est.get("channels", (256, 256))
        if not isinstance(channels, list | tuple) or not channels:
            raise ModelDirError("model yaml 'flow.decoder.estimator.channels' must be a non-empty list of ints")
        estimator = EstimatorConfig(
            in_channels=_int(est, "in_channels", None, "flow.decoder.estimator"),
            out_channels=_int(est, "out_channels", None, "flow.decoder.estimator"),
            channels=tuple(int(c) for c in channels),
            dropout=_float(est, "dropout", 0.05, "flow.decoder.estimator"),
            attention_head_dim=_int(est, "attention_head_dim", 64, "flow.decoder.estimator"),
            n_blocks=_int(est, "n_blocks", 1, "flow.decoder.estimator"),
            num_mid_blocks=_int(est, "num_mid_blocks", 2, "flow.decoder.estimator"),
            num_heads=_int(est, "num_heads", 4, "flow.decoder.estimator"),
            act_fn=str(est.get("act_fn", "snake")),
            static_chunk_size=_int(est, "static_chunk_size", 50, "flow.decoder.estimator"),
            num_decoding_left_chunks=_int(est, "num_decoding_left_chunks", 2, "flow.decoder.estimator"),
        )
        if estimator.act_fn not in ("gelu", "gelu-approximate"):
            raise ModelDirError(
                f"model yaml 'flow.decoder.estimator.act_fn' is '{estimator.act_fn}'; use 'gelu' or 'gelu-approximate'"
            )

        config = cls(
            input_size=_int(args, "input_size", 512, "flow"),
            output_size=_int(args, "output_size", 80, "flow"),
            spk_embed_dim=_int(args, "spk_embed_dim", 192, "flow"),
            vocab_size=_int(args, "vocab_size", 4096, "flow"),
            token_mel_ratio=token_mel_ratio,
            pre_lookahead_len=pre_lookahead_len,
            encoder=encoder,
            estimator=estimator,
            cfm=cfm,
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Check that the widths fit together; raise a one-line :class:`ModelDirError` if not."""
        enc, est = self.encoder, self.estimator
        if enc.input_size != self.input_size:
            raise ModelDirError(
                f"model yaml 'flow.encoder.input_size' ({enc.input_size}) must equal 'flow.input_size' ({self.input_size})"
            )
        if enc.input_size != enc.output_size:
            # The up-sampled states re-enter an input layer sized input_size -> output_size.
            raise ModelDirError(
                f"model yaml 'flow.encoder.input_size' ({enc.input_size}) must equal 'output_size' ({enc.output_size})"
            )
        if enc.output_size % enc.attention_heads:
            raise ModelDirError("model yaml 'flow.encoder.output_size' must be a multiple of 'attention_heads'")
        packed = 3 * self.output_size + self.cfm.spk_emb_dim
        if est.in_channels != packed:
            raise ModelDirError(
                f"model yaml 'flow.decoder.estimator.in_channels' is {est.in_channels}; "
                f"it must be 3 × output_size + spk_emb_dim = {packed}"
            )
        if est.out_channels != self.output_size or self.cfm.spk_emb_dim != self.output_size:
            raise ModelDirError(
                "model yaml: 'flow.decoder.estimator.out_channels' and 'flow.decoder.spk_emb_dim' must equal "
                f"'flow.output_size' ({self.output_size})"
            )


def _expect_class(node: Any, class_name: str, where: str) -> None:
    target = getattr(node, "class_name", None)
    if target is None:
        raise ModelDirError(f"model yaml: missing '{where}' (a '!new:' node); restore the official yaml")
    if target != class_name:
        raise ModelDirError(
            f"model yaml '{where}' is {target}; cosyml implements {class_name} (the CosyVoice2 flow) only"
        )


def _require(args: dict[str, Any], key: str, default: Any, wanted: Any, where: str) -> None:
    value = args.get(key, default)
    if value != wanted:
        raise ModelDirError(
            f"model yaml '{where}.{key}' is {value!r}; cosyml supports only {wanted!r} (the CosyVoice2 setting)"
        )


def _int(args: dict[str, Any], key: str, default: int | None, where: str) -> int:
    value = args.get(key, default)
    if value is None:
        raise ModelDirError(f"model yaml '{where}.{key}' is missing; restore the official yaml")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ModelDirError(f"model yaml '{where}.{key}' must be an integer, got {value!r}") from None


def _float(args: dict[str, Any], key: str, default: float, where: str) -> float:
    value = args.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelDirError(f"model yaml '{where}.{key}' must be a number, got {value!r}") from None
