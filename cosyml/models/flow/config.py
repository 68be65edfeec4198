"""Hyperparameters of the flows, read from the ``flow`` node of a model-directory yaml.

CosyVoice2: the yaml names ``CausalMaskedDiffWithXvec`` with an ``UpsampleConformerEncoder``, a
``CausalConditionalCFM`` and a ``CausalConditionalDecoder`` estimator (:class:`FlowConfig`).
CosyVoice3: ``CausalMaskedDiffWithDiT`` with a ``PreLookaheadLayer``, a ``CausalConditionalCFM`` and a
``DiT`` estimator (:class:`DiTFlowConfig`). We read their arguments as data; where the yaml leaves an
argument out, the upstream constructor default applies, so the same defaults are written in the
readers. Settings our implementation does not cover stop with a one-line error.
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
        return cls.from_yaml_node(_flow_node(config))

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
            raise ModelDirError(
                "model yaml 'flow.encoder.global_cmvn' is set; cosyml supports the CosyVoice2 flow only"
            )
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

        cfm = _read_cfm(cfm_node)

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


# ------------------------------------------------------------------------------------------ CosyVoice3

DIT_FLOW_CLASS = "CausalMaskedDiffWithDiT"
PRE_LOOKAHEAD_CLASS = "PreLookaheadLayer"
DIT_CLASS = "DiT"
_V3 = "the CosyVoice3 flow"


@dataclass(frozen=True)
class PreLookaheadConfig:
    """The v3 token front end (upstream ``PreLookaheadLayer``): a residual conv pair over token embeddings.

    ``in_channels`` is the token-embedding width (80), ``channels`` the hidden width (1024) and
    ``pre_lookahead_len`` how many future tokens the first conv reads (3).
    """

    in_channels: int = 80
    channels: int = 1024
    pre_lookahead_len: int = 1


@dataclass(frozen=True)
class DiTConfig:
    """The v3 velocity estimator (upstream ``DiT``): a diffusion transformer over mel frames.

    ``dim`` model width, ``depth`` blocks, ``heads`` × ``dim_head`` attention width (RoPE is
    ``dim_head`` wide), feed-forward width ``ff_mult`` × ``dim``. ``mel_dim``/``mu_dim``/``spk_dim`` are
    the widths of x_t and cond / mu / speaker vector (spk_dim 0: no speaker input).
    ``static_chunk_size`` is the streaming attention chunk in mel frames; ``out_channels`` and
    ``num_decoding_left_chunks`` are stored by upstream but do not change its computation (streaming
    attention always sees every earlier chunk). The yaml reader applies upstream's constructor
    defaults (depth 8, heads 8, dim_head 64, dropout 0.1, ff_mult 4; absent mu_dim/out_channels = mel_dim,
    absent spk_dim = 0); the official yaml leaves ``dropout`` at 0.1.
    """

    dim: int = 1024
    depth: int = 8
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.1
    ff_mult: int = 4
    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 80
    out_channels: int = 80
    static_chunk_size: int = 50
    num_decoding_left_chunks: int = 2


@dataclass(frozen=True)
class DiTFlowConfig:
    """The whole v3 flow (upstream ``CausalMaskedDiffWithDiT``).

    ``input_size`` is the token-embedding width (80 in v3), ``output_size`` the mel bins (80). The
    dataclass defaults are the official CosyVoice3 values; :meth:`from_yaml_node` applies upstream's
    constructor defaults for arguments the yaml leaves out.
    """

    input_size: int = 80
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 6561
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    n_timesteps: int = 10
    pre_lookahead: PreLookaheadConfig = field(default_factory=lambda: PreLookaheadConfig(80, 1024, 3))
    estimator: DiTConfig = field(default_factory=DiTConfig)
    cfm: CFMConfig = field(default_factory=lambda: CFMConfig(sigma_min=1e-6, spk_emb_dim=80))

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> DiTFlowConfig:
        """Read ``config["flow"]`` from a parsed model yaml (``cosyml.models.yaml_io.read_model_yaml``)."""
        return cls.from_yaml_node(_flow_node(config))

    @classmethod
    def from_yaml_node(cls, flow: Any) -> DiTFlowConfig:
        """Read a ``flow`` :class:`~cosyml.models.yaml_io.Tagged` node naming ``CausalMaskedDiffWithDiT``."""
        _expect_class(flow, DIT_FLOW_CLASS, "flow", _V3)
        args = flow.kwargs()
        for key in ("pre_lookahead_layer", "decoder"):
            if not hasattr(args.get(key), "class_name"):
                raise ModelDirError(
                    f"model yaml 'flow' ({DIT_FLOW_CLASS}) has no '{key}' node (a '!new:' node); "
                    "restore the official cosyvoice3.yaml"
                )
        pre_node, cfm_node = args["pre_lookahead_layer"], args["decoder"]
        _expect_class(pre_node, PRE_LOOKAHEAD_CLASS, "flow.pre_lookahead_layer", _V3)
        _expect_class(cfm_node, CFM_CLASS, "flow.decoder", _V3)
        est_node = cfm_node.kwargs().get("estimator")
        _expect_class(est_node, DIT_CLASS, "flow.decoder.estimator", _V3)

        pre = pre_node.kwargs()
        where = "flow.pre_lookahead_layer"
        pre_lookahead = PreLookaheadConfig(
            in_channels=_int(pre, "in_channels", None, where),
            channels=_int(pre, "channels", None, where),
            pre_lookahead_len=_int(pre, "pre_lookahead_len", 1, where),
        )

        est = est_node.kwargs()
        where = "flow.decoder.estimator"
        if est.get("long_skip_connection", False):
            raise ModelDirError(
                f"model yaml '{where}.long_skip_connection' is set; cosyml supports only False (the CosyVoice3 setting)"
            )
        mel_dim = _int(est, "mel_dim", 80, where)
        mu_dim = est.get("mu_dim")
        spk_dim = est.get("spk_dim")
        out_channels = est.get("out_channels")
        estimator = DiTConfig(
            dim=_int(est, "dim", None, where),
            depth=_int(est, "depth", 8, where),
            heads=_int(est, "heads", 8, where),
            dim_head=_int(est, "dim_head", 64, where),
            dropout=_float(est, "dropout", 0.1, where),
            ff_mult=_int(est, "ff_mult", 4, where),
            mel_dim=mel_dim,
            mu_dim=mel_dim if mu_dim is None else _int(est, "mu_dim", None, where),
            spk_dim=0 if spk_dim is None else _int(est, "spk_dim", None, where),
            out_channels=mel_dim if out_channels is None else _int(est, "out_channels", None, where),
            static_chunk_size=_int(est, "static_chunk_size", 50, where),
            num_decoding_left_chunks=_int(est, "num_decoding_left_chunks", 2, where),
        )

        config = cls(
            input_size=_int(args, "input_size", 512, "flow"),
            output_size=_int(args, "output_size", 80, "flow"),
            spk_embed_dim=_int(args, "spk_embed_dim", 192, "flow"),
            vocab_size=_int(args, "vocab_size", 4096, "flow"),
            token_mel_ratio=_int(args, "token_mel_ratio", 2, "flow"),
            pre_lookahead_len=_int(args, "pre_lookahead_len", 3, "flow"),
            pre_lookahead=pre_lookahead,
            estimator=estimator,
            cfm=_read_cfm(cfm_node),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Check that the widths fit together; raise a one-line :class:`ModelDirError` if not."""
        pre, est = self.pre_lookahead, self.estimator
        if pre.in_channels != self.input_size:
            raise ModelDirError(
                f"model yaml 'flow.pre_lookahead_layer.in_channels' ({pre.in_channels}) must equal "
                f"'flow.input_size' ({self.input_size})"
            )
        if pre.pre_lookahead_len != self.pre_lookahead_len:
            raise ModelDirError(
                f"model yaml 'flow.pre_lookahead_layer.pre_lookahead_len' ({pre.pre_lookahead_len}) must equal "
                f"'flow.pre_lookahead_len' ({self.pre_lookahead_len})"
            )
        if est.mu_dim != self.input_size:
            raise ModelDirError(
                f"model yaml 'flow.decoder.estimator.mu_dim' ({est.mu_dim}) must equal 'flow.input_size' ({self.input_size})"
            )
        if self.output_size != 80 or est.mel_dim != self.output_size:
            # The fixed inference noise (and upstream's solver) is 80 bins wide.
            raise ModelDirError(
                f"model yaml 'flow.output_size' ({self.output_size}) and 'flow.decoder.estimator.mel_dim' "
                f"({est.mel_dim}) must both be 80"
            )
        if self.cfm.spk_emb_dim != self.output_size or est.spk_dim not in (0, self.output_size):
            raise ModelDirError(
                "model yaml: 'flow.decoder.spk_emb_dim' and 'flow.decoder.estimator.spk_dim' must equal "
                f"'flow.output_size' ({self.output_size})"
            )
        if est.dim_head % 2 or min(est.dim, est.depth, est.heads, est.dim_head) < 1:
            raise ModelDirError(
                "model yaml 'flow.decoder.estimator': dim, depth, heads must be positive and dim_head a positive even number"
            )
        if self.token_mel_ratio < 1:
            raise ModelDirError(f"model yaml 'flow.token_mel_ratio' must be >= 1, got {self.token_mel_ratio}")


# ------------------------------------------------------------------------------------------ helpers


def _read_cfm(cfm_node: Any) -> CFMConfig:
    """Read a ``CausalConditionalCFM`` node (``flow.decoder``): its ``cfm_params`` and ``spk_emb_dim``."""
    cfm_args = cfm_node.kwargs()
    params = cfm_args.get("cfm_params", {})
    if hasattr(params, "kwargs"):  # !new:omegaconf.DictConfig {content: {...}}
        params = params.kwargs().get("content", params.kwargs())
    params = dict(params or {})
    if params.get("solver", "euler") != "euler":
        raise ModelDirError(
            "model yaml 'flow.decoder.cfm_params.solver' must be 'euler' (the only solver upstream has)"
        )
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
    return cfm


def _flow_node(config: dict[str, Any]) -> Any:
    """The ``flow`` node of a parsed model yaml, or one line saying it is missing."""
    flow = config.get("flow")
    if flow is None or not hasattr(flow, "kwargs"):
        raise ModelDirError("model yaml: missing 'flow' section (a '!new:' node); restore the official yaml")
    return flow


def _expect_class(node: Any, class_name: str, where: str, model: str = "the CosyVoice2 flow") -> None:
    target = getattr(node, "class_name", None)
    if target is None:
        raise ModelDirError(f"model yaml: missing '{where}' (a '!new:' node); restore the official yaml")
    if target != class_name:
        raise ModelDirError(f"model yaml '{where}' is {target}; cosyml implements {class_name} ({model}) only")


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
