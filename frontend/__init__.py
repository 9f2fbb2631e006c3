"""ONNX -> sbc IR."""

from sbc.frontend.onnx_import import import_onnx, load_model

__all__ = ["import_onnx", "load_model"]
