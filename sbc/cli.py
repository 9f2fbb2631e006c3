"""The `sbc` command line: compile, run, inspect, export, debug, demo.

Any sbc error prints one line `sbc: error: ...` on stderr and exits 2 (a failed comparison in
`demo` exits 1). Output files are written atomically, so an interrupted command leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from sbc.errors import SbcError


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.command(args) or 0
    except SbcError as e:
        print(f"sbc: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sbc: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sbc inspect ... | head`
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sbc", description="SpikingBrain Compiler: ONNX -> TVM")
    sub = ap.add_subparsers(metavar="command")

    c = sub.add_parser("compile", help="compile an ONNX model to a .sbc artifact")
    c.add_argument("model")
    c.add_argument("--target", default="cpu")
    c.add_argument("-o", "--output", help="artifact path (default: <model>.sbc)")
    c.add_argument("--passes", help="comma-separated pass pipeline (default: the standard one)")
    c.add_argument("--print-after", action="append", default=[], metavar="PASS|all")
    c.add_argument("--time-passes", action="store_true")
    c.add_argument("--verify-each", action="store_true")
    c.add_argument("--dump-dir")
    c.set_defaults(command=cmd_compile)

    r = sub.add_parser("run", help="run a .sbc artifact on inputs from an .npz file")
    r.add_argument("artifact")
    r.add_argument("--inputs", required=True, help=".npz whose keys are the input names")
    r.add_argument("--outputs", help="write outputs to this .npz")
    r.set_defaults(command=cmd_run)

    i = sub.add_parser("inspect", help="describe an ONNX model or a .sbc artifact")
    i.add_argument("path")
    i.add_argument("--ir", action="store_true", help="print the sbc IR after import")
    i.add_argument("--json", action="store_true")
    i.set_defaults(command=cmd_inspect)

    e = sub.add_parser("export", help="export the built-in reference model to ONNX")
    e.add_argument("--config", default="tiny")
    e.add_argument("-o", "--output", required=True)
    e.set_defaults(command=cmd_export)

    g = sub.add_parser("debug", help="find the first node where the compiled model diverges")
    g.add_argument("model")
    g.add_argument("--inputs", required=True, help=".npz whose keys are the input names")
    g.add_argument("--rtol", type=float, default=1e-4)
    g.add_argument("--atol", type=float, default=1e-4)
    g.set_defaults(command=cmd_debug)

    d = sub.add_parser("demo", help="export, compile for cpu, run and compare with onnxruntime")
    d.add_argument("--config", default="tiny")
    d.add_argument("--batch", type=int, default=2)
    d.add_argument("--seq", type=int, default=64)
    d.add_argument("--workdir", default=None)
    d.set_defaults(command=cmd_demo)
    return ap


def cmd_compile(args) -> None:
    import sbc
    output = args.output or os.path.splitext(args.model)[0] + ".sbc"
    start = time.perf_counter()
    module = sbc.compile(args.model, target=args.target, passes=args.passes,
                         print_after=args.print_after, time_passes=args.time_passes,
                         verify_each=args.verify_each, dump_dir=args.dump_dir)
    module.save(output)
    n_ops = sum(module.manifest["ops"].values())
    n_params = sum(p.size for p in module.params.values())
    print(f"compiled {args.model} -> {output}: {n_ops} ops, {n_params:,} parameters, "
          f"{os.path.getsize(output) / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s")


def cmd_run(args) -> None:
    import sbc
    module = sbc.load(args.artifact)
    outputs = module.run(_read_npz(args.inputs))
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
    if args.outputs:
        from sbc.runtimes.artifact import atomic_path
        with atomic_path(args.outputs) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **outputs)


def cmd_inspect(args) -> None:
    info = _inspect_artifact(args.path) if args.path.endswith(".sbc") else _inspect_onnx(args.path, args.ir)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if key == "ir":
            print(value, end="")
        elif isinstance(value, (dict, list)):
            print(f"{key}:")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


def _signature(sig) -> list[str]:
    return [f"{n}: {t}" for n, t in sig]


def _inspect_onnx(path: str, with_ir: bool) -> dict:
    from sbc.frontend import import_onnx
    graph = import_onnx(path)
    info = {
        "model": path,
        "inputs": _signature((v.name, v.type) for v in graph.inputs),
        "outputs": _signature((n, v.type) for n, v in zip(graph.output_names, graph.outputs)),
        "parameters": f"{sum(p.data.size for p in graph.params):,} in {len(graph.params)} tensors "
                      f"({sum(p.data.nbytes for p in graph.params) / 1e6:.2f} MB)",
        "ops": graph.op_counts(),
    }
    if with_ir:
        from sbc.ir.printer import print_graph
        info["ir"] = print_graph(graph)
    return info


def _inspect_artifact(path: str) -> dict:
    from sbc.runtimes.artifact import read_artifact, signature_from_json
    artifact = read_artifact(path)  # verifies format, version and checksums
    m = artifact.manifest
    return {
        "artifact": path,
        "sbc_version": m["sbc_version"],
        "created": m["created"],
        "target": m["target"],
        "inputs": _signature(signature_from_json(m["inputs"])),
        "outputs": _signature(signature_from_json(m["outputs"])),
        "parameters": f"{sum(p.size for p in artifact.params.values()):,} in {len(artifact.params)} tensors",
        "ops": m["ops"],
        "files": {k: f"{v['size']:,} bytes, sha256 {v['sha256'][:16]}…" for k, v in m["files"].items()},
        "source": m["source"],
    }


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise SbcError(f"{path}: cannot read inputs ({e})") from e


def cmd_debug(args) -> int:
    from sbc.debug import first_divergence
    from sbc.frontend import import_onnx
    found = first_divergence(import_onnx(args.model), _read_npz(args.inputs), rtol=args.rtol, atol=args.atol)
    if found is None:
        print("no divergence: every intermediate value matches the reference interpreter")
        return 0
    print(found)
    print(f"  compiled  {found.compiled.reshape(-1)[:6]}")
    print(f"  reference {found.reference.reshape(-1)[:6]}")
    return 1


def cmd_export(args) -> None:
    from sbc.models.export import export_onnx
    try:
        path = export_onnx(args.config, args.output)
    except ValueError as e:
        raise SbcError(str(e)) from e
    print(f"exported the '{args.config}' reference model to {path}")


def cmd_demo(args) -> int:
    """The main job: reference model -> ONNX -> sbc (cpu) vs onnxruntime on the same inputs."""
    import tempfile

    import onnxruntime as ort

    import sbc
    from sbc.models.export import export_onnx

    work = args.workdir or tempfile.mkdtemp(prefix="sbc-demo-")
    os.makedirs(work, exist_ok=True)
    onnx_path = os.path.join(work, f"{args.config}.onnx")
    t0 = time.perf_counter()
    export_onnx(args.config, onnx_path)
    t1 = time.perf_counter()
    module = sbc.compile(onnx_path, target="cpu")
    module.save(os.path.join(work, f"{args.config}.sbc"))
    t2 = time.perf_counter()
    vocab = int(module.outputs[0][1].shape[-1])
    ids = np.random.default_rng(0).integers(0, vocab, size=(args.batch, args.seq), dtype=np.int64)
    ours = module.run({"ids": ids})["logits"]
    t3 = time.perf_counter()
    theirs = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    diff = float(np.abs(ours - theirs).max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    ok = np.allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    print(f"sbc demo: '{args.config}' reference model, ids [{args.batch}, {args.seq}] (workdir {work})")
    print(f"  export to ONNX       {t1 - t0:6.1f} s")
    print(f"  compile for cpu      {t2 - t1:6.1f} s   ({sum(module.manifest['ops'].values())} ops, "
          f"target {module.manifest['target']['cpu']})")
    print(f"  run                  {(t3 - t2) * 1e3:6.1f} ms")
    print(f"  vs onnxruntime       max |diff| {diff:.2e}, argmax agreement {agree:.1%}")
    print(f"  result               {'MATCH' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
