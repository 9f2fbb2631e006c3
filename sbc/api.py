"""The public Python API: compile, load, and the compiled Module.

TVM (5 s to import) is imported only when something is compiled or loaded, so that reading
an ONNX file, checking an artifact and reporting errors stay fast (the CLI relies on this).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile

import numpy as np

from sbc.errors import InputError, UnsupportedError
from sbc.ir.dims import Sym
from sbc.runtimes.artifact import check_runnable, read_artifact, signature_from_json, \
    signature_to_json, write_artifact

TARGETS = ("cpu", "cuda", "maca")
MAX_POSITION = 2**40  # tokens per sequence: far past any context, far from int64 overflow
GPU_TARGETS = ("cuda", "maca")  # compiled anywhere; run where the device is (runtimes.cuda/maca)


class Module:
    """A compiled model: `run({input: array}) -> {output: array}`, `save(path)`, and for
    sequence models made recurrent, `session(batch)` for streamed prefill and decoding.

    inputs / outputs: [(name, TensorType)], symbolic dims kept (e.g. f32[batch, 8]); the
    recurrent state and position are not among them (sessions manage them).
    manifest: what `save` writes (target, signature, source, ops, memory certificate, ...).
    files: further artifact members (GPU device code; see runtimes.artifact).

    A cpu module loads its library at once; a cuda / maca one on its first run, so that it
    can be compiled and saved on a machine without the device.
    """

    def __init__(self, library: bytes | None, params: dict[str, np.ndarray], manifest: dict,
                 files: dict[str, bytes] | None = None):
        self.library = library
        self.params = params
        self.manifest = manifest
        self.files = dict(files or {})
        program_inputs = signature_from_json(manifest["inputs"])
        program_outputs = signature_from_json(manifest["outputs"])
        self.recurrent = manifest.get("recurrent")
        hidden = set(self.recurrent["state"]) | {self.recurrent["position"]} if self.recurrent else set()
        self.inputs = [(n, t) for n, t in program_inputs if n not in hidden]
        self.outputs = [(n, t) for n, t in program_outputs if n not in hidden]
        self.state_types = {n: t for n, t in program_inputs if n in hidden}
        self._signature = {"inputs": program_inputs, "outputs": program_outputs,
                           "param_names": manifest["param_names"], "params": params,
                           "assumptions": assumptions_from_json(manifest.get("assumptions", []))}
        self._loaded = None
        if self.kind == "cpu":
            self._loaded = self._load_runtime()

    @property
    def kind(self) -> str:
        return self.manifest["target"]["kind"]

    @property
    def _runtime(self):
        if self._loaded is None:
            self._loaded = self._load_runtime()
        return self._loaded

    def _load_runtime(self):
        """The runtime for the target: TargetUnavailableError (one line) without the device."""
        if self.kind == "cuda":
            from sbc.runtimes.cuda import cuda_runtime
            return cuda_runtime(self.library, self.files, **self._signature)
        if self.kind == "maca":
            from sbc.runtimes.maca import MacaRuntime
            return MacaRuntime(self.files, self.manifest, **self._signature)
        from sbc.runtimes.cpu import CpuRuntime
        return CpuRuntime.from_library_bytes(self.library, **self._signature)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on `feeds` (arrays by input name, exact dtypes); return arrays by output name.
        A recurrent model runs from empty state, i.e. on the whole sequence given."""
        if not self.recurrent:
            return self._runtime.run(feeds)
        from sbc.ir.types import bind_symbols
        env = bind_symbols(self.inputs, feeds)
        results = self._runtime.run({**feeds, **self.initial_state(env)})
        return {n: results[n] for n, _ in self.outputs}

    def initial_state(self, symbols: dict[str, int]) -> dict[str, np.ndarray]:
        """Zero state and position 0 (recurrent models), sized by `symbols` ({"batch": 1})."""
        from sbc.ir.dims import concretize
        from sbc.ir.types import numpy_dtype
        return {n: np.zeros(concretize(list(t.shape), symbols), numpy_dtype(t.dtype))
                for n, t in self.state_types.items()}

    def step(self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray],
             last_only: bool = False) -> tuple[dict, dict]:
        """One call of the recurrent program: (outputs, next state incl. position). With
        `last_only`, the first output (logits) is computed at the last position only."""
        program = "prefill" if last_only and self.recurrent.get("prefill_program") else "main"
        steps = self.steps(feeds)
        position = self._check_position(state, steps)
        results = self._runtime.run({**feeds, **state}, program)
        outputs = {n: results[n] for n, _ in self.outputs}
        new_state = {n: results[n] for n in self.recurrent["state"]}
        new_state[self.recurrent["position"]] = np.asarray(position + steps, np.int64)
        return outputs, new_state

    def steps(self, feeds: dict[str, np.ndarray]) -> int:
        """How many tokens `feeds` holds: the size of the manifest's sequence symbol (artifacts
        from before it was recorded knew only "seq"), read off the first input that has it as
        an axis; the runtime checks the whole signature when it runs (once per step)."""
        seq = Sym.var(self.recurrent.get("sequence_symbol", "seq"))
        for name, t in self.inputs:
            if seq in t.shape and np.ndim(feeds.get(name)) == t.rank:
                return int(np.shape(feeds[name])[list(t.shape).index(seq)])
        from sbc.ir.types import bind_symbols  # a missing or misshapen input: its own error
        return bind_symbols(self.inputs, feeds)[str(seq)]

    def _check_position(self, state: dict, steps: int) -> int:
        """The state's position: one integer in [0, MAX_POSITION - steps]. A negative one
        would index the window buffers from before their start; a huge one overflows."""
        name = self.recurrent["position"]
        position = np.asarray(state[name]) if name in state else np.zeros(0)
        if position.dtype != np.int64 or position.size != 1:
            raise InputError(f"the state's '{name}' must be one int64, got "
                             f"{position.dtype}{list(position.shape)}")
        value = int(position.reshape(-1)[0])
        if not 0 <= value <= MAX_POSITION - steps:
            raise InputError(f"position {value} is out of range: a sequence's position must be "
                             f"in [0, {MAX_POSITION}] after its {steps} new tokens")
        capacity = self.recurrent["memory_certificate"].get("max_context")
        if capacity is not None and value + steps > capacity:
            raise InputError(f"the context would hold {value + steps} tokens, more than the "
                             f"{capacity} its full-attention KV cache holds (compile with "
                             "--max-context to allow more)")
        return value

    def session(self, batch: int = 1, chunk: int = 512):
        """A stateful session (prefill, decode, generate, save/load state) over this module."""
        from sbc.runtimes.session import Session
        return Session(self, batch=batch, chunk=chunk)

    __call__ = run

    def save(self, path: str | os.PathLike) -> None:
        """Write the `.sbc` artifact atomically (nothing is left behind if interrupted)."""
        self.manifest = write_artifact(path, self.library, self.params, self.manifest, self.files)

    def __repr__(self):
        sig = lambda s: ", ".join(f"{n}: {t}" for n, t in s)  # noqa: E731
        return (f"<sbc.Module ({sig(self.inputs)}) -> ({sig(self.outputs)}) "
                f"on {self.manifest['target']['kind']}>")


def assumptions_from_json(items) -> list:
    """The manifest's assumptions (sbc.ir.assumptions), as the runtimes check them."""
    from sbc.errors import ArtifactError
    from sbc.ir.assumptions import Assumption
    try:
        return [Assumption.from_json(item) for item in items]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ArtifactError(f"the artifact's manifest has malformed assumptions ({e})") from e


def check_target(target: str, arch: str | None = None) -> None:
    """A known target (and arch); the error names what is supported. Needs no TVM."""
    if target not in TARGETS:
        raise UnsupportedError(f"unknown target '{target}'; supported: {', '.join(TARGETS)}")
    from sbc.codegen.target import resolve
    resolve(target, arch)


def compile(model, target: str = "cpu", *, arch=None, passes=None, quantize=None, calibrate=None,
            max_context=None, print_after=(), time_passes=False, verify_each=False,
            dump_dir=None) -> Module:
    """Compile an ONNX file path, onnx.ModelProto or sbc.ir.Graph for `target` (cpu, cuda,
    maca; `arch`: the GPU arch, e.g. sm_90 or xcore1000, default sm_80 / $MACA_ARCH).

    passes: None for the default pipeline, else a pipeline string ("dce,cse") or list;
    quantize: None, or "w8" (int8 weights, one scale per 128 input channels, where spikes feed
    a matmul: W8ASpike's integer matmuls) added to the default pipeline;
    max_context: tokens the KV cache of each full causal attention holds (default 4096);
    calibrate: inputs ({name: array} or an .npz path) to measure the spiking sites' firing rates
    on; the figures go to manifest["spike_stats"] (what `sbc report` reads); on cpu the
    spike-sparsity pass then picks per SpikeMatMul the dense or zero-tile-skipping kernel
    (spike_stats["kernels"], with the break-even timings in spike_stats["break_even"]);
    print_after / time_passes / verify_each / dump_dir: the pass manager's debugging aids.
    """
    check_target(target, arch)  # before any work: an unsupported target should fail at once
    fixed_point = passes is None  # the default pipeline, quantized or not, runs to a fixed point
    passes = _pipeline(passes, quantize, max_context)
    from sbc.frontend import import_onnx
    from sbc.ir import Graph, assumptions
    from sbc.passes import run_passes

    # passes rewrite in place: a caller's Graph is copied, not changed behind its back
    graph = copy.deepcopy(model) if isinstance(model, Graph) else import_onnx(model)
    source = _source_info(model)
    # what the model as imported relies on, as well as what the compiled programs do: a pass
    # may drop the node that stated it (a Squeeze that squeezes nothing) while the program
    # still computes the model's answer only where it holds
    relied_on = assumptions.collect(graph)
    graph = run_passes(graph, passes, print_after=print_after, time_passes=time_passes,
                       verify_each=verify_each, dump_dir=dump_dir, fixed_point=fixed_point)
    from sbc.passes.to_recurrent import POSITION, memory_certificate, sequence_symbol, state_names
    from sbc.codegen.build import build
    stats = _calibrate(graph, calibrate) if calibrate is not None else None
    if stats is not None and target == "cpu":
        graph = _choose_spike_kernels(graph, stats)
    programs = {"prefill": prefill_program(graph)} if state_names(graph) else {}
    programs = {n: g for n, g in programs.items() if g is not None}
    relied_on += [a for g in (graph, *programs.values()) for a in assumptions.collect(g)]
    built = build(graph, target, programs, arch=arch)
    manifest = {
        "sbc_version": _version(),
        "target": built.target,
        "inputs": signature_to_json(built.inputs),
        "outputs": signature_to_json(built.outputs),
        "param_names": list(built.param_names),
        "source": source,
        "ops": graph.op_counts(),
        "assumptions": [a.to_json() for a in assumptions.unique(relied_on)],
    }
    if state_names(graph):
        seq = sequence_symbol(graph)  # whatever the exporter named it: runtimes read it here
        manifest["recurrent"] = {"position": POSITION, "state": state_names(graph),
                                 "sequence_symbol": seq,
                                 "memory_certificate": memory_certificate(graph, seq),
                                 "prefill_program": "prefill" in programs}
    if stats is not None:
        manifest["spike_stats"] = stats
    manifest["notes"] = fusion_notes(graph)
    library = None if target == "maca" else _library_bytes(built.executable)
    return Module(library, built.params, manifest, built.files)


QUANTIZE = {"w8": "quantize-weights-int8"}


def _calibrate(graph, data) -> dict:
    from sbc.calibration import calibrate, read_npz
    return calibrate(graph, read_npz(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else data)


def _choose_spike_kernels(graph, stats: dict):
    """spike-sparsity with these stats; its choices and timings are added to `stats`."""
    from sbc.passes.spike_sparsity import SpikeSparsity
    sparsity = SpikeSparsity(stats=stats)
    graph = sparsity.run(graph).graph
    stats["kernels"], stats["break_even"] = sparsity.choices, sparsity.measurements
    return graph


def _pipeline(passes, quantize, max_context):
    """The pipeline to run: `passes` as given, or the default one with the weight quantization
    pass before spike-matmul (which then computes with the int8 weights) and recognise-mixers'
    KV cache capacity."""
    if passes is not None:
        for name, value, spelled in (("quantize", quantize, "quantize-weights-int8"),
                                     ("max_context", max_context, "recognise-mixers{max-context=N}")):
            if value is not None:
                raise UnsupportedError(f"{name}= goes with the default pipeline; with passes=, "
                                       f"name '{spelled}' in the pipeline instead")
        return passes
    from sbc.passes.manager import DEFAULT_PIPELINE
    pipeline = list(DEFAULT_PIPELINE)
    if quantize is not None:
        if quantize not in QUANTIZE:
            raise UnsupportedError(f"unknown quantization '{quantize}'; supported: {', '.join(QUANTIZE)}")
        pipeline.insert(pipeline.index("spike-matmul"), QUANTIZE[quantize])
    if max_context is not None:
        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1:
            raise UnsupportedError(f"max_context must be a positive number of tokens, got {max_context!r}")
        at = pipeline.index("recognise-mixers")
        pipeline[at] = f"recognise-mixers{{max-context={max_context}}}"
    return pipeline


def prefill_program(graph):
    """The step program with the first output (logits) at the last position only, or None
    if last-position does not apply. Weights are shared with `graph`, not copied."""
    from sbc.passes.last_position import LastPosition
    copied = copy.deepcopy(graph, memo={id(p.data): p.data for p in graph.params})
    result = LastPosition().run(copied)
    return result.graph if result.modified else None


def fusion_notes(graph) -> list[str]:
    """What `--explain` prints: attention-like subgraphs left unfused and why, and why the
    model is not recurrent if it is not."""
    from sbc.passes import (fuse_linear_attention, fuse_sliding_window_attention, loop_to_scan,
                             recognise_mixers)
    from sbc.passes.base import explain
    from sbc.passes.to_recurrent import state_names, why_not_recurrent
    rules = loop_to_scan.RULES + fuse_linear_attention.RULES + fuse_sliding_window_attention.RULES
    notes = explain(graph, rules) + recognise_mixers.explain(graph)
    if not state_names(graph):
        notes.append(f"not recurrent: {why_not_recurrent(graph)}")
        if all(v.type.rank < 2 or isinstance(v.shape[1], int) for v in graph.inputs):
            notes.append(FIXED_LENGTH_NOTE)
    return notes


FIXED_LENGTH_NOTE = (
    "the model was exported at a fixed sequence length (no input has a symbolic axis 1; a "
    "Python loop over positions unrolls at the example length): it runs at that length only and "
    "cannot become recurrent; write the mixer with tensor ops (a parallel or chunked form) and "
    "export with a dynamic sequence axis")


def _version() -> str:
    import sbc
    return sbc.__version__


def _library_bytes(executable) -> bytes:
    """export_library writes (and links) a file; the artifact wants its bytes."""
    tmp = tempfile.mkdtemp(prefix="sbc-build-")
    try:
        path = os.path.join(tmp, "lib.so")
        executable.export_library(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _source_info(model) -> dict:
    """Name and sha256 of what was compiled, so an artifact can be traced to its model."""
    if isinstance(model, (str, os.PathLike)):
        digest = hashlib.sha256()
        with open(model, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return {"name": os.path.basename(os.fspath(model)), "sha256": digest.hexdigest()}
    if hasattr(model, "SerializeToString"):  # onnx.ModelProto
        return {"name": model.graph.name or "onnx.ModelProto",
                "sha256": hashlib.sha256(model.SerializeToString()).hexdigest()}
    return {"name": getattr(model, "name", None) or type(model).__name__, "sha256": None}


def load(path: str | os.PathLike, sha256: str | None = None) -> Module:
    """Load a `.sbc` artifact written by `Module.save` / `sbc compile`.

    An artifact is code: loading it runs its compiled library, so load only artifacts you
    trust. sha256: the file's expected digest (as `sbc inspect` prints it, obtained from a
    source you trust); a file that differs is refused before anything of it is read.

    Raises ArtifactError (corrupt, truncated, foreign, other version, other sha256),
    InputError (sha256 not 64 hex digits) or TargetUnavailableError (built for a device or
    CPU this machine does not have).
    """
    path = os.fspath(path)
    return module_from_artifact(read_artifact(path, sha256=sha256), path)


def module_from_artifact(artifact, path: str = "the artifact") -> Module:
    """A Module from an already verified artifact, once its target is known to run here."""
    check_runnable(artifact.manifest, path)
    return Module(artifact.library, artifact.params, artifact.manifest, artifact.files)
