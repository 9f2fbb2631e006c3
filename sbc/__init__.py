"""sbc, the SpikingBrain Compiler: ONNX -> sbc IR -> Apache TVM."""

__version__ = "0.1.0"

from sbc.api import Module, compile, load  # noqa: E402  (the API needs __version__ defined)

__all__ = ["Module", "__version__", "compile", "load"]
