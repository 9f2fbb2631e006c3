"""The public Python API: compile, load, and the compiled Module (sbc.module).

Compiling is sbc.driver's job, stage by stage; this module is the door. TVM (5 s to import) is
imported only when something is compiled or loaded, so that reading an ONNX file, checking an
artifact and reporting errors stay fast (the CLI relies on this).
"""

from __future__ import annotations

import os

from sbc.driver import Driver, Options
from sbc.module import Module, module_from_artifact
from sbc.runtimes.artifact import read_artifact
from sbc.runtimes.threads import check_num_threads


def compile(model, target: str = "cpu", *, arch=None, cpu=None, cores=None, passes=None, quantize=None, calibrate=None,
            max_context=None, print_after=(), time_passes=False, verify_each=False,
            dump_dir=None, cache=True, progress=None, tokenizer=None, window=None,
            num_threads=None, tune=None) -> Module:
    """Compile an ONNX file path, onnx.ModelProto or sbc.ir.Graph for `target` (cpu, cuda,
    maca; `arch`: the GPU arch, e.g. sm_90 or xcore1000, default sm_80 / $MACA_ARCH; `cpu`,
    `cores`: the CPU a cpu build is for, by LLVM's name, e.g. "skylake-avx512", and its core
    count, default this machine's: an artifact for another machine of the same ISA).
    `model` may also be a SpikingBrain release checkpoint folder (config.json + safetensors,
    sbc.frontend.checkpoint); window: its sliding-window convention, "flash" (default: a query
    sees itself and the previous sliding_window keys) or "cache" (sliding_window keys in all);
    its tokenizer files, if any, are stored in the artifact unless `tokenizer` names others.

    passes: None for the default pipeline, else a pipeline string ("dce,cse") or list;
    quantize: None, or "w8" (int8 weights, one scale per 128 input channels, where spikes feed
    a matmul: W8ASpike's integer matmuls) added to the default pipeline;
    max_context: tokens the KV cache of each full causal attention holds (default 4096);
    calibrate: inputs ({name: array} or an .npz path) to measure the spiking sites' firing rates
    on; the figures go to manifest["spike_stats"] (what `sbc report` reads); on cpu the
    spike-sparsity pass then picks per SpikeMatMul the dense or zero-tile-skipping kernel
    (spike_stats["kernels"], with the break-even timings in spike_stats["break_even"]);
    print_after / time_passes / verify_each / dump_dir: the pass manager's debugging aids;
    cache: look the result up in (and add it to) the compile cache (sbc.cache); compiles
    that calibrate or use the debugging aids always run;
    progress: fn(stage, seconds), called as each stage of sbc.driver ends;
    tokenizer: a Hugging Face model or checkpoint folder whose tokenizer files (tokenizer.json,
    or vocab.json + merges.txt; tokenizer_config.json with the chat template,
    generation_config.json) are stored in the artifact: module.tokenizer,
    session.generate_text / chat and `sbc serve` use them.
    num_threads: threads the module's CPU kernels use (None: one per core; see load).
    tune: cpu target on this machine's CPU only: MetaSchedule trials per kernel (codegen.tune).
    Each kernel with static shapes that sbc did not write by hand is searched `tune` times and
    the faster of sbc's schedule and MetaSchedule's best is kept; the choice per kernel is in
    manifest["tuning"], the log that a later compile reuses in the compile cache's folder
    (sbc.cache.tune_dir()).
    """
    num_threads = check_num_threads(num_threads)  # before a compile of minutes
    options = Options(target=target, arch=arch, cpu=cpu, cores=cores, passes=passes, quantize=quantize,
                      calibrate=calibrate, max_context=max_context, print_after=print_after,
                      time_passes=time_passes, verify_each=verify_each, dump_dir=dump_dir,
                      cache=cache, tokenizer=tokenizer, window=window, tune=tune)
    module = Driver(options, progress).compile(model)
    module.num_threads = num_threads
    return module


def load(path: str | os.PathLike, sha256: str | None = None, num_threads: int | None = None,
         device=None) -> Module:
    """Load a `.sbc` artifact written by `Module.save` / `sbc compile`.

    An artifact is code: loading it runs its compiled library, so load only artifacts you
    trust. sha256: the file's expected digest (as `sbc inspect` prints it, obtained from a
    source you trust); a file that differs is refused before anything of it is read.
    num_threads: threads its CPU kernels use, from 1 to the cores this process may run on;
    None: one per core (or TVM_NUM_THREADS if set). TVM's thread pool belongs to the calling
    thread and is shared by all modules run from it: each run sets it to its module's count
    (module.num_threads, which may be changed later), so the one that runs is the one that
    applies. Nothing is written to the process environment.
    device: where it runs, of the artifact's own kind: "cpu", "cuda:N", "maca:N" (or a
    torch.device); None: the first. On a GPU a session's state stays in device memory
    between steps; only logits come back to the host.

    Raises ArtifactError (corrupt, truncated, foreign, other version, other sha256),
    InputError (sha256 not 64 hex digits, num_threads out of range, a device of another
    kind) or TargetUnavailableError (built for a device or CPU this machine does not have).
    """
    path = os.fspath(path)
    num_threads = check_num_threads(num_threads)
    return module_from_artifact(read_artifact(path, sha256=sha256), path, num_threads, device)
