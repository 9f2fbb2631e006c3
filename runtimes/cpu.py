"""The CPU runtime: a TVM-compiled library driven by the Relax VM.

The library and the weights are loaded once (weights as TVM tensors on tvm.cpu()); each `run`
checks the inputs against the signature (names, dtypes, shapes incl. symbolic dims, and the
relations between dims the kernels were compiled for) and returns NumPy arrays by output name.
An index out of range fails the call with the program's own check (codegen.index_checks).
Threads may share a runtime: calls are serialised. Inputs are never cast: a wrong dtype is an error naming the
expected one, since a silent cast would hide a caller's bug (e.g. float ids).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax

from sbc.errors import ArtifactError, InputError
from sbc.ir.types import TensorType, bind_symbols


class CpuRuntime:
    def __init__(self, executable, inputs: list[tuple[str, TensorType]],
                 outputs: list[tuple[str, TensorType]], param_names: list[str],
                 params: dict[str, np.ndarray], device=None, assumptions=()):
        self.inputs = inputs
        self.assumptions = list(assumptions)  # sizes the kernels rely on (ir.assumptions)
        self.outputs = outputs
        self.device = device or tvm.cpu()  # runtimes.cuda passes tvm.cuda(0)
        self.vm = relax.VirtualMachine(executable, self.device)
        # The VM keeps per-call registers: concurrent calls corrupt each other. Calls are
        # serialised; each one already uses every core (TVM's thread pool).
        self._lock = threading.Lock()
        # np.asarray(order="C"), not ascontiguousarray: the latter turns 0-d weights into 1-d
        self.params = [tvm.runtime.tensor(np.asarray(params[n], order="C"), self.device)
                       for n in param_names]

    @classmethod
    def from_library_bytes(cls, library: bytes, **kwargs) -> "CpuRuntime":
        """Load a compiled library from bytes: the dynamic loader needs a file, so it goes to a
        private temp dir (mode 0700) that is removed once loaded (the mapping stays valid)."""
        tmp = tempfile.mkdtemp(prefix="sbc-lib-")
        try:
            path = os.path.join(tmp, "lib.so")
            with open(path, "wb") as f:
                f.write(library)
            try:
                lib = tvm.runtime.load_module(path)
            except Exception as e:  # TVM's message is a long C++ trace: keep its last line
                last = (str(e).strip().splitlines() or ["?"])[-1][:200]
                raise ArtifactError(f"cannot load the compiled library: {last}") from e
            return cls(lib, **kwargs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run(self, feeds: Mapping[str, np.ndarray], program: str = "main") -> dict[str, np.ndarray]:
        """Check `feeds` against the signature, run `program` (a function of the executable
        with main's calling convention), return outputs by name."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of arrays by name "
                             f"{[n for n, _ in self.inputs]}, got {type(feeds).__name__}")
        bind_symbols(self.inputs, feeds, self.assumptions)  # SignatureError: one clear line
        args = [tvm.runtime.tensor(np.asarray(feeds[n], order="C"), self.device)
                for n, _ in self.inputs]
        with self._lock:
            try:
                result = self.vm[program](*args, *self.params)
            except AssertionError as e:  # the program's own checks (an index out of range)
                raise InputError(str(e)) from None
            if isinstance(result, tvm.runtime.Tensor):  # a lone output may come back unwrapped
                result = [result]
            return {name: r.numpy() for (name, _), r in zip(self.outputs, result)}
