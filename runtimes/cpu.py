"""The CPU runtime: a TVM-compiled library driven by the Relax VM.

The library and the weights are loaded once (weights as TVM tensors on tvm.cpu()); each `run`
checks the inputs against the signature (names, dtypes, shapes incl. symbolic dims, and the
relations between dims the kernels were compiled for) and returns NumPy arrays by output name.
NumPy inputs of a signature (dtype and shape per input) that passed the checks once run by its
plan (CpuRuntime._plan): small inputs are copied into buffers the plan owns, already wrapped as
TVM tensors; large ones go to the kernels without a copy (DLPack) where they are dense and
aligned as the kernels need (to their element: codegen.element_aligned_arguments; artifacts
from before it, 64 bytes), else as one aligned copy. Outputs come back over the VM's own
buffers where those are fresh ones (see CpuRuntime._host_outputs).
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
import tvm_ffi
from tvm import relax
from tvm.relax.op.base import relax_assert_op as _tvm_assert_op

from sbc.errors import ArtifactError, InputError
from sbc.ir.graph import ALIGN as _ALIGN, aligned_empty
from sbc.ir.types import TensorType, bind_symbols, numpy_dtype
from sbc.runtimes.interop import described, device_tensor, on_device
from sbc.runtimes.threads import use_threads


class CpuRuntime:
    num_threads = None  # threads the kernels use (None: one per core; sbc.runtimes.threads)

    def __init__(self, executable, inputs: list[tuple[str, TensorType]],
                 outputs: list[tuple[str, TensorType]], param_names: list[str],
                 params: dict[str, np.ndarray], device=None, assumptions=(),
                 device_io: bool | None = None, element_aligned: bool = False):
        self.inputs = inputs
        # what an argument's address must be a multiple of; 0: its element's size
        self.alignment = 0 if element_aligned else _ALIGN
        self.assumptions = list(assumptions)  # sizes the kernels rely on (ir.assumptions)
        self.outputs = outputs
        self.device = device or tvm.cpu()  # runtimes.cuda passes tvm.cuda(i)
        # a device's memory is not the host's: inputs are copied over, outputs back (but
        # those a caller keeps). None: whenever the device is not the CPU; True on the CPU
        # runs that path where it can be tested without a GPU
        on_host = self.device.dlpack_device_type() == _CPU
        self.device_io = not on_host if device_io is None else device_io
        self.vm = relax.VirtualMachine(executable, self.device)
        # The VM keeps per-call registers: concurrent calls corrupt each other. Calls are
        # serialised; each one already uses every core (TVM's thread pool: runtimes.threads).
        self._lock = threading.Lock()
        # on the CPU the weights are used in place where they are aligned (an artifact's are:
        # runtimes.artifact reads them into one aligned buffer), so they are held once;
        # np.asarray(order="C"), not ascontiguousarray: the latter turns 0-d weights into 1-d
        if on_host:
            self.params = _host_tensors([params[n] for n in param_names], self.alignment)
        else:
            self.params = [tvm.runtime.tensor(np.asarray(params[n], order="C"), self.device)
                           for n in param_names]
        self._names = [n for n, _ in inputs]
        self._output_range = range(len(outputs))
        self._functions = {}  # program name -> the VM's function
        self._checked = set()  # signatures (dtype, shape per input) that passed the checks
        self._plans = {}  # signature of NumPy feeds that passed the checks -> its _Plan
        self._first_outputs = {}  # program -> its first call's output tensors (see _host_outputs)
        self._fresh_outputs = {}  # program -> per output: a fresh buffer on every call

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

    def run(self, feeds: Mapping[str, np.ndarray], program: str = "main",
            keep=()) -> dict[str, np.ndarray]:
        """Check `feeds` against the signature, run `program` (a function of the executable
        with main's calling convention), return outputs by name. On a device, the outputs
        named in `keep` stay there as TVM tensors (a session's state: fed back to the next
        step as they are, never through the host); on the CPU every output is a host array
        over the VM's own buffer anyway."""
        if not self.device_io and type(feeds) is dict and len(feeds) == len(self._names):
            # the common case, NumPy arrays on the CPU: a signature that passed runs by its plan
            try:
                values = [feeds[n] for n in self._names]
                key = tuple([(type(v), v.dtype, v.shape) for v in values])
                plan = self._plans.get(key)
            except (KeyError, AttributeError, TypeError):  # not arrays: the checks name it
                plan = key = None
            if plan is None and key is not None:
                plan = self._plan(feeds, values, key)
            if plan is not None:
                return self._run_plan(plan, values, program)
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of arrays by name "
                             f"{self._names}, got {type(feeds).__name__}")
        self._check(feeds)  # SignatureError: one clear line
        if self.device_io:
            args = [self._on_device(feeds[n]) for n, _ in self.inputs]
            return {name: r if name in keep else r.numpy()
                    for (name, _), r in zip(self.outputs, self._call(program, args))}
        for name, _ in self.inputs:
            if on_device(feeds[name]):
                raise InputError(f"input '{name}' is in device memory; this module runs on the "
                                 f"cpu: give it host arrays")
        args = _host_tensors([feeds[n] for n in self._names], self.alignment)
        with self._lock:
            result = self._invoke(program, [*args, *self.params])
            return self._host_outputs(program, result, {a.data_ptr() for a in args})

    def _plan(self, feeds: dict, values: list, key) -> _Plan | None:
        """The plan of a new signature of NumPy feeds, once they pass the checks in full
        (SignatureError otherwise); None for feeds that are not all NumPy arrays."""
        if not all(type(v) is np.ndarray for v in values):
            return None
        bind_symbols(self.inputs, feeds, self.assumptions)  # SignatureError: one clear line
        try:
            plan = _Plan(values, self.params)
        except BufferError:  # a dtype NumPy's DLPack cannot export: the general path says so
            return None
        if len(self._plans) >= _CHECKED_MAX:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _run_plan(self, plan: _Plan, values: list, program: str) -> dict:
        """Run feeds of a planned signature: small inputs copied into the plan's own buffers
        (under the lock: they are shared by the signature's calls), large ones as _host_tensors
        makes them."""
        with self._lock:
            for i, view in plan.copies:
                view[...] = values[i]
            args, inputs = plan.args, ()
            if args is None:
                args = list(plan.tensors)
                large = _host_tensors([values[i] for i in plan.direct], self.alignment)
                for i, tensor in zip(plan.direct, large):
                    args[i] = tensor
                args.extend(self.params)
                inputs = {t.data_ptr() for t in large}
            result = self._invoke(program, args)
            return self._host_outputs(program, result, inputs, plan.lo, plan.hi)

    def _on_device(self, value):
        """An input on this runtime's device: a tensor a run kept there (or a caller's, by
        DLPack: a torch CUDA tensor) as it is, anything else copied over."""
        if on_device(value) and not isinstance(value, tvm.runtime.Tensor):
            value = device_tensor(value)
        if isinstance(value, tvm.runtime.Tensor):
            if value.device == self.device:
                return value
            value = value.numpy()  # another device's: through the host
        return tvm.runtime.tensor(np.asarray(value, order="C"), self.device)

    def to_host(self, value) -> np.ndarray:
        """A kept output (or any input value) as a host array."""
        return value.numpy() if isinstance(value, tvm.runtime.Tensor) else np.asarray(value)

    def _host_outputs(self, program, result, inputs=(), lo: int = 0, hi: int = 0) -> dict:
        """Outputs as NumPy arrays over the VM's buffers (np.from_dlpack: no copy; each array
        keeps its buffer alive), except those that are buffers the runtime or the caller still
        holds (an input, a weight, a folded constant), which a caller's write would corrupt:
        those are copied. Inputs are the caller's buffers (`inputs`: their addresses) and a
        plan's (addresses in [lo, hi)); an identity graph returns its input. The first two
        calls of a program copy everything and tell the rest apart: the first call's outputs
        are kept alive until the second returns, so a buffer the second call returns again is
        one the runtime holds, not a fresh one. Called with the lock held."""
        fresh = self._fresh_outputs.get(program)
        if fresh is None:  # the first two calls: learn which outputs are fresh buffers
            first = self._first_outputs.pop(program, None)
            if first is None:
                self._first_outputs[program] = result
            else:
                held = {r.data_ptr() for r in first}
                self._fresh_outputs[program] = [r.data_ptr() not in held for r in result]
            return {name: np.from_dlpack(r).copy() for (name, _), r in zip(self.outputs, result)}
        arrays = {}
        for (name, _), r, ok in zip(self.outputs, result, fresh):
            a = np.from_dlpack(r)
            address = r.data_ptr()
            held = not ok or address in inputs or lo <= address < hi
            arrays[name] = a.copy() if held else a
        return arrays

    def _call(self, program: str, args) -> list:
        with self._lock:
            return self._invoke(program, [*args, *self.params])

    def _invoke(self, program: str, args) -> list:
        """Call `program` on `args` (inputs then weights; the lock held): its output tensors."""
        function = self._functions.get(program)
        if function is None:  # the VM's lookup costs microseconds: once per program
            function = self._functions[program] = self.vm[program]
        use_threads(self.num_threads)  # the calling thread's pool, shared by all modules
        try:
            result = function(*args)
        except AssertionError as e:  # the program's own checks (an index out of range)
            raise InputError(str(e)) from None
        if isinstance(result, _Tensor):  # a lone output may come back unwrapped
            return [result]
        if _array_item is None:
            return list(result)
        # one element at a time: Array.__iter__ costs ~1 us an element in Python
        return [_array_item(result, i) for i in self._output_range]

    def _check(self, feeds) -> None:
        """bind_symbols' checks (names, dtypes, ranks, shapes, assumptions), remembered: they
        depend only on the names, dtypes and shapes of the feeds, so a signature that passed
        once passes again (a serving loop feeds the same few shapes over and over) and only a
        new one is checked in full. Only NumPy arrays are remembered."""
        try:
            key = tuple((feeds[n].dtype, feeds[n].shape) for n, _ in self.inputs
                        if type(feeds[n]) is np.ndarray)
        except KeyError:
            key = None  # a missing input: bind_symbols names it
        if key is not None and len(key) == len(self.inputs) == len(feeds) and key in self._checked:
            return
        bind_symbols(self.inputs, {n: described(v) for n, v in feeds.items()}, self.assumptions)
        if key is not None and len(key) == len(self.inputs) == len(feeds):
            if len(self._checked) >= _CHECKED_MAX:
                self._checked.clear()
            self._checked.add(key)


_CPU = 1  # DLPack's kDLCPU
_BF16 = numpy_dtype("bf16")
_CHECKED_MAX = 256
_STAGE_MAX = 16384  # bytes: inputs up to this size are copied into a plan's buffers
_Tensor = tvm.runtime.Tensor


def _assert_op(condition, format_str, *format_args):
    """relax.run.assert_op, the assert after a model's index checks (codegen.index_checks): a
    condition that holds, read on the host by DLPack (~0.4 us), returns at once; anything else
    goes to TVM's own implementation, which raises the check's message. TVM's reads the
    condition by Tensor.numpy() (~15 us: a new array, a copy through ctypes) on every call."""
    try:
        value = np.from_dlpack(condition)
        if value.dtype == np.bool_ and value.shape == () and value:
            return None
    except Exception:  # noqa: BLE001 - not a host tensor (a GPU's): TVM's own says what it is
        pass
    return _tvm_assert_op(condition, format_str, *format_args)


# the programs look it up by name when they run; same behaviour, only the common case faster
tvm.register_global_func("relax.run.assert_op", _assert_op, override=True)
try:  # one element of a TVM array (what Array.__getitem__ calls after its Python checks)
    from tvm_ffi._ffi_api import ArrayGetItem as _array_item
except ImportError:
    _array_item = None


class _Plan:
    """What the runs of one signature (dtype and shape of each input) share. Inputs of at most
    _STAGE_MAX bytes are copied on each call into one 64-byte aligned buffer the plan owns,
    wrapped as TVM tensors once (a copy of a few bytes costs ~0.3 us; checking a caller's
    address and wrapping its array ~3 us); larger ones are the call's own (`direct`:
    _host_tensors). With no large input, the whole argument tuple (inputs, then the weights)
    is built once."""

    __slots__ = ("tensors", "copies", "direct", "args", "lo", "hi", "_buffer")

    def __init__(self, values: list[np.ndarray], params: list):
        small = [i for i, a in enumerate(values) if a.nbytes <= _STAGE_MAX]
        sizes = [-(-values[i].nbytes // _ALIGN) * _ALIGN for i in small]
        self._buffer, offset = aligned_empty(sum(sizes), np.uint8), 0
        self.lo = self._buffer.ctypes.data
        self.hi = self.lo + sum(sizes)
        self.tensors, self.copies = [None] * len(values), []
        for i, size in zip(small, sizes):
            a = values[i]
            if a.size == 0:  # nothing to copy; TVM allocates it (any address is valid)
                self.tensors[i] = tvm.runtime.empty(a.shape, a.dtype)
                continue
            view = self._buffer[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
            self.tensors[i] = _from_dlpack(view)
            self.copies.append((i, view))
            offset += size
        self.direct = [i for i, t in enumerate(self.tensors) if t is None]
        self.args = None if self.direct else (*self.tensors, *params)


def _compact(a: np.ndarray) -> bool:
    """Strides exactly those of a dense row-major array: TVM checks them all, NumPy's
    c_contiguous ignores those of axes of length 1 (a slice can leave any there)."""
    stride = a.itemsize
    for n, s in zip(reversed(a.shape), reversed(a.strides)):
        if s != stride:
            return False
        stride *= n
    return True


def _host_tensors(values, alignment: int = _ALIGN) -> list:
    """CPU inputs as TVM tensors: each caller's array itself (DLPack, no copy) where it is
    C-contiguous and at an address the kernels take (a multiple of `alignment`; 0: any
    element-aligned one), else a copy into one aligned buffer shared by the call's small
    inputs. tvm.runtime.tensor (empty + copyfrom) costs ~30 us per tensor however small; the
    kernels only read their inputs."""
    tensors, staged = [], []
    for i, value in enumerate(values):
        a = value if type(value) is np.ndarray else np.asarray(value)
        aligned = a.ctypes.data % alignment == 0 if alignment else a.flags.aligned
        if a.flags.c_contiguous and aligned and _compact(a):
            try:
                tensors.append(_from_dlpack(a))
                continue
            except BufferError:
                pass  # a read-only array (this DLPack cannot say so): copy it
        if a.size == 0:  # NumPy may give an empty view any address: TVM allocates it
            tensors.append(tvm.runtime.empty(a.shape, a.dtype))
            continue
        tensors.append(None)
        staged.append((i, a))
    if staged:
        sizes = [-(-a.nbytes // _ALIGN) * _ALIGN for _, a in staged]
        raw, offset = aligned_empty(sum(sizes), np.uint8), 0
        for (i, a), size in zip(staged, sizes):
            copy = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
            copy[...] = a
            tensors[i] = _from_dlpack(copy)
            offset += size
    return tensors


def _from_dlpack(a: np.ndarray):
    """A TVM tensor over `a`'s memory, whose alignment the caller checked (tvm.runtime's
    from_dlpack insists on 64 bytes). NumPy's DLPack has no bfloat16 (ml_dtypes' dtype): a bf16
    array (a weight kept in a checkpoint's dtype) crosses as its uint16 words, then viewed."""
    if a.dtype == _BF16:
        return tvm_ffi.from_dlpack(a.view(np.uint16), require_contiguous=True)._create_view(
            a.shape, "bfloat16")
    return tvm_ffi.from_dlpack(a, require_contiguous=True)
