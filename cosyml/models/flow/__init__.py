"""The CosyVoice2 flow: speech tokens + speaker embedding + prompt mel -> mel spectrogram.

Public API: :func:`build_flow` (from a parsed model yaml), :class:`Flow` (``forward(batch)`` -> training
loss, ``inference(...)`` -> mel), :class:`FlowConfig` and :func:`fixed_noise`.
"""

from cosyml.models.flow.cfm import ConditionalFlowMatching, fixed_noise
from cosyml.models.flow.config import CFMConfig, EncoderConfig, EstimatorConfig, FlowConfig
from cosyml.models.flow.flow import Flow, build_flow

__all__ = [
    "CFMConfig",
    "ConditionalFlowMatching",
    "EncoderConfig",
    "EstimatorConfig",
    "Flow",
    "FlowConfig",
    "build_flow",
    "fixed_noise",
]
