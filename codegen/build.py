"""sbc IR -> TVM Relax module -> fused, scheduled TIR -> the target's executable.

Calling convention of the compiled VM function "main": (graph inputs..., params...) in the
order of `BuiltModule.inputs` then `BuiltModule.param_names`; it returns a tuple of the graph
outputs. Further programs over the same inputs and weights (e.g. "prefill", which computes the
first output at the last position only) are functions of the same executable with the same
calling convention. Symbolic dims become one int64 TIR variable per symbol, so one executable runs every
batch and sequence length. Weights are run-time parameters, not constants in the library.

Every target shares the lowering; the Target object (codegen.targets) gives what differs:
kernels replacing generic ones (the spike matmul's dot instruction for the CPU, thread-bound
kernels for GPUs), the schedule (codegen.schedule_cpu; codegen.schedule_gpu: dlight's GPU
rules), TVM's target, and device code beside the host library (nvcc for CUDA, codegen.maca's
source and package for MetaX). The same model and options give the same library bytes.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, te, tirx

from sbc.codegen.index_checks import CHECKED_OPS, IndexCheck, checked_axes, emit_assert, \
    emit_index_check
from sbc.codegen.lower import RULES, TVM_DTYPES, Ctx, Known
from sbc.codegen.schedule_cpu import SCHEDULED
from sbc.codegen.targets import Target, resolve
from sbc.errors import CompileError, SbcError, UnsupportedError
from sbc.ir import Graph, TensorType, Value, get_op

OPAQUE = 8  # relax's OpPatternKind kOpaque: FuseOps leaves the kernel alone
COMM_REDUCE = 3  # kCommReduce: FuseOps fuses elementwise producers into the kernel
# Row reductions whose elementwise producers are fused into them (the RMSNorm before a spike
# encoder): the producer's output is then not written to memory. AnnotateTIROpPattern would
# call them kOutEWiseFusable (their epilogue after the reduction), which fuses consumers only.
# Not ReduceMean: x^2 fused into the mean's sum becomes an FMA (other bits) and was slower.
FUSE_PRODUCERS = {"SpikeEncode": COMM_REDUCE}


@dataclass
class BuiltModule:
    executable: object  # tvm.relax.VMExecutable
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]
    param_names: list[str]
    params: dict[str, np.ndarray]
    target: dict = field(default_factory=dict)  # the manifest's target entry
    files: dict[str, bytes] = field(default_factory=dict)  # further artifact members (GPU code)
    has_library: bool = True  # whether the target's artifact holds the executable (lib.so)

    @functools.cached_property
    def library(self) -> bytes | None:
        """The executable as lib.so bytes (linked when first asked for: tests that only run
        the executable skip it), or None for a target without one (maca)."""
        return library_bytes(self.executable) if self.has_library else None


def build(graph: Graph, target: Target | str = "cpu", programs: dict[str, Graph] | None = None,
          arch: str | None = None) -> BuiltModule:
    """Compile `graph` as "main" (and each of `programs`, graphs over the same inputs and
    weights, under its name) for `target` (a codegen.targets.Target, or its kind: "cpu" is
    this machine's CPU, "cuda" / "maca" with `arch` sm_80, xcore1000, ...). What differs by
    target (kernels, schedules, device code) the Target says; see the module docstring."""
    if isinstance(target, str):
        target = resolve(target, arch)  # UnsupportedError naming the supported ones
    programs = {"main": graph, **(programs or {})}
    for g in programs.values():
        check_supported(g)
    lowerer = _Lowerer(programs, kernel_fns=target.kernel_lowerings(), where=target.kind)
    mod = lowerer.run()
    tvm_target = target.tvm()
    kernels = dict(lowerer.kernels)
    try:
        mod = fuse_ops(mod)
        kernels.update(fused_kernels(mod, lowerer.kernels))
        mod = target.schedule(fuse_tir(mod), tvm_target, kernels)
    except SbcError:
        raise
    except Exception as e:  # TVM's own errors are long C++ traces: chained, not in the message
        raise CompileError(f"TVM could not schedule the model for {target.kind}: "
                           f"{tvm_error_line(e)} ({TVM_LOG_HINT})") from e
    with target.device_compiler() as device:
        try:
            with tvm.transform.PassContext(config=target.pass_config()):
                executable = compile_module(mod, tvm_target, target.tir_pipeline())
        except Exception as e:
            own = device.failure()  # sbc's own error in a device-compiler callback, if any
            raise own or CompileError(describe_failure(mod, tvm_target, kernels, target.kind,
                                                       e)) from e
    files = device.finish(mod)
    return BuiltModule(
        executable=executable,
        inputs=[(v.name, v.type) for v in graph.inputs],
        outputs=[(n, v.type) for n, v in zip(graph.output_names, graph.outputs)],
        param_names=[p.name for p in graph.params],
        params={p.name: p.data for p in graph.params},
        target={**target.manifest(), **device.manifest()},
        files=files,
        has_library=target.has_library,
    )


def library_bytes(executable) -> bytes:
    """export_library writes (and links) a file; the artifact wants its bytes."""
    tmp = tempfile.mkdtemp(prefix="sbc-build-")
    try:
        path = os.path.join(tmp, "lib.so")
        executable.export_library(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compile_module(mod: tvm.IRModule, tvm_target, tir_pipeline: str = "default") -> object:
    """TVM's build of the scheduled module: "default_build" lowers and generates code only (no
    dlight, sbc's schedules stay as they are), then the shape functions are put in order so
    that the same model gives the same library bytes; `tir_pipeline` lowers the kernels."""
    pipeline = tvm.transform.Sequential([relax.get_pipeline("default_build"),
                                         order_shape_functions])
    return tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline, tir_pipeline=tir_pipeline)


@tvm.transform.module_pass(opt_level=0, name="sbc.OrderShapeFunctions")
def order_shape_functions(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Sort the stores of each VM shape function by heap slot. VMShapeLower emits them in the
    order of a hash map keyed by object addresses, so two builds of one model differed in
    these functions' code (and in nothing else). The stores are independent: each reads only
    slots computed before the function runs."""
    for gv, func in list(mod.functions_items()):
        body = getattr(func, "body", None)
        if gv.name_hint.startswith("shape_func") and isinstance(body, tirx.SeqStmt) and \
                all(isinstance(s, tirx.BufferStore) for s in body.seq):
            ordered = sorted(body.seq, key=lambda store: int(store.indices[0]))
            mod[gv] = func.with_body(tirx.SeqStmt(ordered))
    return mod


def check_supported(graph: Graph) -> None:
    """Fail before any TVM work if an op has no lowering (there is no fallback)."""
    for node in graph.nodes:
        if node.op not in RULES and not all(v.data is not None for v in node.outputs):
            raise UnsupportedError(f"no cpu lowering for op '{node.op}' at {node.where()}; "
                                   f"supported: {', '.join(sorted(RULES))}")


def fuse_ops(mod: tvm.IRModule) -> tvm.IRModule:
    """Group kernels: afterwards each group is a relax function marked "Primitive"."""
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        # reshape-like kernels become zero-copy views before fusion can hide them
        relax.transform.RewriteDataflowReshape(),
        # no relax FoldConstant: sbc's fold-constants pass folds, and relax's re-creates
        # zero-size constants that the library serialiser cannot store
        relax.transform.FuseOps(),
    ])(mod)


def fuse_tir(mod: tvm.IRModule) -> tvm.IRModule:
    """Merge each group into one PrimFunc (named like the group) and drop the leftovers."""
    return tvm.transform.Sequential([
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])(mod)


def fuse(mod: tvm.IRModule) -> tvm.IRModule:
    return fuse_tir(fuse_ops(mod))


def fused_kernels(mod: tvm.IRModule, kernels: dict[str, list]) -> dict[str, list]:
    """Fused group name -> the sbc nodes inside it (for error messages)."""
    groups = {}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and func.attrs is not None and "Primitive" in func.attrs:
            groups[gv.name_hint] = [n for callee in relax.analysis.all_global_vars(func)
                                    for n in kernels.get(callee.name_hint, [])]
    return groups


TVM_LOG_HINT = "`sbc compile --tvm-log FILE` writes TVM's full error"


def describe_failure(mod: tvm.IRModule, target, kernels: dict[str, list], kind: str,
                     error: Exception) -> str:
    """One line naming the kernel (its sbc nodes and ops) that TVM could not compile, found by
    compiling the kernels one at a time, and the gist of TVM's error; the full error stays
    chained (the CLI writes it to --tvm-log)."""
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        try:
            # a public symbol, or TVM skips the packed-API lowering that codegen expects
            tvm.compile(tvm.IRModule({gv: func.with_attr("global_symbol", gv.name_hint)}), target=target)
        except Exception as single:  # noqa: BLE001 - any failure names this kernel
            from sbc.codegen.schedule_gpu import describe_kernel
            return (f"TVM could not compile {describe_kernel(gv.name_hint, kernels)} for {kind}: "
                    f"{tvm_error_line(single)} ({TVM_LOG_HINT})")
    return f"TVM failed to build the model for {kind}: {tvm_error_line(error)} ({TVM_LOG_HINT})"


def tvm_error_line(e: Exception) -> str:
    """The telling line of a TVM error (a C++ trace of hundreds of lines): a failed check or
    the error's own message, without the trace and the printed IR."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Check failed" in ln:
            return ln[ln.index("Check failed"):][:240]
    for i, ln in enumerate(lines):
        if not ln.startswith(("Traceback", "File ", "^", "#", "(...", "@", "Error in pass",
                              "Location", "Access path", "Note:")) and ln[0].isalpha():
            if ln.endswith(":") and i + 1 < len(lines):  # "... the following errors:" + the error
                ln = f"{ln} {lines[i + 1]}"
            return ln[:240]
    return type(e).__name__


class _Lowerer:
    def __init__(self, programs: dict[str, Graph], kernel_fns: dict | None = None,
                 where: str = "cpu"):
        self.programs = programs
        self.kernel_fns = kernel_fns or {}  # op -> fn(node) replacing the kernel lowering
        self.where = where  # the target named in error messages
        symbols = sorted({s for g in programs.values() for v in g.values() for s in v.type.symbols})
        self.ctx = Ctx({s: tirx.Var(s, "int64") for s in symbols})
        self.bb = relax.BlockBuilder()
        self.env: dict[int, relax.Expr] = {}
        self.kernels: dict[str, list] = {}  # PrimFunc name -> the sbc nodes it lowers

    def relax_var(self, v: Value) -> relax.Var:
        shape = self.ctx.shape(v.shape)
        return relax.Var(v.name, relax.TensorType(shape, TVM_DTYPES[v.dtype]))

    def run(self) -> tvm.IRModule:
        param_order = [p.name for p in self.programs["main"].params]
        for name, graph in self.programs.items():
            self.function(name, graph, param_order)
        return self.bb.get()

    def function(self, name: str, g: Graph, param_order: list[str]) -> None:
        """One relax function (inputs..., params in `param_order`...) -> tuple of outputs."""
        self.env = {}
        own = {p.name: p for p in g.params}
        main = {p.name: p for p in self.programs["main"].params}
        param_values = [own.get(n, main[n]) for n in param_order]  # unused ones stay arguments
        inputs = [self.relax_var(v) for v in g.inputs]
        params = [self.relax_var(p) for p in param_values]
        self.env.update({id(v): r for v, r in zip(g.inputs + param_values, inputs + params)})
        self.checks = {}
        with self.bb.function(name, inputs + params):
            with self.bb.dataflow():
                for node in g.nodes:
                    if all(v.data is not None for v in node.outputs):
                        continue  # known at compile time: materialised only if used at run time
                    self.lower(node)
                outs = [self.value(v) for v in g.outputs]
                result = self.bb.emit_output(relax.Tuple(outs))
                checks = [self.check_outputs(c) for c in self.checks.values()]
            for check in checks:  # asserts are impure: they go after the dataflow block
                emit_assert(self.bb, check)
            self.bb.emit_func_output(result)

    def index_check(self, node) -> None:
        """A gather's bounds check (codegen.index_checks), shared by gathers of the same
        indices along axes of the same size."""
        data, indices = node.inputs[:2]  # (a scatter's updates come third)
        if is_empty(indices.shape):
            return  # no index to check (the check kernel would divide by the 0 dim)
        key = (id(indices), node.op, tuple(str(data.shape[a]) for a in checked_axes(node)))
        if key not in self.checks:
            self.checks[key] = emit_index_check(self.bb, node, self.value(data), self.value(indices))

    def check_outputs(self, check: IndexCheck) -> IndexCheck:
        """The check's values made visible outside the dataflow block."""
        return IndexCheck(*(self.bb.emit_output(getattr(check, f)) for f in
                            ("ok", "position", "index", "size")), check.message)

    def value(self, v: Value) -> relax.Expr:
        if id(v) not in self.env:  # a compile-time value needed at run time
            self.env[id(v)] = self.constant(v)
        return self.env[id(v)]

    def constant(self, v: Value) -> relax.Expr:
        dtype = TVM_DTYPES[v.dtype]
        if not v.data.size:  # an empty constant does not survive the library's serialisation
            return self.empty(v.data.shape, v.dtype)
        if v.data.dtype != object:
            return self.bb.emit(relax.const(np.asarray(v.data, dtype=dtype), dtype))
        # symbolic values are computed by a kernel
        flat = [self.ctx.expr(d) for d in v.data.reshape(-1)]

        def fill(flat):  # emit_te turns the shape vars in `flat` into kernel parameters
            def body(*index):
                linear = tirx.IntImm("int64", 0)
                for k, n in zip(index, v.data.shape):
                    linear = linear * n + k
                out = tirx.const(0, dtype)
                for pos, e in enumerate(flat):
                    out = tirx.Select(linear == pos, tirx.Cast(dtype, e), out)
                return out
            return te.compute([int(n) for n in v.data.shape], body, name="shape_value")
        return self.bb.emit_te(fill, flat)

    def empty(self, shape, dtype: str) -> relax.Expr:
        """A tensor with no elements (a dim of `shape` is 0), allocated without a kernel."""
        return self.bb.emit(relax.op.builtin.alloc_tensor(
            relax.ShapeExpr(self.ctx.shape(shape)), TVM_DTYPES[dtype], 0))

    def lower(self, node) -> None:
        if node.op == "Identity":  # an alias, not a copy
            self.env[id(node.outputs[0])] = self.value(node.inputs[0])
            return
        if all(is_empty(v.shape) for v in node.outputs):
            # Nothing to compute, and no kernel must be made: TVM's RewriteDataflowReshape
            # takes a kernel whose loops never run for a reshape (its reshape-pattern test
            # holds vacuously, and 0 elements in = 0 out) and replaces it by relax's reshape,
            # which reads a 0 in the new shape as "keep the input's dim": a Slice to [0, 0]
            # became an undefined Var, an Expand of [0] to [3, 0] an IndexError. A rule may
            # also divide by a 0 dim at compile time (Tile).
            for v in node.outputs:
                self.env[id(v)] = self.empty(v.shape, v.dtype)
            if node.op in CHECKED_OPS:  # an out-of-range index still fails, as in onnxruntime
                self.index_check(node)
            return
        rule = RULES[node.op]
        if rule.kernel:
            return self.lower_kernel(node, rule)
        self.ctx.node = node
        args, runtime = [], []
        for i, v in enumerate(node.inputs):
            if v is None:
                args.append(None)
            elif i in rule.known:
                if v.data is None:
                    raise CompileError(f"{node.where()}: input {i} must be known at compile time")
                args.append(Known(v.data))
            else:
                args.append(len(runtime))
                runtime.append(self.value(v))

        def compute(*tensors):
            real = [tensors[a] if isinstance(a, int) else a for a in args]
            while real and real[-1] is None:
                real.pop()
            self.ctx.bind_inputs(tensors)
            try:
                return rule.fn(self.ctx, node, *real)
            finally:
                self.ctx.bind_inputs([])

        # the pattern goes in with the PrimFunc (not set afterwards): the block builder then
        # still shares one PrimFunc between identical nodes, and FuseOps one group
        attrs = {"op_pattern": FUSE_PRODUCERS[node.op]} if node.op in FUSE_PRODUCERS else None
        try:
            out = self.bb.emit_te(compute, *runtime, primfunc_name_hint=_func_name(node),
                                  primfunc_attrs=attrs)
        except SbcError:  # already one readable line (e.g. a symbolic dim that must be known)
            raise
        except Exception as e:  # a rule's or TE's error: the message names the node, TVM's text is chained
            raise CompileError(f"cannot lower {node.where()} for {self.where} ({type(e).__name__}); "
                               f"the cause is chained below") from e
        self.bind_outputs(node, out)
        if node.op in CHECKED_OPS:
            self.index_check(node)

    def lower_kernel(self, node, rule) -> None:
        """A hand-written PrimFunc: already scheduled, and opaque to fusion."""
        fn = self.kernel_fns.get(node.op, rule.fn)
        func = cached_kernel(fn, node).with_attr(SCHEDULED, True).with_attr("op_pattern", OPAQUE)
        gv = self.bb.add_func(func, _func_name(node))
        declared = len(get_op(node.op).inputs)
        inputs = list(node.inputs) + [None] * (declared - len(node.inputs))
        placeholder = relax.const(np.zeros(1, np.float32))
        args = [placeholder if v is None else self.value(v) for v in inputs]
        out_ty = [relax.TensorType(self.ctx.shape(v.shape), TVM_DTYPES[v.dtype]) for v in node.outputs]
        self.bind_outputs(node, self.bb.emit(relax.call_tir(gv, args, out_ty=out_ty)))

    def bind_outputs(self, node, out) -> None:
        call = self.bb.lookup_binding(out)
        if isinstance(call, relax.Call) and call.args and isinstance(call.args[0], relax.GlobalVar):
            self.kernels.setdefault(call.args[0].name_hint, []).append(node)  # relax may share one
        if len(node.outputs) == 1:
            self.env[id(node.outputs[0])] = out
        else:
            for k, v in enumerate(node.outputs):
                self.env[id(v)] = self.bb.emit(relax.TupleGetItem(out, k))


# A hand-written kernel is TVMScript, and parsing one takes about a second (the parser walks
# the interpreter's frames for every statement), while a model repeats a few configurations
# (every layer's SpikeMatMul) and a process compiles many models. A kernel is a function of
# its builder and the node's op, attributes and types (never its names or data), so that is
# the key; PrimFuncs are immutable, so sharing one is safe.
_KERNELS: OrderedDict = OrderedDict()
KERNEL_CACHE_SIZE = 256


def cached_kernel(fn, node) -> tirx.PrimFunc:
    key = (fn, node.op, tuple((k, _attr_key(v)) for k, v in sorted(node.attrs.items())),
           tuple(None if v is None else v.type for v in node.inputs),
           tuple(v.type for v in node.outputs))
    if key in _KERNELS:
        _KERNELS.move_to_end(key)
    else:
        _KERNELS[key] = fn(node)
        if len(_KERNELS) > KERNEL_CACHE_SIZE:
            _KERNELS.popitem(last=False)
    return _KERNELS[key]


def _attr_key(value):
    if isinstance(value, np.ndarray):
        return value.dtype.str, value.shape, value.tobytes()
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    return value


def is_empty(shape) -> bool:
    """Whether a tensor of `shape` has no elements whatever its symbolic dims are."""
    return any(isinstance(d, (int, np.integer)) and d == 0 for d in shape)


def _func_name(node) -> str:
    return node.op.lower()


def to_relax(graph: Graph) -> tvm.IRModule:
    return _Lowerer({"main": graph}).run()
