"""PyTorch SpikingBrain-style reference models and their ONNX export."""

from sbc.models.spikingbrain import CONFIGS, SpikingBrainConfig, build_model, get_config

__all__ = ["CONFIGS", "SpikingBrainConfig", "build_model", "get_config"]
