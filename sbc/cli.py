"""The `sbc` command line: compile, run, generate, serve, inspect, export, debug, demo, opt.

Any sbc error prints one line `sbc: error: ...` on stderr and exits 2 (a failed comparison in
`demo` exits 1). Output files are written atomically, so an interrupted command leaves nothing:
Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, each after removing its partial file (kill -9
cannot be caught: it may leave a `.sbc-partial-*` file beside the output). An output path that
exists but is not a regular file (a FIFO, /dev/null) is refused, never replaced. A reader of
stdout that goes away early (`sbc inspect m.sbc | head -1`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
import time
import zipfile
from contextlib import contextmanager

import numpy as np

from sbc.errors import InputError, SbcError


class Terminated(BaseException):
    """SIGTERM or SIGHUP as an exception, so that `finally` blocks run (atomic_path removes
    its partial file). A BaseException, like KeyboardInterrupt: `except Exception` in library
    code must not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def main(argv=None) -> int:
    with _signals_as_exceptions():
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help, --version and usage errors print too
            if _flush_stdout(0):  # ... and what they printed could not be written
                return 2
            raise
        except OSError as e:  # argparse writing --help or --version to stdout (see _Parser)
            failed = _stdout_failed(e)
            return 0 if failed is None else failed
        return _flush_stdout(code)  # here, not in Python's flush at exit (a traceback there)


def _main(argv) -> int:
    parser = _parser()
    args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.command(args) or 0
    except SbcError as e:
        return _fail(str(e))
    except OSError as e:  # the user's paths (unwritable output dir, ...), not a bug in sbc
        if e.errno == errno.EPIPE:  # e.g. `sbc inspect ... | head`: BrokenPipeError
            _discard_stdout()
            return 0  # the reader has what it wanted
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except KeyboardInterrupt:  # every output is written atomically: nothing is half-written
        print("sbc: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"sbc: terminated by {signal.Signals(e.signum).name}; no partial output was left",
              file=sys.stderr)
        return 128 + e.signum


@contextmanager
def _signals_as_exceptions():
    """SIGTERM and SIGHUP raise Terminated while the command runs (once: a second signal must
    not cut short the cleanup the first one started). Restored afterwards, since main() also
    runs in-process (tests, scripts); only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Terminated(signum)

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {getattr(signal, n): signal.signal(getattr(signal, n), handler) for n in names}
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None:  # None: set outside Python, cannot be restored
                signal.signal(signum, old)


def _flush_stdout(code: int) -> int:
    """Flush what the command printed. A reader that went away (`| head -1`) is no error; a
    stdout that cannot be written (a full disk) is one line."""
    try:
        sys.stdout.flush()
    except OSError as e:
        failed = _stdout_failed(e)
        return code if failed is None else failed
    return code


def _stdout_failed(e: OSError) -> int | None:
    """stdout could not be written: None if its reader went away (`| head -1`, no error),
    else the exit code after one line."""
    _discard_stdout()
    return None if e.errno == errno.EPIPE else _fail(f"cannot write the output: {e.strerror or e}")


def _discard_stdout() -> None:
    """Point stdout at /dev/null, as the Python docs advise for EPIPE, so that flushing what
    is still buffered (at exit) does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _fail(message: str) -> int:
    """One line on stderr: the first line of the message (details stay in the API's error)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["unknown error"]
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:  # "... failed (2 problems):" alone says nothing
        first += " " + lines[1]
    print(f"sbc: error: {first}", file=sys.stderr)
    return 2


EXPECT_SHA256_HELP = ("refuse the artifact unless the file's sha256 (see `sbc inspect`) is this: "
                      "an artifact is code, loading it runs its compiled library")


class _Parser(argparse.ArgumentParser):
    """argparse ignores errors writing its messages. Those on stdout (--help, --version) are
    let through for main to report: `sbc --help > /dev/full` must fail as any output would.
    (Subcommand parsers are of this class too: add_subparsers uses the parent's class.)"""

    def _print_message(self, message, file=None):
        if message and file is sys.stdout:
            file.write(message)
        else:
            super()._print_message(message, file)


def _parser() -> argparse.ArgumentParser:
    from sbc import __version__
    ap = _Parser(prog="sbc", description="SpikingBrain Compiler: ONNX -> TVM")
    ap.add_argument("--version", action="version", version=f"sbc {__version__}")
    sub = ap.add_subparsers(metavar="command")

    c = sub.add_parser("compile", help="compile an ONNX model or a SpikingBrain checkpoint "
                                       "folder to a .sbc artifact")
    c.add_argument("model", help="an ONNX file, or a checkpoint folder (config.json + safetensors)")
    c.add_argument("--window", choices=["flash", "cache"],
                   help="checkpoint folders: flash (default; a query sees itself and the previous "
                        "sliding_window keys, as the release's prefill) or cache (sliding_window "
                        "keys in all, as its decode cache)")
    c.add_argument("--target", default="cpu",
                   help="cpu (this machine), cuda (NVIDIA GPUs) or maca (MetaX GPUs)")
    c.add_argument("--arch", help="GPU arch: sm_80 (cuda default), sm_90, ...; "
                                  "xcore1000 (maca default, or $MACA_ARCH / macainfo)")
    c.add_argument("--cpu", "--mcpu", dest="cpu", metavar="NAME",
                   help="cpu target: the CPU to compile for, by LLVM's name (e.g. skylake-avx512, "
                        "znver4; default native, this machine's)")
    c.add_argument("--cores", type=int, metavar="N",
                   help="cpu target: the cores of that CPU (default: this machine's)")
    c.add_argument("-o", "--output", help="artifact path (default: <model>.sbc)")
    c.add_argument("--passes", help="comma-separated pass pipeline (default: the standard one)")
    c.add_argument("--calibrate", metavar="DATA.npz",
                   help="measure firing rates on these inputs and store them (see `sbc report`)")
    c.add_argument("--quantize", choices=["w8"],
                   help="w8: int8 weights (per 128 input channels) for the spiking matmuls")
    c.add_argument("--tokenizer", metavar="DIR",
                   help="store this Hugging Face folder's tokenizer (tokenizer.json, or vocab.json "
                        "+ merges.txt; chat template, EOS) in the artifact: text in `sbc generate "
                        "--prompt` and `sbc serve`")
    c.add_argument("--max-context", type=int, metavar="N",
                   help="tokens the KV cache of a full causal attention holds (default 4096)")
    c.add_argument("--print-after", action="append", default=[], metavar="PASS|all",
                   help="print the IR after these passes (repeatable, or comma-separated)")
    c.add_argument("--time-passes", action="store_true", help="print per-pass wall times")
    c.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    c.add_argument("--dump-dir", help="write the IR after each pass to DIR/NN-<pass>.sbcir")
    c.add_argument("--tvm-log", metavar="FILE",
                   help="if the build fails, write TVM's full error (its trace and IR) here")
    c.add_argument("--explain", action="store_true",
                   help="list attention-like subgraphs that were not fused, and why")
    c.add_argument("--tune", type=int, metavar="N",
                   help="cpu target: search N MetaSchedule schedules per static-shape kernel and "
                        "keep the faster of sbc's and the best found (a log in the compile cache "
                        "folder lets later compiles reuse it)")
    c.add_argument("--no-cache", action="store_true",
                   help="compile even if the compile cache ($SBC_CACHE_DIR, ~/.cache/sbc) has it")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    c.add_argument("--json", action="store_true",
                   help="print the summary (and each stage's time) as one JSON object")
    c.set_defaults(command=cmd_compile)

    r = sub.add_parser("run", help="run a .sbc artifact and summarise its outputs")
    r.add_argument("artifact")
    _input_arguments(r)
    r.add_argument("--outputs", help="write the outputs to this .npz (.npy: a single output)")
    r.add_argument("--expect-sha256", metavar="HEX", help=EXPECT_SHA256_HELP)
    _threads_argument(r)
    r.set_defaults(command=cmd_run)

    b = sub.add_parser("bench", help="time a .sbc artifact on given inputs (latency, tokens/s)")
    b.add_argument("artifact")
    _input_arguments(b)
    b.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    b.add_argument("--repeats", type=int, default=10, help="timed calls (default 10)")
    b.add_argument("--onnx", metavar="MODEL.onnx",
                   help="also time onnxruntime on this file with the same inputs: a ratio")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object")
    _threads_argument(b)
    b.set_defaults(command=cmd_bench)

    gen = sub.add_parser("generate", help="generate text (or tokens) with a recurrent .sbc artifact")
    gen.add_argument("artifact")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text (the artifact's tokenizer encodes it); the output "
                                         "is streamed to stdout as it is generated")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    gen.add_argument("--chat", action="store_true",
                     help="the prompt is a user message: apply the tokenizer's chat template")
    gen.add_argument("--system", help="with --chat: a system message before the prompt")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="stop before this text (repeatable; not printed)")
    gen.add_argument("-n", "--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    gen.add_argument("--repetition-penalty", type=float, default=None,
                     help="> 1 makes tokens of the prompt and output less likely (as in HF)")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--chunk", type=int, default=512, help="prefill chunk length")
    gen.add_argument("--expect-sha256", metavar="HEX", help=EXPECT_SHA256_HELP)
    _threads_argument(gen)
    gen.set_defaults(command=cmd_generate)

    srv = sub.add_parser("serve", help="serve a .sbc artifact with a tokenizer over an "
                                       "OpenAI-compatible HTTP API")
    srv.add_argument("artifact")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-tokens", type=int, default=512, metavar="N",
                     help="most tokens one request may generate (its max_tokens)")
    srv.add_argument("--max-prompt-tokens", type=int, default=4096, metavar="N",
                     help="longest prompt (in tokens, chat template included)")
    srv.add_argument("--max-concurrency", type=int, default=16, metavar="N",
                     help="requests generating at once; later ones wait their turn")
    srv.add_argument("--model-name", help="the model's id in the API (default: the file's name)")
    srv.add_argument("--expect-sha256", metavar="HEX", help=EXPECT_SHA256_HELP)
    _threads_argument(srv)
    srv.set_defaults(command=cmd_serve)

    i = sub.add_parser("inspect", help="describe an ONNX model, a .sbc artifact or a checkpoint "
                                       "folder")
    i.add_argument("path")
    i.add_argument("--ir", action="store_true", help="print the sbc IR after import")
    i.add_argument("--json", action="store_true")
    i.set_defaults(command=cmd_inspect)

    o = sub.add_parser("opt", help="run passes on IR text (.sbcir) and print the IR after them")
    o.add_argument("file", help="IR text, e.g. a .sbcir test file (- reads stdin); params carry "
                                "their data: `= random(SEED)` or `= tensor<TYPE>[...]`")
    o.add_argument("--passes", help="pass pipeline, run once in the order given "
                                    "(default: none; the IR is only verified and printed)")
    o.add_argument("-o", "--output", help="write the IR here (default: stdout)")
    o.add_argument("--print-after", action="append", default=[], metavar="PASS|all",
                   help="print the IR after these passes on stderr (repeatable or comma-separated)")
    o.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    o.add_argument("--print-params", action="store_true",
                   help="print each param's data as a literal, so the output reads back in")
    o.set_defaults(command=cmd_opt)

    e = sub.add_parser("export", help="export the built-in reference model, or a checkpoint "
                                      "folder, to ONNX")
    e.add_argument("--config", default="tiny")
    e.add_argument("--from", dest="source", metavar="DIR",
                   help="a SpikingBrain checkpoint folder (config.json + safetensors) to export "
                        "instead of --config (opset 21, IR version 10: onnxruntime runs it)")
    e.add_argument("--window", choices=["flash", "cache"],
                   help="with --from: the sliding-window convention (see `sbc compile --help`)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--form", default="parallel", choices=["parallel", "chunked", "scan", "la27"],
                   help="GLA form: parallel (T x T), chunked (long T), scan (ONNX Scan), la27 "
                        "(ONNX-27 LinearAttention; onnxruntime cannot run it)")
    e.add_argument("--swa", default="masked", choices=["masked", "attention"],
                   help="SWA form: masked softmax, or ONNX Attention (opset 23)")
    e.set_defaults(command=cmd_export)

    g = sub.add_parser("debug", help="find the first node where the compiled model diverges")
    g.add_argument("model")
    g.add_argument("--inputs", required=True,
                   help=".npz whose keys are the input names (.npy for a single-input model)")
    g.add_argument("--rtol", type=float, default=1e-4)
    g.add_argument("--atol", type=float, default=1e-4)
    g.set_defaults(command=cmd_debug)

    d = sub.add_parser("demo", help="export, compile for cpu, run and compare with onnxruntime")
    d.add_argument("--config", default="tiny")
    d.add_argument("--batch", type=int, default=2)
    d.add_argument("--seq", type=int, default=64)
    d.add_argument("--workdir", default=None, help="keep the ONNX file and artifact here")
    d.add_argument("--onnx", help="use this ONNX file (input ids -> logits) instead of exporting")
    d.set_defaults(command=cmd_demo)

    cal = sub.add_parser("calibrate", help="measure spike sparsity on calibration inputs")
    cal.add_argument("model", help="ONNX model")
    cal.add_argument("--data", required=True, help=".npz whose keys are the input names "
                                                   "(a leading sample axis is iterated over)")
    cal.add_argument("-o", "--output", help="stats JSON (default: <model>.spike_stats.json)")
    cal.set_defaults(command=cmd_calibrate)

    rep = sub.add_parser("report", help="sparsity, MACs vs accumulates and energy estimate")
    rep.add_argument("stats", help="a .sbc artifact with spike stats, or `sbc calibrate` JSON")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--plots", metavar="DIR", help="write PNG histogram and per-layer chart")
    rep.set_defaults(command=cmd_report)
    return ap


def _write_error_log(path: str | None, error: SbcError) -> None:
    """The error's one line, then the errors chained under it (TVM's traces) in full, to
    `path` (--tvm-log): the CLI prints only the line."""
    if not path:
        return
    import traceback
    text = "".join(traceback.format_exception(error))
    with open(path, "w") as f:
        f.write(f"sbc: error: {error}\n\n{text}")


def cmd_compile(args) -> None:
    import sbc
    # a checkpoint folder "dir/" compiles to "dir.sbc", not "dir/.sbc"
    output = args.output or os.path.splitext(args.model.rstrip(os.sep) or args.model)[0] + ".sbc"
    _check_output_dir(output)  # before the compile, not after it
    start = time.perf_counter()
    stages = {}

    def progress(stage: str, seconds: float) -> None:
        stages[stage] = round(seconds, 3)
        if sys.stderr.isatty() and not (args.quiet or args.json):
            print(f"  {stage:<9} {seconds:7.2f} s", file=sys.stderr)

    # the pipeline string goes as is: pass options may hold commas ("a{x=1,y=2},b")
    try:
        module = sbc.compile(args.model, target=args.target, arch=args.arch, cpu=args.cpu,
                             cores=args.cores, passes=args.passes,
                             quantize=args.quantize, calibrate=args.calibrate,
                             max_context=args.max_context, tokenizer=args.tokenizer,
                             window=args.window,
                             print_after=[p for a in args.print_after for p in a.split(",") if p],
                             time_passes=args.time_passes,
                             verify_each=args.verify_each, dump_dir=args.dump_dir,
                             cache=not args.no_cache, progress=progress, tune=args.tune)
    except SbcError as e:
        _write_error_log(args.tvm_log, e)
        raise
    module.save(output)
    summary = {"model": args.model, "output": output, "target": args.target,
               "ops": sum(module.manifest["ops"].values()),
               "parameters": int(sum(p.size for p in module.params.values())),
               "bytes": os.path.getsize(output), "seconds": round(time.perf_counter() - start, 3),
               "stages": stages, "from_cache": module.from_cache, "notes": module.manifest["notes"]}
    if "tuning" in module.manifest:
        summary["tuning"] = module.manifest["tuning"]
    if args.json:
        print(json.dumps(summary))
        return
    if args.quiet:
        return
    if args.explain:
        for note in module.manifest["notes"] or ["every attention-like subgraph was fused"]:
            print(f"explain: {note}")
    for line in tuning_lines(module.manifest.get("tuning")):
        print(f"tune: {line}")
    print(f"compiled {args.model} -> {output}: {summary['ops']} ops, "
          f"{summary['parameters']:,} parameters, {summary['bytes'] / 1e6:.2f} MB, "
          f"{summary['seconds']:.1f} s{' (from the compile cache)' if module.from_cache else ''}")


def tuning_lines(tuning: dict | None) -> list[str]:
    """--tune's report: per kernel both times and the schedule kept, or why it was skipped."""
    lines = []
    for k in (tuning or {}).get("kernels", []):
        if "skipped" in k:
            lines.append(f"{k['kernel']}: skipped ({k['skipped']})")
            continue
        source = "from the tuning log" if k["from_log"] else "tuned now"
        lines.append(f"{k['kernel']}: sbc {k['sbc_ms']:.4f} ms, MetaSchedule "
                     f"{k['metaschedule_ms']:.4f} ms ({k['trials']} trials, {source}): "
                     f"kept {k['kept']}")
    return lines


def _check_output_dir(path: str) -> None:
    """Before the work, not after it: the directory exists and the path is not a FIFO or
    device that the final rename would replace."""
    from sbc.runtimes.artifact import check_output_path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SbcError(f"{path}: directory {directory} does not exist")
    check_output_path(path)


def _threads_argument(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads the CPU kernels use (default: one per core)")


def _threads(args) -> int | None:
    """--threads, checked before the slow load: a count that means nothing fails at once."""
    from sbc.runtimes.threads import check_num_threads
    return check_num_threads(args.threads, "--threads")


def _input_arguments(p) -> None:
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="NAME=@x.npy, NAME=1,2,3 (or a JSON list), NAME=int64[1,128] (random, "
                        "seeded by --seed); repeatable")
    p.add_argument("--inputs", metavar="FILE",
                   help=".npz whose keys are the input names, .npy (a single-input model), .json")
    p.add_argument("--seed", type=int, default=0, help="seed of random --input values")


def _runnable(args):
    """(module, feeds): the artifact and the inputs checked before the (slow) runtime loads,
    so that errors come fast."""
    from sbc.inputs import input_arrays
    from sbc.ir.types import bind_symbols
    from sbc.module import module_from_artifact
    from sbc.codegen.targets import check_runnable
    from sbc.runtimes.artifact import read_artifact
    threads = _threads(args)
    artifact = read_artifact(args.artifact, sha256=getattr(args, "expect_sha256", None))
    check_runnable(artifact.manifest, args.artifact, host_cpu=False)
    recurrent = artifact.manifest.get("recurrent") or {}
    hidden = set(recurrent.get("state", [])) | {recurrent.get("position")}
    inputs = [(n, t) for n, t in artifact.inputs if n not in hidden]
    if inputs and not args.input and not args.inputs:
        raise InputError(f"give the inputs ({', '.join(n for n, _ in inputs)}) with --input "
                         f"NAME=... or --inputs FILE")
    feeds = input_arrays(args.input, args.inputs, inputs, args.seed)
    bind_symbols(inputs, feeds)
    return module_from_artifact(artifact, args.artifact, threads), feeds


def cmd_run(args) -> None:
    from sbc.inputs import summary, write_outputs
    if args.outputs:
        _check_output_dir(args.outputs)
    module, feeds = _runnable(args)
    outputs = module.run(feeds)
    for name, value in outputs.items():
        print(summary(name, value))
    if args.outputs:
        from sbc.runtimes.artifact import atomic_path

        def write_npz(path, arrays):
            with atomic_path(path) as tmp:
                _write_npz(tmp, arrays)
        write_outputs(args.outputs, outputs, write_npz)


def cmd_bench(args) -> None:
    from sbc.bench import bench
    if args.warmup < 0 or args.repeats < 1:
        raise InputError("--warmup must be >= 0 and --repeats >= 1")
    module, feeds = _runnable(args)
    result = bench(module, feeds, args.warmup, args.repeats, onnx=args.onnx)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


def cmd_generate(args) -> None:
    from sbc.runtimes.session import check_sampling
    from sbc.runtimes.tokenizer import check_stop
    ids = _prompt_ids(args) if args.prompt_ids is not None else None
    if args.system is not None and not args.chat:
        raise InputError("--system goes with --chat")
    # before the slow load: settings that mean nothing fail at once
    check_sampling(args.temperature, args.top_k, args.max_new_tokens, top_p=args.top_p,
                   repetition_penalty=args.repetition_penalty, seed=args.seed)
    check_stop(args.stop)
    threads = _threads(args)
    module = _load_generator(args.artifact, args.expect_sha256, text=ids is None)
    module.num_threads = threads
    session = module.session(batch=1, chunk=args.chunk)
    start = time.perf_counter()
    if ids is not None:
        tokens = session.generate(np.array([ids]), args.max_new_tokens,
                                  temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                                  top_p=args.top_p, repetition_penalty=args.repetition_penalty)[0]
        print(",".join(str(int(t)) for t in tokens), flush=True)
        counts, ended = f"{len(ids)} prompt + {len(tokens)} new tokens", ""
    else:
        generation = _text_generation(session, args)
        for piece in generation.pieces():  # as they come: a reader sees the text grow
            sys.stdout.write(piece)
            sys.stdout.flush()
        print(flush=True)
        counts = f"{generation.prompt_tokens} prompt + {generation.completion_tokens} new tokens"
        ended = f", {generation.finish_reason}"
    elapsed = time.perf_counter() - start
    print(f"{counts} in {elapsed:.2f} s (position {session.position}{ended})", file=sys.stderr)


def _prompt_ids(args) -> list[int]:
    try:
        prompt = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
    if not prompt:
        raise InputError("give at least one prompt id")
    if args.chat or args.stop:
        raise InputError("--chat and --stop take a text --prompt, not --prompt-ids")
    return prompt


def _load_generator(path: str, sha256: str | None, text: bool):
    """The module; for text, one that has a tokenizer (said before the slow runtime load)."""
    from sbc.module import module_from_artifact
    from sbc.runtimes.artifact import read_artifact
    from sbc.runtimes.tokenizer import HOW_TO_ATTACH, MEMBER_PREFIX
    artifact = read_artifact(path, sha256=sha256)
    if text and not any(n.startswith(MEMBER_PREFIX) for n in artifact.files):
        raise InputError(f"{path} has no tokenizer, so it takes no text (--prompt-ids gives "
                         f"token ids): {HOW_TO_ATTACH}")
    return module_from_artifact(artifact, path)


def _text_generation(session, args):
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop)
    if not args.chat:
        return session.text_generation(args.prompt, args.max_new_tokens, **sampling)
    messages = ([{"role": "system", "content": args.system}] if args.system is not None else [])
    messages.append({"role": "user", "content": args.prompt})
    return session.text_generation(None, args.max_new_tokens, messages=messages, **sampling)


def cmd_serve(args) -> None:
    from sbc.serve import Limits, serve
    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    max_concurrency=args.max_concurrency)  # checked before the slow load
    threads = _threads(args)
    try:
        serve(args.artifact, host=args.host, port=args.port, limits=limits,
              model_name=args.model_name, sha256=args.expect_sha256, num_threads=threads)
    except (KeyboardInterrupt, Terminated):  # uvicorn passes on the signal it stopped for
        print("sbc: server stopped", file=sys.stderr)


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez(path, **arrays) would clash with outputs named 'file' or 'allow_pickle'."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            with z.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def cmd_inspect(args) -> None:
    if os.path.isdir(args.path):
        info = _inspect_checkpoint(args.path, args.ir)
    elif _is_zip(args.path):
        info = _inspect_artifact(args.path)
    else:
        info = _inspect_onnx(args.path, args.ir)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if key == "ir":
            print(value, end="")
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif isinstance(value, list):
            print(f"{key}:")
            for v in value:
                print(f"  {v}")
        else:
            print(f"{key}: {value}")


def cmd_opt(args) -> None:
    text = sys.stdin.read() if args.file == "-" else _read_text(args.file)
    if args.output:
        _check_output_dir(args.output)
    result = opt_text(text, args.passes, verify_each=args.verify_each,
                      print_after=[p for a in args.print_after for p in a.split(",") if p],
                      with_data=args.print_params)
    if not args.output:
        sys.stdout.write(result)
        return
    from sbc.runtimes.artifact import atomic_path
    with atomic_path(args.output) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(result)


def opt_text(text: str, pipeline: str | None = None, *, print_after=(),
             verify_each: bool = False, with_data: bool = False) -> str:
    """`sbc opt` without the command line: IR text -> the pipeline, run once in the order given
    -> IR text. The IR is verified before (a broken input is not blamed on the first pass) and
    after; without a pipeline it is only verified and printed back. --print-after goes to
    stderr, so stdout holds the final IR alone (what a FileCheck test reads)."""
    from sbc.ir.parser import parse_graph
    from sbc.ir.printer import print_graph
    from sbc.ir.verifier import VerificationError, verify
    from sbc.passes import run_passes
    graph = parse_graph(text)
    try:
        verify(graph)
    except VerificationError as e:
        raise VerificationError(f"the input IR is invalid: {e}") from e
    graph = run_passes(graph, pipeline or [], print_after=print_after, verify_each=verify_each,
                       fixed_point=False)
    verify(graph)
    return print_graph(graph, with_data=with_data)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not IR text (not UTF-8: {e.reason} at byte {e.start})") from e


def _is_zip(path: str) -> bool:
    """Artifacts are zips whatever their name; ONNX files are protobuf (never 'PK')."""
    if path.endswith(".sbc"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"PK"
    except OSError:
        return False  # the ONNX reader reports the missing file


def _signature(sig) -> list[str]:
    return [f"{n}: {t}" for n, t in sig]


def _inspect_onnx(path: str, with_ir: bool) -> dict:
    from sbc.frontend import import_onnx
    graph = import_onnx(path)
    ops = graph.op_counts()
    info = {
        "model": path,
        "inputs": _signature((v.name, v.type) for v in graph.inputs),
        "outputs": _signature((n, v.type) for n, v in zip(graph.output_names, graph.outputs)),
        "parameters": {"count": int(sum(p.data.size for p in graph.params)),
                       "tensors": len(graph.params),
                       "bytes": int(sum(p.data.nbytes for p in graph.params))},
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if with_ir:
        from sbc.ir.printer import print_graph
        info["ir"] = print_graph(graph)
    return info


def _inspect_checkpoint(path: str, with_ir: bool) -> dict:
    from sbc.frontend import import_checkpoint
    from sbc.frontend.checkpoint import describe_checkpoint
    info = describe_checkpoint(path)  # a folder without config.json: one line saying so
    if with_ir:  # reads every weight: the IR is built from them
        from sbc.ir.printer import print_graph
        info["ir"] = print_graph(import_checkpoint(path))
    return info


TRUST = ("an artifact is code: loading it runs its compiled library; load only artifacts you "
         "trust (sbc run/generate --expect-sha256, sbc.load(path, sha256=...))")


def _inspect_artifact(path: str) -> dict:
    from sbc.runtimes.artifact import file_sha256, read_artifact, signature_from_json
    artifact = read_artifact(path)  # verifies format, version and every checksum
    with open(path, "rb") as f:
        sha256 = file_sha256(f)
    m = artifact.manifest
    return {
        "artifact": path,
        "sha256": sha256,  # of the whole file: what --expect-sha256 takes
        "trust": TRUST,
        "format": f"{m['format']} v{m['format_version']}",
        "sbc_version": m["sbc_version"],
        "created": m.get("created"),
        "target": m["target"],
        "inputs": _signature(signature_from_json(m["inputs"])),
        "outputs": _signature(signature_from_json(m["outputs"])),
        "parameters": {"count": int(sum(p.size for p in artifact.params.values())),
                       "tensors": len(artifact.params),
                       "bytes": int(sum(p.nbytes for p in artifact.params.values()))},
        "ops": m.get("ops", {}),
        "files": {k: f"{v['size']:,} bytes, sha256 {v['sha256']} (verified)"
                  for k, v in m["files"].items()},
        "source": m.get("source"),
        **_certificate(m),
        **_spike_kernels(m),
    }


def _spike_kernels(manifest: dict) -> dict:
    """SpikeMatMul kernel per layer, as spike-sparsity chose it (compiled with --calibrate)."""
    kernels = (manifest.get("spike_stats") or {}).get("kernels")
    return {"spike_kernels": {k["layer"]: f"{k['kernel']} ({k['why']})" for k in kernels}} \
        if kernels else {}


def _certificate(manifest: dict) -> dict:
    """The memory certificate of a recurrent artifact, as inspect shows it."""
    recurrent = manifest.get("recurrent")
    if not recurrent:
        return {"recurrent": "no (whole sequences only)"}
    cert = recurrent["memory_certificate"]
    largest = max(cert["decode_buffers"], key=lambda b: b["bytes_at_batch_1"], default=None)
    return {
        "recurrent state": [f"{s['name']}: {s['type']} = {s['bytes']} bytes" for s in cert["state"]],
        "memory certificate": {
            "state bytes": cert["state_bytes"],
            "decode buffers": len(cert["decode_buffers"]),
            "largest decode buffer": largest and f"{largest['name']}: {largest['type']} at "
                                                 f"T = 1 = {largest['bytes']} bytes",
            "depends on sequence length": cert["depends_on_sequence_length"],
            "proof": cert["proof"],
            **({"max context": cert["max_context"], "kv caches": cert["kv_caches"]}
               if cert.get("max_context") else {})}}


def _read_npz(path: str, names: list[str]) -> dict[str, np.ndarray]:
    """Inputs by name: an .npz, or an .npy when `names` (the model's inputs) has one entry."""
    from sbc.runtimes.artifact import read_arrays
    return read_arrays(path, "inputs", names)


def cmd_debug(args) -> int:
    from sbc.debug import first_divergence
    from sbc.frontend import import_onnx
    graph = import_onnx(args.model)
    feeds = _read_npz(args.inputs, [v.name for v in graph.inputs])
    found = first_divergence(graph, feeds, rtol=args.rtol, atol=args.atol)
    if found is None:
        print("no divergence: every intermediate value matches the reference interpreter")
        return 0
    print(found)
    print(f"  compiled  {found.compiled.reshape(-1)[:6]}")
    print(f"  reference {found.reference.reshape(-1)[:6]}")
    return 1


def cmd_export(args) -> None:
    if args.source is not None:
        return _export_checkpoint(args)
    if args.window is not None:
        raise SbcError("--window goes with --from DIR (a checkpoint folder)")
    from sbc.models.export import export_onnx
    _check_config(args.config)
    _check_output_dir(args.output)  # export renames its file into place too
    path = export_onnx(args.config, args.output, form=args.form, swa=args.swa)
    default = (args.form, args.swa) == ("parallel", "masked")
    forms = "" if default else f" (GLA {args.form}, SWA {args.swa})"
    print(f"exported the '{args.config}' reference model{forms} to {path}")


def _export_checkpoint(args) -> None:
    """sbc export --from DIR: the checkpoint's graph (as sbc compiles it) written as ONNX."""
    from sbc.frontend import import_checkpoint
    from sbc.frontend.onnx_export import export_graph, save_model
    from sbc.runtimes.artifact import atomic_path
    if (args.config, args.form, args.swa) != ("tiny", "parallel", "masked"):
        raise SbcError("--config, --form and --swa choose the built-in reference model; "
                       "--from exports a checkpoint folder as it is")
    if not os.path.isdir(args.source):
        raise SbcError(f"{args.source}: not a folder (--from takes a checkpoint folder)")
    _check_output_dir(args.output)
    model = export_graph(import_checkpoint(args.source, window=args.window or "flash"),
                         consume=True)
    with atomic_path(args.output) as tmp:
        save_model(model, tmp, final=args.output)
    print(f"exported the checkpoint {args.source} to {args.output} (ONNX opset 21)")


def _check_config(name: str) -> None:
    from sbc.models.spikingbrain import get_config
    try:
        get_config(name)
    except ValueError as e:  # "unknown config 'x'; choose from small, tiny"
        raise SbcError(str(e)) from e


# -- demo ------------------------------------------------------------------------------------

# Logits must agree to ~1e-3; a spike count flipped by float rounding moves a few logits far,
# so up to 0.1% of them may fall outside and argmax must agree at >= 99% of positions.
DEMO_RTOL = DEMO_ATOL = 1e-3
DEMO_MIN_CLOSE, DEMO_MIN_ARGMAX = 0.999, 0.99


def cmd_demo(args) -> int:
    """The main job: reference model -> ONNX -> sbc (cpu) vs onnxruntime on the same inputs."""
    import tempfile

    import sbc
    from sbc.models.export import export_onnx

    if not args.onnx:
        _check_config(args.config)
    if args.batch < 1 or args.seq < 1:
        raise SbcError(f"--batch and --seq must be positive, got {args.batch} and {args.seq}")
    work = args.workdir or tempfile.mkdtemp(prefix="sbc-demo-")
    os.makedirs(work, exist_ok=True)
    name = os.path.splitext(os.path.basename(args.onnx))[0] if args.onnx else args.config
    onnx_path, sbc_path = (os.path.join(work, f"{name}{ext}") for ext in (".onnx", ".sbc"))
    t0 = time.perf_counter()
    if args.onnx:
        onnx_path = args.onnx
    else:
        export_onnx(args.config, onnx_path)
    t1 = time.perf_counter()
    module = sbc.compile(onnx_path, target="cpu")
    module.save(sbc_path)
    t2 = time.perf_counter()
    (in_name, _), (out_name, out_type) = module.inputs[0], module.outputs[0]
    vocab = int(out_type.shape[-1])
    ids = np.random.default_rng(0).integers(0, vocab, size=(args.batch, args.seq), dtype=np.int64)
    ours, sbc_ms = _timed(lambda: module.run({in_name: ids})[out_name])
    theirs, ort_ms = _ort_run(onnx_path, in_name, ids)
    stats = _compare(ours, theirs)
    ok = stats["close"] >= DEMO_MIN_CLOSE and stats["argmax"] >= DEMO_MIN_ARGMAX
    rows = [
        ("model", (onnx_path if args.onnx else f"'{args.config}' reference SpikingBrain")
                  + f", {in_name} [{args.batch}, {args.seq}]"),
        ("workdir", work),
        ("export to ONNX", "skipped (--onnx)" if args.onnx else f"{t1 - t0:.1f} s"),
        ("compile for cpu", f"{t2 - t1:.1f} s  ({sum(module.manifest['ops'].values())} ops, "
                            f"{os.path.getsize(sbc_path) / 1e6:.2f} MB, "
                            f"cpu {module.manifest['target'].get('cpu')})"),
        ("run sbc", f"{sbc_ms:.2f} ms  (median of 5)"),
        ("run onnxruntime", f"{ort_ms:.2f} ms  (median of 5)"),
        ("max |diff| logits", f"{stats['max_diff']:.2e}"),
        ("logits within tol", f"{stats['close']:.3%}  (atol {DEMO_ATOL:g}, rtol {DEMO_RTOL:g}; "
                              f"need {DEMO_MIN_CLOSE:.1%})"),
        ("argmax agreement", f"{stats['argmax']:.2%}  of {stats['positions']} positions "
                             f"(need {DEMO_MIN_ARGMAX:.0%})"),
        ("result", "MATCH" if ok else "MISMATCH"),
    ]
    print("sbc demo: compiled model vs onnxruntime")
    for name, value in rows:
        print(f"  {name:<20} {value}")
    return 0 if ok else 1


def _timed(fn, repeats: int = 5):
    """Result of fn() and the median wall time in ms of `repeats` calls after a warm-up."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return result, float(np.median(times))


def _ort_run(onnx_path: str, in_name: str, ids: np.ndarray):
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return _timed(lambda: session.run(None, {in_name: ids})[0])


def _compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    if ours.shape != theirs.shape:
        raise SbcError(f"output shapes differ: sbc {ours.shape}, onnxruntime {theirs.shape}")
    close = np.isclose(ours, theirs, rtol=DEMO_RTOL, atol=DEMO_ATOL)
    agree = ours.argmax(-1) == theirs.argmax(-1)
    return {"max_diff": float(np.abs(ours.astype(np.float64) - theirs).max(initial=0.0)),
            "close": float(close.mean()) if close.size else 1.0,
            "argmax": float(agree.mean()) if agree.size else 1.0, "positions": int(agree.size)}


# -- calibrate, report -----------------------------------------------------------------------

def cmd_calibrate(args) -> None:
    """Import, run the default passes, measure every SpikeEncode on the data, write JSON."""
    from sbc.passes.calibration import calibrate
    from sbc.report import format_sites, read_npz, report
    from sbc.frontend import import_onnx
    from sbc.passes import run_passes
    from sbc.runtimes.artifact import atomic_path
    output = args.output or os.path.splitext(args.model)[0] + ".spike_stats.json"
    _check_output_dir(output)
    feeds = read_npz(args.data)  # before the import: a bad data file fails fast
    stats = calibrate(run_passes(import_onnx(args.model), None), feeds)
    stats["source"] = {"model": os.path.basename(args.model), "data": os.path.basename(args.data)}
    total = report(stats)["total"]
    print(f"{len(stats['sites'])} spiking sites, {stats['samples']} sample(s), "
          f"T = {stats['steps']}")
    print(format_sites(stats))
    print(f"total: firing rate {total['firing_rate']:.1%}, {total['spikes_per_channel']:.3f} "
          f"spikes per channel, {total['silent_channels']:.1%} channels silent")
    with atomic_path(output) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1)
    print(f"wrote {output}")


def cmd_report(args) -> None:
    from sbc.report import format_report, load_stats, report, write_plots
    stats = load_stats(args.stats)
    rep = report(stats)
    paths = write_plots(stats, rep, args.plots) if args.plots else []
    if args.json:
        print(json.dumps(dict(rep, plots=paths), indent=1))
        return
    print(format_report(rep))
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
