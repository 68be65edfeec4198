"""cosyml: speaker fine-tuning for CosyVoice2/3 as a tracked, reproducible pipeline."""

__version__ = "0.1.0"
