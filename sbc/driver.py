"""One compile, stage by stage: what `sbc.compile` and `sbc compile` run.

    import    the model (a path, an onnx.ModelProto or an sbc Graph) -> sbc IR
    optimise  the pass pipeline (passes.manager), --quantize and --max-context as its options
    analyse   with calibration data: the spike statistics, then spike-sparsity's kernel choice
    programs  the prefill program (last-position) of a recurrent model
    build     codegen for the target (codegen.build); with --tune, MetaSchedule's search
              beside sbc's schedules (codegen.tune), its log in the compile cache's folder
    package   the manifest, and the Module

Each stage reports its name and wall time to `progress` (the CLI prints a line per stage on a
terminal). A compile the cache (sbc.cache) already holds runs none of them.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from dataclasses import dataclass, field

from sbc.errors import CompileError, SbcError, UnsupportedError
from sbc.module import Module
from sbc.runtimes.artifact import read_artifact, signature_to_json, write_artifact

QUANTIZE = {"w8": "quantize-weights-int8"}


@dataclass
class Options:
    """What `sbc.compile` takes besides the model (see its docstring)."""
    target: str = "cpu"
    arch: str | None = None
    cpu: str | None = None  # the cpu target's CPU (LLVM's name; default: this machine's)
    cores: int | None = None  # the cores that CPU has (default: this machine's)
    passes: str | list | None = None
    quantize: str | None = None
    calibrate: object = None
    max_context: int | None = None
    print_after: str | list | tuple = ()
    time_passes: bool = False
    verify_each: bool = False
    dump_dir: str | None = None
    cache: bool = True
    tokenizer: str | os.PathLike | None = None  # a Hugging Face folder (see runtimes.tokenizer)
    window: str | None = None  # checkpoint folders: "flash" (default) or "cache" (frontend/checkpoint.py)
    tune: int | None = None  # cpu: MetaSchedule trials per static-shape kernel (codegen.tune)

    @property
    def debugging(self) -> bool:
        return bool(self.print_after or self.time_passes or self.verify_each or self.dump_dir)


@dataclass
class Driver:
    options: Options
    progress: object = None  # fn(stage, seconds), called as each stage ends
    facts: dict = field(default_factory=dict)  # pass name -> what the pass reported

    def compile(self, model) -> Module:
        o = self.options
        # before any work: a bad target fails at once
        o.arch = check_target(o.target, o.arch, **self.cpu_options())
        pipeline = pipeline_for(o.passes, o.quantize, o.max_context)
        # before any work: a bad folder fails at once; a checkpoint folder brings its own
        tokenizer = read_tokenizer(o.tokenizer or _checkpoint_tokenizer(model))
        digest = _model_digest(model)  # once: the cache key and the manifest's source both need it
        entry = None if o.debugging or o.calibrate is not None else _cache_entry(
            digest, o.target, o.cache, arch=o.arch, passes=pipeline, fixed_point=o.passes is None,
            window=o.window, **self.cpu_options(),
            **({"tokenizer": tokenizer.digest} if tokenizer else {}))
        cached = _from_cache(entry, model) if entry else None
        if cached is not None:
            return cached
        graph, relied_on = self.stage("import", self.import_model, model)
        check_tokenizer_vocab(tokenizer, graph)  # before the long build
        graph = self.stage("optimise", self.optimise, graph, pipeline)
        stats = self.stage("analyse", self.analyse, graph) if o.calibrate is not None else None
        programs = self.stage("programs", self.programs, graph)
        built = self.stage("build", self.build, graph, programs)
        source = {"name": _source_name(model), "sha256": digest}
        module = self.stage("package", self.package, source, graph, programs, built, stats,
                            relied_on)
        attach_tokenizer(module, tokenizer)
        if entry:
            from sbc import cache as compile_cache
            compile_cache.store(entry, lambda path: write_artifact(
                path, module.library, module.params, module.manifest, module.files))
        return module

    def cpu_options(self) -> dict:
        """--cpu / --cores / --tune, as the cpu target takes them (only when given: a GPU
        target refuses them by name). They are part of the compile cache's key."""
        o = self.options
        return {k: v for k, v in (("cpu", o.cpu), ("cores", o.cores), ("tune", o.tune))
                if v is not None}

    @functools.cached_property
    def target(self):
        """The codegen Target of this compile (resolved once: the CPU's name is LLVM's).
        With --tune, the tuning log's folder goes down to it (codegen imports no sbc.cache)."""
        from sbc.codegen.targets import resolve
        options = self.cpu_options()
        if self.options.tune is not None:
            from sbc.cache import tune_dir
            options["tune_log"] = str(tune_dir())
        return resolve(self.options.target, self.options.arch, **options)

    def stage(self, name: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        if self.progress is not None:
            self.progress(name, time.perf_counter() - start)
        return result

    def import_model(self, model):
        """The graph, and what the model as imported relies on (sbc.ir.assumptions): a pass
        may drop the node that stated it (a Squeeze that squeezes nothing) while the program
        still computes the model's answer only where it holds."""
        from sbc.frontend import import_checkpoint, import_onnx, is_checkpoint
        from sbc.ir import Graph
        from sbc.ir.registry import collect_assumptions
        if isinstance(model, Graph):
            # passes rewrite in place: a caller's Graph is copied, not changed behind its back
            graph = copy.deepcopy(model)
        elif is_checkpoint(model):  # a Hugging Face checkpoint folder (SpikingBrain release)
            graph = import_checkpoint(model, window=self.options.window or "flash")
        elif self.options.window is not None:
            raise UnsupportedError("window= (the sliding-window convention) applies to "
                                   "checkpoint folders only; an ONNX model carries its own masks")
        else:
            graph = import_onnx(model)
        return graph, collect_assumptions(graph)

    def optimise(self, graph, pipeline):
        o = self.options
        return self.run_passes(graph, pipeline, print_after=o.print_after,
                               time_passes=o.time_passes, verify_each=o.verify_each,
                               dump_dir=o.dump_dir, fixed_point=o.passes is None)

    def run_passes(self, graph, pipeline, **switches):
        from sbc.passes import PassManager
        manager = PassManager(pipeline, **switches)
        graph = manager.run(graph)
        for name, facts in manager.facts.items():
            self.facts.setdefault(name, {}).update(facts)
        return graph

    def analyse(self, graph) -> dict:
        """Spike statistics on the calibration inputs; where the target can time its spike
        kernels (this machine's CPU), spike-sparsity then picks each SpikeMatMul's kernel from
        them and the break-even it measures (added to the stats)."""
        from sbc.passes.calibration import calibrate
        from sbc.report import read_npz
        data = self.options.calibrate
        stats = calibrate(graph, read_npz(os.fspath(data))
                          if isinstance(data, (str, os.PathLike)) else data)
        if self.target.times_spike_kernels:
            from sbc.codegen.spike_breakeven import break_even
            from sbc.passes.spike_sparsity import SpikeSparsity
            self.run_passes(graph, [SpikeSparsity(stats=stats, measure=break_even)])
            chosen = self.facts["spike-sparsity"]
            stats["kernels"], stats["break_even"] = chosen["kernels"], chosen["break_even"]
        return stats

    def programs(self, graph) -> dict:
        from sbc.passes.to_recurrent import state_names
        prefill = prefill_program(graph) if state_names(graph) else None
        return {"prefill": prefill} if prefill is not None else {}

    def build(self, graph, programs):
        from sbc.codegen.build import build
        return build(graph, self.target, programs)

    def package(self, source, graph, programs, built, stats, relied_on) -> Module:
        from sbc.ir.assumptions import unique
        from sbc.ir.registry import collect_assumptions
        from sbc.passes.to_recurrent import POSITION, memory_certificate, sequence_symbol, \
            state_names
        from sbc.version import __version__
        relied_on = relied_on + [a for g in (graph, *programs.values())
                                 for a in collect_assumptions(g)]
        manifest = {
            "sbc_version": __version__,
            "target": built.target,
            "inputs": signature_to_json(built.inputs),
            "outputs": signature_to_json(built.outputs),
            "param_names": list(built.param_names),
            "source": source,
            "ops": graph.op_counts(),
            "assumptions": [a.to_json() for a in unique(relied_on)],
        }
        if state_names(graph):
            seq = sequence_symbol(graph)  # whatever the exporter named it: runtimes read it here
            manifest["recurrent"] = {"position": POSITION, "state": state_names(graph),
                                     "sequence_symbol": seq,
                                     "memory_certificate": memory_certificate(graph, seq),
                                     "prefill_program": "prefill" in programs}
        if stats is not None:
            manifest["spike_stats"] = stats
        if self.options.tune is not None:  # per kernel: both times and the one kept, or why not
            manifest["tuning"] = {"trials": self.options.tune,
                                  "kernels": self.target.tuning.report}
        manifest["notes"] = fusion_notes(graph)
        return Module(built.library, built.params, manifest, built.files)


def _checkpoint_tokenizer(model):
    """The checkpoint folder being compiled, when it holds tokenizer files (else None)."""
    from sbc.frontend import is_checkpoint
    from sbc.runtimes.tokenizer import has_tokenizer
    return model if is_checkpoint(model) and has_tokenizer(model) else None


def read_tokenizer(folder):
    """The tokenizer to store in the artifact, loaded and checked (InputError, one line, if
    it does not load), or None."""
    if folder is None:
        return None
    from sbc.runtimes.tokenizer import load_tokenizer_folder
    return load_tokenizer_folder(folder)


def check_tokenizer_vocab(tokenizer, graph) -> None:
    """Every id the tokenizer produces must be a row of the model's embedding: its vocabulary
    may not exceed the logits' last dim (smaller is common: padded embedding tables)."""
    if tokenizer is None or not graph.outputs:
        return
    vocab = graph.outputs[0].type.shape[-1] if graph.outputs[0].type.rank else None
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise CompileError(f"{tokenizer.where}: the tokenizer has {tokenizer.vocab_size} tokens, "
                           f"more than the model's vocabulary of {vocab} (the logits' last dim): "
                           f"is it the tokenizer of another model?")


def attach_tokenizer(module: Module, tokenizer) -> None:
    """Store the tokenizer's files as artifact members (checksummed like every member)."""
    if tokenizer is None:
        return
    module.files.update(tokenizer.members())
    module.manifest["tokenizer"] = tokenizer.summary()


def check_target(target: str, arch: str | None = None, **options) -> str | None:
    """A known target (and arch, CPU); the error names what is supported. Needs no TVM
    unless a CPU is named. Returns the GPU arch the build is for (None for cpu)."""
    from sbc.codegen.targets import check_target as check
    return check(target, arch, **options)


def pipeline_for(passes, quantize, max_context):
    """The pipeline to run: `passes` as given, or the default one with the weight
    quantization pass where its order constraints put it and recognise-mixers' KV cache
    capacity."""
    if passes is not None:
        for name, value, spelled in (("quantize", quantize, "quantize-weights-int8"),
                                     ("max_context", max_context, "recognise-mixers{max-context=N}")):
            if value is not None:
                raise UnsupportedError(f"{name}= goes with the default pipeline; with passes=, "
                                       f"name '{spelled}' in the pipeline instead")
        return passes
    from sbc.passes.manager import DEFAULT_PIPELINE, insert_in_order
    pipeline = list(DEFAULT_PIPELINE)
    if quantize is not None:
        if quantize not in QUANTIZE:
            raise UnsupportedError(f"unknown quantization '{quantize}'; supported: {', '.join(QUANTIZE)}")
        pipeline = insert_in_order(pipeline, QUANTIZE[quantize])
    if max_context is not None:
        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1:
            raise UnsupportedError(f"max_context must be a positive number of tokens, got {max_context!r}")
        pipeline = [f"{p}{{max-context={max_context}}}" if p == "recognise-mixers" else p
                    for p in pipeline]
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


# -- the compile cache -------------------------------------------------------------------------

def _model_digest(model) -> str | None:
    """sha256 of the model's bytes (of a checkpoint folder's files); None for a Graph, or a
    path that is neither (the importer says what is wrong with it)."""
    from sbc.cache import model_digest
    if isinstance(model, (str, os.PathLike)) and not (os.path.isfile(model) or os.path.isdir(model)):
        return None
    return model_digest(model)


def _cache_entry(digest: str | None, target: str, requested: bool, **options) -> str | None:
    """The compile cache's key for this compile, or None when it is not cached."""
    from sbc import cache as compile_cache
    if digest is None or not compile_cache.enabled(requested):
        return None
    return compile_cache.key(digest, target, options)


def _from_cache(entry: str, model) -> Module | None:
    """The cached module, named after this model; None on a miss or an unreadable entry."""
    from sbc import cache as compile_cache
    path = compile_cache.lookup(entry)
    if path is None:
        return None
    try:
        artifact = read_artifact(path)
    except SbcError:
        compile_cache.discard(path)  # corrupt or from another version: compiled again
        return None
    # the same bytes (the key says so) under this compile's name
    manifest = dict(artifact.manifest, source=dict(artifact.manifest["source"],
                                                   name=_source_name(model)))
    module = Module(artifact.library, artifact.params, manifest, artifact.files, lazy=True)
    module.from_cache = True
    return module


def _source_name(model) -> str:
    """What the manifest calls the model (beside its sha256, so an artifact can be traced)."""
    if isinstance(model, (str, os.PathLike)):  # a checkpoint folder may end in a separator
        return os.path.basename(os.fspath(model).rstrip(os.sep))
    if hasattr(model, "SerializeToString"):  # onnx.ModelProto
        return model.graph.name or "onnx.ModelProto"
    return getattr(model, "name", None) or type(model).__name__
