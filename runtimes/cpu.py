"""The CPU runtime: a TVM-compiled library driven by the Relax VM.

Weights are uploaded once; each `run` checks the inputs against the signature (names, dtypes,
shapes incl. symbolic dims) and returns NumPy arrays by output name.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import tvm
from tvm import relax

from sbc.errors import ArtifactError
from sbc.ir.types import TensorType, bind_symbols


class CpuRuntime:
    def __init__(self, executable, inputs: list[tuple[str, TensorType]],
                 outputs: list[tuple[str, TensorType]], param_names: list[str],
                 params: dict[str, np.ndarray]):
        self.inputs = inputs
        self.outputs = outputs
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)
        self.main = self.vm["main"]
        # np.asarray(order="C"), not ascontiguousarray: the latter turns 0-d weights into 1-d
        self.params = [tvm.runtime.tensor(np.asarray(params[n], order="C"), self.device) for n in param_names]

    @classmethod
    def from_library_bytes(cls, library: bytes, **kwargs) -> "CpuRuntime":
        """Load a compiled library from bytes (it must be a file for the dynamic loader)."""
        with tempfile.TemporaryDirectory(prefix="sbc-lib-") as tmp:
            path = os.path.join(tmp, "lib.so")
            with open(path, "wb") as f:
                f.write(library)
            try:
                lib = tvm.runtime.load_module(path)
            except Exception as e:
                raise ArtifactError(f"cannot load the compiled library: {str(e).splitlines()[-1][:200]}") from e
            return cls(lib, **kwargs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bind_symbols(self.inputs, feeds)
        args = [tvm.runtime.tensor(np.asarray(feeds[n], order="C"), self.device) for n, _ in self.inputs]
        result = self.main(*args, *self.params)
        return {name: r.numpy() for (name, _), r in zip(self.outputs, result)}
