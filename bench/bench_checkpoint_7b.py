"""Checkpoint import at SpikingBrain-7B size (not in CI): compile time and peak memory for
full-size layers (hidden 3584, 28 heads, 4 KV heads, MLP 18944) from a synthetic random
checkpoint in the release format written to disk, extrapolated to the 28-layer model.

    .venv/bin/python bench/bench_checkpoint_7b.py [--variant plain|w8aspike] [--layers 2]
                                                  [--vocab 4096] [--compile] [--dir DIR]

Each phase runs in its own process so its peak RSS is its own: `import` (config + weights ->
sbc IR, what frontend/checkpoint.py holds) and, with --compile, the whole `sbc.compile` for
cpu. The vocabulary is small by default (this machine has ~23 GB shared): the embedding and
LM head of the real vocab (152064) add 2 x vocab x hidden x 4 bytes as f32 params, reported
separately in the extrapolation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HIDDEN, HEADS, KV_HEADS, MLP, LAYERS_7B, VOCAB_7B = 3584, 28, 4, 18944, 28, 152064


def write(folder: str, variant: str, layers: int, vocab: int) -> float:
    from tests.frontend.checkpoints import Tiny, write_checkpoint
    start = time.perf_counter()
    write_checkpoint(folder, Tiny(hidden=HIDDEN, layers=layers, heads=HEADS, kv_heads=KV_HEADS,
                                  mlp=MLP, vocab=vocab, window=4096), variant=variant,
                     dtype="bf16")
    return time.perf_counter() - start


def phase(name: str, folder: str) -> dict:
    """Run in a child: the phase's seconds and the child's peak RSS."""
    start = time.perf_counter()
    stages = {}
    if name == "import":
        from sbc.frontend import import_checkpoint
        graph = import_checkpoint(folder)
        params = sum(p.data.nbytes for p in graph.params)
    else:
        import sbc
        module = sbc.compile(folder, target="cpu", cache=False,
                             progress=lambda s, t: stages.__setitem__(s, round(t, 2)))
        params = sum(p.nbytes for p in module.params.values())
    return {"seconds": round(time.perf_counter() - start, 2), "stages": stages,
            "param_bytes": params,
            "peak_rss_bytes": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from
    the parent across fork + exec, so a child would report the writer's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(name: str, folder: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--dir", folder],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="plain", choices=["plain", "w8aspike"])
    ap.add_argument("--layers", type=int, default=2, help="1: one GLA layer; 2: GLA + SWA")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="also time the whole cpu compile")
    ap.add_argument("--dir", help="checkpoint folder to write (default: a temp folder)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.dir)))
        return
    folder = args.dir or tempfile.mkdtemp(prefix="sbc-ckpt7b-")
    if os.path.isfile(os.path.join(folder, "config.json")):  # written by an earlier run
        print(f"reusing the checkpoint in {folder} (its own variant, layers and vocab)")
    else:
        disk = write(folder, args.variant, args.layers, args.vocab)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"wrote {args.layers} full-size layer(s), vocab {args.vocab}, {args.variant}, "
              f"bf16: {size / 1e9:.2f} GB in {disk:.1f} s -> {folder}")
    results = {"import": run_child("import", folder)}
    if args.compile:
        results["compile"] = run_child("compile", folder)
    embed = 2 * args.vocab * HIDDEN * 4  # embedding + LM head as f32 params
    for name, r in results.items():
        layer_s = r["seconds"] / args.layers
        layer_bytes = (r["param_bytes"] - embed) / args.layers
        full = layer_bytes * LAYERS_7B + 2 * VOCAB_7B * HIDDEN * 4
        print(f"{name:>7}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB, "
              f"params {r['param_bytes'] / 1e9:.2f} GB {r['stages'] or ''}")
        print(f"         28-layer 7B estimate: ~{layer_s * LAYERS_7B:.0f} s, params "
              f"~{full / 1e9:.1f} GB (layers {layer_bytes * LAYERS_7B / 1e9:.1f} GB + embedding "
              f"and LM head {2 * VOCAB_7B * HIDDEN * 4 / 1e9:.1f} GB)")


if __name__ == "__main__":
    main()
