"""The flows: speech tokens + speaker embedding + prompt mel -> mel spectrogram.

CosyVoice2 (``CausalMaskedDiffWithXvec``): :class:`Flow` (conformer encoder + causal U-Net estimator).
CosyVoice3 (``CausalMaskedDiffWithDiT``): :class:`DiTFlow` (pre-lookahead layer + DiT estimator).
Both have ``forward(batch)`` -> training loss and ``inference(...)`` -> mel with the same arguments.

Public API: :func:`build_flow` (from a parsed model yaml; picks the class the yaml names),
``FlowModel`` (``Flow | DiTFlow``), :class:`FlowConfig` / :class:`DiTFlowConfig` and :func:`fixed_noise`.
"""

from __future__ import annotations

from typing import Any

from cosyml.errors import ModelDirError
from cosyml.models.flow.cfm import ConditionalFlowMatching, fixed_noise
from cosyml.models.flow.config import (
    DIT_FLOW_CLASS,
    FLOW_CLASS,
    CFMConfig,
    DiTConfig,
    DiTFlowConfig,
    EncoderConfig,
    EstimatorConfig,
    FlowConfig,
    PreLookaheadConfig,
)
from cosyml.models.flow.dit import DiT
from cosyml.models.flow.flow import Flow
from cosyml.models.flow.flow import build_flow as _build_v2_flow
from cosyml.models.flow.flow_dit import DiTFlow, build_dit_flow

__all__ = [
    "CFMConfig",
    "ConditionalFlowMatching",
    "DiT",
    "DiTConfig",
    "DiTFlow",
    "DiTFlowConfig",
    "EncoderConfig",
    "EstimatorConfig",
    "Flow",
    "FlowConfig",
    "FlowModel",
    "PreLookaheadConfig",
    "build_dit_flow",
    "build_flow",
    "fixed_noise",
]

#: Either flow; both have ``config.output_size``/``token_mel_ratio``/``pre_lookahead_len``, ``forward``
#: and ``inference`` with the same arguments.
FlowModel = Flow | DiTFlow


def build_flow(config: dict[str, Any]) -> FlowModel:
    """A randomly initialised flow with every hyperparameter from a parsed model yaml.

    ``config`` is what :func:`cosyml.models.yaml_io.read_model_yaml` returns. Its ``flow`` node's class
    picks the model: ``CausalMaskedDiffWithXvec`` -> :class:`Flow`, ``CausalMaskedDiffWithDiT`` ->
    :class:`DiTFlow`; any other class is a one-line :class:`~cosyml.errors.ModelDirError`. Load weights
    with ``load_state_dict(sd, strict=True)``; build under ``with torch.device("meta"):`` to inspect
    shapes without allocating memory.
    """
    flow = config.get("flow")
    if getattr(flow, "class_name", None) == DIT_FLOW_CLASS:
        return build_dit_flow(config)
    if flow is not None and hasattr(flow, "class_name") and flow.class_name != FLOW_CLASS:
        raise ModelDirError(
            f"model yaml 'flow' is {flow.class_name}; cosyml implements {FLOW_CLASS} (CosyVoice2) and "
            f"{DIT_FLOW_CLASS} (CosyVoice3) only"
        )
    return _build_v2_flow(config)
