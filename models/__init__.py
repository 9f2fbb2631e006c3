"""PyTorch SpikingBrain-style reference models and their ONNX export (see spikingbrain.py, export.py)."""

from sbc.models.spikingbrain import (CONFIGS, SpikingBrainConfig, SpikingBrainLM, build_model,
                                     get_config, parameter_count)

__all__ = ["CONFIGS", "SpikingBrainConfig", "SpikingBrainLM", "build_model", "get_config",
           "parameter_count", "export_onnx"]


def export_onnx(model, path, opset=None, form="parallel", swa="masked"):
    """See sbc.models.export.export_onnx (imported lazily: it pulls in onnx and the exporter)."""
    from sbc.models.export import export_onnx as _export
    return _export(model, path, opset, form=form, swa=swa)
