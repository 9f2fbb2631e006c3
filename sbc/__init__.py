"""sbc, the SpikingBrain Compiler: ONNX -> sbc IR -> Apache TVM.

Importing sbc changes nothing in the process (no environment variables): the CPU kernels'
threads are set on TVM's thread pool before each run (sbc.runtimes.threads; num_threads= on
load and compile, --threads on the CLI).
"""

from sbc.api import Module, compile, load
from sbc.version import __version__

__all__ = ["Module", "__version__", "compile", "load"]
