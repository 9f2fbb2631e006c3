"""sbc, the SpikingBrain Compiler: ONNX -> sbc IR -> Apache TVM."""

import os

from sbc.version import __version__

# TVM's CPU thread pool defaults to half the hardware threads (it assumes two per core); on a
# machine with one thread per core that leaves half the cores idle while onnxruntime and
# PyTorch use all of them. Use every core this process may run on, unless the user chose.
# (Read when TVM's pool starts: importing sbc before running any TVM code is enough.)
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1))

from sbc.api import Module, compile, load  # noqa: E402  (after the thread count is set)

__all__ = ["Module", "__version__", "compile", "load"]
