"""sbc, the SpikingBrain Compiler: ONNX -> sbc IR -> Apache TVM."""

__version__ = "0.1.0"
