"""PyTorch in, PyTorch out: an nn.Module compiled by sbc, and sbc as a `torch.compile` backend.

    sbc.torch.compile_module(module, example_inputs, target="cpu", dynamic_shapes=None, ...)
        -> an nn.Module whose forward runs sbc's compiled code on torch tensors
    torch.compile(model, backend="sbc")
        -> each graph dynamo captures is exported (torch.onnx.export, dynamo), compiled by sbc
           (with the compile cache) and run by sbc; a graph sbc cannot compile runs eagerly,
           with a warning naming why

Both go through ONNX: torch.onnx.export turns the module (its weights become initializers)
into the file sbc compiles, so what runs is exactly what `sbc compile` makes of that file.
Tensors cross by DLPack where they can (CPU, contiguous): no copy of inputs or outputs. The
compiled code computes no gradients; forward runs as inference.

The backend compiles one program per input signature (dtypes and shapes, any SymInts dynamo
passes): torch.compile's own dynamic shapes arrive as concrete sizes here, and each new
signature is compiled once (and found in sbc's compile cache next time).
"""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import torch
from torch import nn

from sbc.codegen.targets import target_kind
from sbc.errors import SbcError


def compile_module(module: nn.Module, example_inputs, *, target: str = "cpu",
                   dynamic_shapes=None, **options) -> "CompiledModule":
    """`module` exported with `example_inputs` (a tensor or a tuple of them) and compiled by
    sbc (`options` as sbc.compile's: quantize, passes, cache, ...). dynamic_shapes as
    torch.export takes it ({"x": {0: torch.export.Dim("batch")}}); None: static shapes."""
    import sbc
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    proto = export(module, inputs, dynamic_shapes)
    return CompiledModule(sbc.compile(proto, target=target, **options))


def export(module: nn.Module, inputs: tuple, dynamic_shapes=None):
    """The ONNX model of `module` (torch.onnx.export, dynamo, opset 18, IR version 10)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # torch.export first, non-strict: it traces without dynamo, so it also works while
        # dynamo compiles (the backend), where a nested strict export trips over its guards
        program = torch.export.export(module.eval(), inputs, dynamic_shapes=dynamic_shapes,
                                      strict=False)
        proto = torch.onnx.export(program, dynamo=True, optimize=True, verbose=False).model_proto
    proto.ir_version = min(proto.ir_version, 10)
    return proto


class CompiledModule(nn.Module):
    """An sbc module as an nn.Module: forward(*tensors) -> a tensor, or a tuple of them (one
    per ONNX output, in order)."""

    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled
        self.input_names = [n for n, _ in compiled.inputs]
        self.output_names = [n for n, _ in compiled.outputs]
        # a GPU module takes tensors on its device as they are (DLPack); a CPU one CPU tensors
        self.on_gpu = target_kind(compiled.kind).gpu

    def forward(self, *args):
        if len(args) != len(self.input_names):
            raise TypeError(f"the compiled module takes {len(self.input_names)} inputs "
                            f"({', '.join(self.input_names)}), got {len(args)}")
        feeds = dict(zip(self.input_names, args if self.on_gpu else map(to_numpy, args)))
        outputs = self.compiled.run(feeds, output="torch")  # no copy, on the host or the GPU
        result = tuple(outputs[n] for n in self.output_names)
        return result[0] if len(result) == 1 else result

    def extra_repr(self) -> str:
        return f"sbc {self.compiled.kind}: ({', '.join(self.input_names)}) -> " \
               f"({', '.join(self.output_names)})"


def to_numpy(x):
    """A CPU tensor as a NumPy array over the same memory (detached: no gradient flows)."""
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    if x.device.type != "cpu":
        raise SbcError(f"sbc's torch integration runs on CPU tensors; got one on {x.device}")
    return x.detach().contiguous().numpy()


# -- torch.compile(backend="sbc") ---------------------------------------------------------------

def backend(gm: torch.fx.GraphModule, example_inputs):
    """torch.compile's backend entry (registered as "sbc" through the package's entry point):
    a callable running `gm` compiled by sbc, or gm itself (with a warning) when sbc cannot."""
    return _Backend(gm, list(example_inputs))


class _Backend:
    """One dynamo graph: weights (nn.Parameters among the inputs) are baked into the export as
    constants; the other inputs are the program's. Compiled per input signature."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list):
        self.gm = gm  # (example_inputs only tell which inputs are weights)
        self.constant = [isinstance(x, nn.Parameter) for x in example_inputs]
        # compiled on the first call of each signature, outside dynamo's own tracing (an
        # export nested in it inherits its shape guards)
        self.programs: dict[tuple, CompiledModule | None] = {}

    def __call__(self, *args):
        key = _signature(args)
        program = self.programs[key] if key in self.programs else self._compile(key, list(args))
        if program is None:
            return self.gm(*args)
        dynamic = [x for x, const in zip(args, self.constant) if not const and isinstance(x, torch.Tensor)]
        out = program(*dynamic)
        return out if isinstance(out, tuple) else (out,)

    def _compile(self, key: tuple, args: list) -> CompiledModule | None:
        try:
            frozen = _Frozen(self.gm, args, self.constant)
            self.programs[key] = compile_module(frozen, tuple(frozen.dynamic_examples))
        except Exception as e:  # noqa: BLE001 - sbc's errors and the exporter's own
            warnings.warn(f"sbc could not compile this graph, so it runs eagerly: {_reason(e)}",
                          stacklevel=2)
            self.programs[key] = None
        return self.programs[key]


class _Frozen(nn.Module):
    """The dynamo graph with its weights as buffers and its SymInts fixed: forward takes the
    remaining tensors, returns gm's outputs as a tuple."""

    def __init__(self, gm: torch.fx.GraphModule, args: list, constant: list[bool]):
        super().__init__()
        # the graph without dynamo's metadata: its symbolic sizes would make the exporter
        # insert guards that refer to dynamo's frame
        graph = copy.deepcopy(gm.graph)
        for node in graph.nodes:
            node.meta = {}
        self.gm = torch.fx.GraphModule(gm, graph)
        self.gm.meta = {}
        self.layout = []  # per gm input: ("weight", buffer name) | ("input", i) | ("value", v)
        self.dynamic_examples = []
        for i, (x, const) in enumerate(zip(args, constant)):
            if const:
                self.register_buffer(f"w{i}", x.detach())
                self.layout.append(("weight", f"w{i}"))
            elif isinstance(x, torch.Tensor):
                self.layout.append(("input", len(self.dynamic_examples)))
                self.dynamic_examples.append(x.detach())
            else:  # a SymInt's value: this program is for these sizes
                self.layout.append(("value", int(x)))

    def forward(self, *inputs):
        args = [getattr(self, v) if kind == "weight" else inputs[v] if kind == "input" else v
                for kind, v in self.layout]
        out = self.gm(*args)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def _reason(e: Exception) -> str:
    """One line: the op the exporter has no ONNX form for, else the error's first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    op = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", text)
    if op:
        return f"torch.onnx.export has no ONNX form for {op.group(1)}"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"{type(e).__name__}: {first}" if not isinstance(e, SbcError) else first


def _signature(args) -> tuple:
    return tuple((str(x.dtype), tuple(x.shape)) if isinstance(x, torch.Tensor) else int(x)
                 for x in args)
