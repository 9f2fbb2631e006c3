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


def compile(model, target: str = "cpu", *, arch=None, passes=None, quantize=None, calibrate=None,
            max_context=None, print_after=(), time_passes=False, verify_each=False,
            dump_dir=None, cache=True, progress=None, tokenizer=None, window=None) -> Module:
    """Compile an ONNX file path, onnx.ModelProto or sbc.ir.Graph for `target` (cpu, cuda,
    maca; `arch`: the GPU arch, e.g. sm_90 or xcore1000, default sm_80 / $MACA_ARCH).
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
    """
    options = Options(target=target, arch=arch, passes=passes, quantize=quantize,
                      calibrate=calibrate, max_context=max_context, print_after=print_after,
                      time_passes=time_passes, verify_each=verify_each, dump_dir=dump_dir,
                      cache=cache, tokenizer=tokenizer, window=window)
    return Driver(options, progress).compile(model)


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
