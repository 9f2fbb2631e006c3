"""ONNX -> sbc IR, and SpikingBrain release checkpoint folders -> sbc IR."""

from sbc.frontend.checkpoint import import_checkpoint, is_checkpoint
from sbc.frontend.onnx_import import import_onnx, load_model

__all__ = ["import_checkpoint", "import_onnx", "is_checkpoint", "load_model"]
