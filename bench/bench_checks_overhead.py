"""What sbc's run-time safety checks cost: the `small` model compiled as usual (gathers
bounds-checked, sizes checked against the relations the kernels rely on, positions
validated) against the same model compiled without them, with onnxruntime on the same file
for scale, in one process.

The unchecked build is made for this measurement only: the gather checks are switched off in
the lowering (codegen.build.CHECKED_OPS emptied) and the runtime is given no assumptions.
Prefill: `Module.run` on [1, T] ids, medians of --repeats calls, both sbc builds interleaved
(onnxruntime in its own block: its threads spin after a call). Decode: ms/token of a session
after a 64-token prefill, both builds interleaved over --rounds rounds of 32 tokens each.

--per-call instead measures what one `Module.run` costs around its kernel (issue 18: <= 20 us
for small inputs): an Add of two [1, 4] float32 tensors, with static and with symbolic dims,
against onnxruntime on the same model, and where the time goes: each step of the call path
(runtimes.cpu) timed on its own in a loop, "rest" the Python glue between them (the total
less the steps). Medians over --rounds rounds of --calls calls each, everything interleaved
round by round. With --baseline REV, `Module.run` as of that git revision (its sbc/module.py,
runtimes/cpu.py and runtimes/interop.py, loaded beside the current ones over the same
compiled library) is timed in the same rounds; so is the same module with num_threads=1 (a
kernel whose loop TVM made parallel wakes the thread pool on every call).

    .venv/bin/python bench/bench_checks_overhead.py [--seq 1024] [--repeats 9] [--rounds 7]
    .venv/bin/python bench/bench_checks_overhead.py --per-call [--baseline REV] [--rounds 201]
        [--calls 50]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

import sbc
import sbc.codegen.build as build
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import get_config
from sbc.module import Module
from bench_spike_matmul_cpu import median_ms  # this folder: the same timing rules
from bench_spiking_model_cpu import decode_ms


def compile_both(path: Path) -> dict:
    checked = sbc.compile(str(path))
    saved, build.CHECKED_OPS = build.CHECKED_OPS, ()
    try:
        unchecked = sbc.compile(str(path))
    finally:
        build.CHECKED_OPS = saved
    unchecked._runtime.assumptions = []
    return {"checked": checked, "unchecked": unchecked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--seq", type=int, nargs="+", default=[1024])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rounds", type=int, help="decode rounds (default 7); with --per-call, "
                    "rounds of --calls calls (default 201)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    ap.add_argument("--per-call", action="store_true",
                    help="the per-call overhead of Module.run on a [1, 4] Add, step by step")
    ap.add_argument("--calls", type=int, default=50, help="--per-call: calls per round")
    ap.add_argument("--baseline", metavar="REV",
                    help="--per-call: also time Module.run as of this git revision")
    args = ap.parse_args()
    if args.per_call:
        text = per_call(args.rounds or 201, args.calls, args.baseline)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    vocab = get_config(args.config).vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(args.config, Path(tmp) / "model.onnx")
        modules = compile_both(path)
        ort_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        lines = [f"`{args.config}` model, {platform.processor() or platform.machine()}; "
                 f"checks: {len(modules['checked'].manifest['assumptions'])} size relation(s), "
                 f"gathers bounds-checked", "",
                 "| run | sbc checked | sbc unchecked | overhead | onnxruntime |", "|---|---:|---:|---:|---:|"]
        for t in args.seq:
            ids = np.random.default_rng(t).integers(0, vocab, size=(1, t))
            times = median_ms({n: (lambda m=m: m.run({"ids": ids})) for n, m in modules.items()},
                              args.repeats)
            time.sleep(1.0)
            times.update(median_ms({"ort": lambda: ort_sess.run(None, {"ids": ids})}, args.repeats))
            lines.append(row(f"prefill T={t} (ms)", times))
        decode = {n: [] for n in modules}
        for _ in range(args.rounds or 7):
            for n, m in modules.items():
                decode[n].append(decode_ms(m, vocab))
        lines.append(row("decode (ms/token)", {n: statistics.median(v) for n, v in decode.items()}))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def row(what: str, times: dict) -> str:
    overhead = times["checked"] / times["unchecked"] - 1
    ort_ms = f"{times['ort']:.2f}" if "ort" in times else ""
    return (f"| {what} | {times['checked']:.2f} | {times['unchecked']:.2f} | {overhead:+.1%} | "
            f"{ort_ms} |")


# -- --per-call: Module.run around a kernel that does nothing -------------------------------------

def add_model(symbolic: bool):
    """Add of two [1, 4] float32 tensors (dims "B", "N" where symbolic), opset 18."""
    import onnx
    from onnx import TensorProto, helper
    shape = ["B", "N"] if symbolic else [1, 4]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", vi[:2], vi[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnxruntime 1.31 reads <= 10
    onnx.checker.check_model(model)
    return model


def steps(module, feeds: dict) -> dict:
    """The call path of runtimes.cpu, step by step, each a function to time on its own."""
    from sbc.ir.types import bind_symbols
    from sbc.runtimes.cpu import _array_item
    from sbc.runtimes.threads import use_threads
    rt = module._runtime
    module.run(feeds)
    module.run(feeds)  # the signature planned and the outputs learnt
    names = rt._names
    values = [feeds[n] for n in names]
    (plan,) = rt._plans.values()
    function = rt._functions["main"]
    result = function(*plan.args)
    tensors = rt._invoke("main", plan.args)

    def copies():
        for i, view in plan.copies:
            view[...] = values[i]

    return {
        "signature lookup (checks remembered)":
            lambda: rt._plans.get(tuple([(type(v), v.dtype, v.shape)
                                         for v in [feeds[n] for n in names]])),
        "inputs into the plan's buffers (2 copies)": copies,
        "thread pool check": lambda: use_threads(rt.num_threads),
        "VM call (the kernel)": lambda: function(*plan.args),
        "outputs -> NumPy": lambda: (
            [_array_item(result, i) for i in rt._output_range],
            rt._host_outputs("main", tensors, (), plan.lo, plan.hi)),
        "first call only: full checks": lambda: bind_symbols(rt.inputs, feeds, rt.assumptions),
    }


def baseline_run(rev: str, module):
    """`module`'s Module.run as of git revision `rev`, over the same compiled library."""
    root = Path(__file__).resolve().parents[1]
    loaded = {}
    for name, path in [("interop", "runtimes/interop.py"), ("cpu", "runtimes/cpu.py"),
                       ("module", "sbc/module.py")]:
        source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"],
                                check=True, capture_output=True, text=True).stdout
        source = source.replace("from sbc.runtimes.interop ", "from sbc_baseline_interop ")
        mod = types.ModuleType(f"sbc_baseline_{name}")
        sys.modules[mod.__name__] = mod
        exec(compile(source, f"{rev}:{path}", "exec"), mod.__dict__)  # noqa: S102 - our own source
        loaded[name] = mod
    old = loaded["module"].Module(module.library, module.params, module.manifest, module.files,
                                  lazy=True)
    old._loaded = loaded["cpu"].CpuRuntime.from_library_bytes(module.library, **old._signature)
    return old.run


def per_call(rounds: int, calls: int, baseline: str | None) -> str:
    def loop(fn):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e6

    columns, times = [], {}
    for symbolic in (False, True):
        model = add_model(symbolic)
        module = sbc.compile(model, target="cpu", cache=False)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal((1, 4)).astype(np.float32) for n in ("a", "b")}
        want = session.run(None, feeds)[0]
        np.testing.assert_array_equal(module.run(feeds)["y"], want)
        one = Module(module.library, module.params, module.manifest, module.files, num_threads=1)
        runs = {"**Module.run**": lambda m=module, f=feeds: m.run(f), **steps(module, feeds),
                "Module.run, num_threads=1": lambda m=one, f=feeds: m.run(f)}
        if baseline:
            old = baseline_run(baseline, module)
            np.testing.assert_array_equal(old(feeds)["y"], want)
            runs[f"Module.run as of {baseline}"] = lambda r=old, f=feeds: r(f)
        runs["onnxruntime"] = lambda s=session, f=feeds: s.run(None, f)
        column = "symbolic [B, N]" if symbolic else "static [1, 4]"
        columns.append(column)
        samples = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                samples[name].append(loop(fn))
        times[column] = {name: statistics.median(v) for name, v in samples.items()}
    names = list(next(iter(times.values())))
    path = [n for n in names if not n.startswith(("**Module.run", "Module.run", "onnxruntime",
                                                  "first call only"))]
    lines = [f"{platform.processor() or platform.machine()}; us per call, medians of {rounds} "
             f"rounds of {calls} calls", "",
             "| step | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in path:
        lines.append(f"| {name} | " + " | ".join(f"{times[c][name]:.1f}" for c in columns) + " |")
    lines.append("| rest (Python glue: the calls, the lock, dicts) | " + " | ".join(
        f"{times[c]['**Module.run**'] - sum(times[c][n] for n in path):.1f}"
        for c in columns) + " |")
    for name in ["**Module.run**", "Module.run, num_threads=1",
                 *[n for n in names if n.startswith("Module.run as of")],
                 "onnxruntime", "first call only: full checks"]:
        lines.append(f"| {name} | " + " | ".join(f"{times[c][name]:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
