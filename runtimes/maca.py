"""The MACA runtime: runs a maca artifact on a MetaX GPU through libmcruntime (ctypes).

No TVM runtime is involved (TVM has no MACA device API). The artifact's maca/launches.json
is the host program (codegen.maca): per Relax function, steps that call a PrimFunc, make a
view (reshape), allocate an empty tensor or pick tuple items; per PrimFunc, let-bound scalars, workspaces and kernel
launches with their arguments in the kernel's parameter order and their grid / block extents.
This module evaluates those with the run's symbolic dims, keeps every tensor in device memory
(mcMalloc), and launches each kernel with mcModuleLaunchKernel, its arguments packed into the
"extra" buffer (pointers and 64-bit scalars 8-byte aligned, 32-bit ones 4-byte aligned).
A tensor with no elements gets a 1-byte buffer (never read: no copy goes to or from it) and a
launch with a zero-sized grid or block is skipped.
The device code is maca/kernels.bin (built by mxcc at compile time), or, if the artifact has
none, built here with the SDK's mxcc. Weights and constants go to the GPU once.

Everything below `maca_device_count` needs MetaX hardware: it is written against MACA's
CUDA-mirroring runtime API and has not been executed (no MetaX machine was available).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import os
import threading
import weakref
from collections.abc import Mapping

import numpy as np

from sbc.errors import ArtifactError, InputError, SbcError, TargetUnavailableError

NO_RUNTIME = "no MetaX runtime was found (libmcruntime)"
MEMCPY_H2D, MEMCPY_D2H = 1, 2  # mcMemcpyKind, as cudaMemcpyKind
LAUNCH_END, LAUNCH_BUFFER_POINTER, LAUNCH_BUFFER_SIZE = 0, 1, 2  # as CU_LAUNCH_PARAM_*
AXES = ("x", "y", "z")

# The artifact members of a maca build (codegen.maca writes them, this runtime reads them).
SOURCE, LAUNCHES, SCRIPT, CONSTANTS, BINARY = ("maca/kernels.maca", "maca/launches.json",
                                               "maca/build.sh", "maca/constants.npz",
                                               "maca/kernels.bin")


def evaluate(e, env: dict):
    """Value of an expr_json tree; variables from `env`. Integer division is TIR's (floor
    for // and %, truncating for / and mod on integers)."""
    if isinstance(e, (int, float)):
        return e
    if isinstance(e, str):
        return env[e]
    op, *args = e
    if op == "cast":
        value = evaluate(args[1], env)
        return float(value) if args[0].startswith("float") else int(value)
    if op == "select":
        return evaluate(args[1], env) if evaluate(args[0], env) else evaluate(args[2], env)
    if op == "not":
        return not evaluate(args[0], env)
    a, b = (evaluate(x, env) for x in args)
    return _APPLY[op](a, b)


def _trunc_div(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
          "//": lambda a, b: a // b, "%": lambda a, b: a % b, "/": _trunc_div,
          "mod": lambda a, b: a - _trunc_div(a, b) * b, "min": min, "max": max,
          "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
          "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
          "and": lambda a, b: bool(a and b), "or": lambda a, b: bool(a or b)}


def _library() -> ctypes.CDLL | None:
    """libmcruntime from $MACA_PATH/lib, the loader path, or ldconfig's cache."""
    root = os.environ.get("MACA_PATH", "/opt/maca")
    for name in (os.path.join(root, "lib", "libmcruntime.so"), "libmcruntime.so",
                 ctypes.util.find_library("mcruntime")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def maca_device_count() -> int:
    """MetaX GPUs the runtime sees (0 without libmcruntime or a device)."""
    lib = _library()
    if lib is None:
        return 0
    count = ctypes.c_int(0)
    if lib.mcGetDeviceCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class _Mc:
    """The few libmcruntime calls used, each checked (a failure is one SbcError line)."""

    def __init__(self, device: int = 0):
        self.lib = _library()
        count = maca_device_count()
        if self.lib is None or count == 0:
            raise TargetUnavailableError(f"cannot run the maca model: {NO_RUNTIME} "
                                         f"or no MetaX GPU is present")
        if device >= count:
            raise TargetUnavailableError(f"cannot run the maca model on maca:{device}: this "
                                         f"machine has {count} MetaX GPU(s), maca:0 to "
                                         f"maca:{count - 1}")
        self.lib.mcGetErrorString.restype = ctypes.c_char_p
        self.check(self.lib.mcSetDevice(device), f"mcSetDevice({device})")

    def check(self, code: int, what: str) -> None:
        if code != 0:
            msg = self.lib.mcGetErrorString(code)
            raise SbcError(f"MACA {what} failed: {msg.decode() if msg else code}")

    def malloc(self, nbytes: int) -> ctypes.c_void_p:
        ptr = ctypes.c_void_p()
        self.check(self.lib.mcMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))),
                   "mcMalloc")
        return ptr

    def free(self, ptr) -> None:
        self.lib.mcFree(ptr)

    def upload(self, ptr, array: np.ndarray) -> None:
        self.check(self.lib.mcMemcpy(ptr, array.ctypes.data_as(ctypes.c_void_p),
                                     ctypes.c_size_t(array.nbytes), MEMCPY_H2D), "mcMemcpy")

    def download(self, ptr, array: np.ndarray) -> None:
        self.check(self.lib.mcMemcpy(array.ctypes.data_as(ctypes.c_void_p), ptr,
                                     ctypes.c_size_t(array.nbytes), MEMCPY_D2H), "mcMemcpy")

    def load_module(self, image: bytes):
        module = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(image, len(image))  # kept alive
        self.check(self.lib.mcModuleLoadData(ctypes.byref(module), self._image),
                   "mcModuleLoadData")
        return module

    def function(self, module, name: str):
        fn = ctypes.c_void_p()
        self.check(self.lib.mcModuleGetFunction(ctypes.byref(fn), module, name.encode()),
                   f"mcModuleGetFunction({name})")
        return fn

    def launch(self, fn, grid, block, shared: int, packed: bytes, name: str) -> None:
        buf = ctypes.create_string_buffer(packed, max(len(packed), 1))
        size = ctypes.c_size_t(len(packed))
        extra = (ctypes.c_void_p * 5)(LAUNCH_BUFFER_POINTER, ctypes.cast(buf, ctypes.c_void_p),
                                      LAUNCH_BUFFER_SIZE,
                                      ctypes.cast(ctypes.byref(size), ctypes.c_void_p),
                                      LAUNCH_END)
        u = ctypes.c_uint
        self.check(self.lib.mcModuleLaunchKernel(fn, *(u(g) for g in grid), *(u(b) for b in block),
                                                 u(shared), None, None, extra),
                   f"launch of {name}")

    def synchronize(self) -> None:
        self.check(self.lib.mcDeviceSynchronize(), "mcDeviceSynchronize")


class DeviceTensor:
    def __init__(self, ptr, shape: tuple, dtype: np.dtype, owner: bool = True):
        self.ptr, self.shape, self.dtype, self.owner = ptr, tuple(int(d) for d in shape), \
            np.dtype(dtype), owner

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def pack_arguments(types: list[str], values: list) -> bytes:
    """The kernel's parameter buffer: each argument at its natural alignment."""
    out = bytearray()
    codes = {"handle": "Q", "int64": "q", "uint64": "Q", "int32": "i", "uint32": "I",
             "float32": "f", "float64": "d", "bool": "i", "int8": "i", "int16": "i"}
    import struct
    for ty, value in zip(types, values):
        code = codes.get(ty)
        if code is None:
            raise SbcError(f"MACA kernel argument of type {ty} is not supported")
        size = struct.calcsize(code)
        out += b"\0" * (-len(out) % size)
        if ty == "handle":
            value = value.ptr.value or 0
        out += struct.pack(code, float(value) if code in "fd" else int(value))
    return bytes(out)


class MacaRuntime:
    """run(feeds, program, keep) -> outputs, like CpuRuntime, on MetaX GPU `device`."""

    def __init__(self, files: dict[str, bytes], manifest: dict, inputs, outputs, param_names,
                 params, assumptions=(), device: int = 0, mc=None):
        self.mc = mc or _Mc(device)  # `mc`: libmcruntime's calls by another implementation
        if LAUNCHES not in files or SOURCE not in files:
            raise ArtifactError("the maca artifact lacks its host program or kernel source")
        self.plan = json.loads(files[LAUNCHES])
        self.inputs, self.outputs = inputs, outputs
        self.assumptions = list(assumptions)
        self._lock = threading.Lock()  # one run at a time: runs share the device buffers
        image = files.get(BINARY) or self._build(files[SOURCE].decode(), self.plan["arch"])
        module = self.mc.load_module(image)
        self.kernels = {name: self.mc.function(module, name) for name in self.plan["kernels"]}
        self.values = {n: self._upload(np.asarray(params[n])) for n in param_names}
        if CONSTANTS in files:
            with np.load(io.BytesIO(files[CONSTANTS])) as z:
                self.values.update({n: self._upload(z[n]) for n in z.files})

    @staticmethod
    def _build(source: str, arch: str) -> bytes:
        from sbc.runtimes.machine import compile_maca, find_mxcc
        if find_mxcc() is None:
            raise TargetUnavailableError("the maca artifact has no kernels.bin and the MACA "
                                         "SDK's mxcc was not found to build it (set MACA_PATH)")
        return compile_maca(source, arch)

    def _upload(self, array: np.ndarray) -> DeviceTensor:
        array = np.ascontiguousarray(array)
        t = DeviceTensor(self.mc.malloc(array.nbytes), array.shape, array.dtype)
        if array.nbytes:
            self.mc.upload(t.ptr, array)
        return t

    def _empty(self, shape, dtype) -> DeviceTensor:
        t = DeviceTensor(None, shape, dtype)
        t.ptr = self.mc.malloc(t.nbytes)
        return t

    # -- one run ---------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray], program: str = "main", keep=()) -> dict:
        """Outputs by name as host arrays, but those named in `keep` (a session's state),
        which stay in device memory as DeviceTensors: fed back as they are, freed when no
        longer referenced."""
        from sbc.ir.types import bind_symbols
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of arrays by name "
                             f"{[n for n, _ in self.inputs]}, got {type(feeds).__name__}")
        described = {n: np.broadcast_to(np.zeros((), v.dtype), v.shape)
                     if isinstance(v, DeviceTensor) else v for n, v in feeds.items()}
        bind_symbols(self.inputs, described, self.assumptions)
        with self._lock:
            return self._run(feeds, self.plan["programs"][program], keep)

    def to_host(self, value) -> np.ndarray:
        return self._download(value) if isinstance(value, DeviceTensor) else np.asarray(value)

    def _run(self, feeds: Mapping[str, np.ndarray], func: dict, keep=()) -> dict:
        temps: list[DeviceTensor] = []
        env = dict(self.values)
        try:
            for n, _ in self.inputs:
                if isinstance(feeds[n], DeviceTensor):  # kept by an earlier run: no copy
                    env[n] = feeds[n]
                    continue
                env[n] = self._upload(np.asarray(feeds[n]))
                temps.append(env[n])
            dims = self._bind_dims(func["params"], env)
            for step in func["steps"]:
                self._step(step, env, dims, temps)
            self.mc.synchronize()
            result = self._resolve(func["output"], env, dims)
            result = result if isinstance(result, list) else [result]
            return {name: self._kept(t, temps) if name in keep else self._download(t)
                    for (name, _), t in zip(self.outputs, result)}
        finally:
            for t in temps:
                if t.owner:
                    self.mc.free(t.ptr)

    @staticmethod
    def _bind_dims(params: list[dict], env: dict) -> dict:
        dims = {}
        for p in params:
            for d, actual in zip(p["shape"], env[p["name"]].shape):
                if isinstance(d, str):
                    dims[d] = actual
        return dims

    def _resolve(self, ref: dict, env: dict, dims: dict):
        if "value" in ref:
            return env[ref["value"]]
        if "const" in ref:
            return env[ref["const"]]
        if "item" in ref:
            return self._resolve(ref["item"], env, dims)[ref["index"]]
        if "tuple" in ref:
            return [self._resolve(r, env, dims) for r in ref["tuple"]]
        return evaluate(ref["expr"], dims)

    def _step(self, step: dict, env: dict, dims: dict, temps: list) -> None:
        if "check" in step:
            self._check(step, env, dims)
            return
        if "empty" in step:  # a tensor with a 0 dim: no kernel writes it
            env[step["empty"]] = self._empty([evaluate(d, dims) for d in step["shape"]], step["dtype"])
            temps.append(env[step["empty"]])
            return
        if "view" in step:
            base = self._resolve(step["of"], env, dims)
            env[step["view"]] = DeviceTensor(base.ptr, [evaluate(d, dims) for d in step["shape"]],
                                             base.dtype, owner=False)
            return
        outs = [self._empty([evaluate(d, dims) for d in o["shape"]], o["dtype"])
                for o in step["outputs"]]
        temps.extend(outs)
        args = [self._resolve(a, env, dims) for a in step["args"]]
        scalars = [evaluate(v, dims) for v in step["tir_vars"]]
        self._call(step["call"], args + outs + scalars, temps)
        env[step["name"]] = outs[0] if len(outs) == 1 else outs

    def _call(self, name: str, args: list, temps: list) -> None:
        """One PrimFunc: bind its dims from its buffers, then its lets, workspaces, launches."""
        func = self.plan["functions"][name]
        env, workspaces = {}, {}
        for p, a in zip(func["params"], args):
            if p["kind"] == "scalar":
                env[p["name"]] = a
                continue
            for d, actual in zip(p["shape"], a.shape):
                if isinstance(d, str):
                    env.setdefault(d, actual)
        for s in func["steps"]:
            if "let" in s:
                env[s["let"]] = evaluate(s["value"], env)
            elif "alloc" in s:
                workspaces[s["alloc"]] = self._empty([evaluate(s["numel"], env)], s["dtype"])
                temps.append(workspaces[s["alloc"]])
            else:
                self._launch(s, args, workspaces, env)

    def _launch(self, s: dict, args: list, workspaces: dict, env: dict) -> None:
        info = self.plan["kernels"][s["launch"]]
        values = [args[a["param"]] if "param" in a else workspaces[a["workspace"]]
                  if "workspace" in a else evaluate(a["expr"], env) for a in s["args"]]
        extents = {t: int(evaluate(e, env)) for t, e in s["extents"].items()}
        grid = [extents.get(f"blockIdx.{x}", 1) for x in AXES]
        block = [extents.get(f"threadIdx.{x}", 1) for x in AXES]
        if 0 in grid or 0 in block:  # an empty tensor: nothing to launch
            return
        shared = extents.get("tirx.use_dyn_shared_memory", 0)
        packed = pack_arguments(info["arg_types"], values)
        self.mc.launch(self.kernels[s["launch"]], grid, block, shared, packed, s["launch"])

    def _check(self, step: dict, env: dict, dims: dict) -> None:
        """An index check of the program: its flag, and on failure the message's values."""
        self.mc.synchronize()
        if not self._download(self._resolve(step["check"], env, dims)).all():
            values = [self._download(self._resolve(a, env, dims)) for a in step["args"]]
            raise InputError(step["message"].format(*values))

    def _kept(self, t: DeviceTensor, temps: list) -> DeviceTensor:
        """An output that stays on the device: a buffer of this run is no longer freed with
        the run's temporaries but when the caller drops it."""
        if t.owner and any(t is temp for temp in temps):
            t.owner = False
            weakref.finalize(t, self.mc.free, t.ptr)
        return t

    def _download(self, t: DeviceTensor) -> np.ndarray:
        out = np.empty(t.shape, t.dtype)
        if out.nbytes:
            self.mc.download(t.ptr, out)
        return out
