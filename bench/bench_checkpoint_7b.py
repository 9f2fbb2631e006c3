"""Checkpoint import at SpikingBrain-7B size (not in CI): compile time and peak memory for
full-size layers (hidden 3584, 28 heads, 4 KV heads, MLP 18944) from a synthetic random
checkpoint in the release format written to disk, extrapolated to the 28-layer model.

    .venv/bin/python bench/bench_checkpoint_7b.py [--variant plain|w8aspike] [--layers 2]
                                                  [--vocab 4096] [--compile] [--save PATH]
                                                  [--decode N] [--dir DIR]
    .venv/bin/python bench/bench_checkpoint_7b.py --dir DIR --save PATH --decode N  # time a saved one

Each phase runs in its own process so its peak RSS is its own: `import` (config + weights ->
sbc IR, what frontend/checkpoint.py holds) and, with --compile, the whole `sbc.compile` for
cpu (with --save, then writing the artifact, as `sbc compile -o` does). The vocabulary is
small by default: the embedding and LM head of the real vocab (152064) are scaled up from the
measured ones in the extrapolation. `--layers 28 --vocab 152064` is the whole 7B.

--decode N times N single-token decode steps of the compiled layers (after a 16-token
prefill), and the LM head alone (MatMul [1, hidden] x a bf16 [hidden, vocab] weight, as the
compiled checkpoint holds it) at the small and the real vocabulary, so that the 7B's decode
time per token is extrapolated from measured parts: (layers' step - small head) x 28 / layers
+ real head (measured directly with --layers 28 --vocab 152064).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    """A synthetic release-format checkpoint (random weights, bf16), written two layers per
    shard with an index, so that at most two layers' f32 weights are ever in memory."""
    import torch
    from safetensors.torch import save_file
    from tests.frontend.checkpoints import Tiny, config_json, random_weights
    start = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    full = Tiny(hidden=HIDDEN, layers=layers, heads=HEADS, kv_heads=KV_HEADS, mlp=MLP,
                vocab=vocab, window=4096)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_json(full), f, indent=2)
    weight_map = {}

    def shard(name: str, tensors: dict) -> None:
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
                  os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    gen = torch.Generator().manual_seed(0)
    for name, rows, scale in (("model.embeddings.weight", vocab, 1.0),
                              ("lm_head.weight", vocab, HIDDEN ** -0.5)):
        shard(name.split(".")[-2] + ".safetensors",
              {name: torch.randn(rows, HIDDEN, generator=gen) * scale})
    shard("norm.safetensors", {"model.norm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=gen)})
    for first in range(0, layers, 2):  # a GLA + SWA pair from a 2-layer model, renumbered
        pair = dataclasses.replace(full, layers=min(2, layers - first), vocab=16)
        tensors = {k.replace(f"layers.{i}.", f"layers.{first + i}."): v
                   for k, v in random_weights(pair, variant, seed=first + 1).items()
                   for i in range(pair.layers) if k.startswith(f"model.layers.{i}.")}
        shard(f"layers-{first:02d}.safetensors", tensors)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return time.perf_counter() - start


def phase(name: str, folder: str, decode: int = 0, save: str | None = None) -> dict:
    """Run in a child: the phase's seconds and the child's peak RSS."""
    start = time.perf_counter()
    stages, timings = {}, {}
    if name == "head":
        return {"ms": {str(v): head_ms(v, decode) for v in sorted({read_vocab(folder), VOCAB_7B})},
                "peak_rss_bytes": peak_rss()}
    if name == "load":  # a saved artifact: load time, decode time, peak memory
        import sbc
        module = sbc.load(save)
        return {"seconds": round(time.perf_counter() - start, 2),
                "decode_ms": decode_ms(module, decode), "peak_rss_bytes": peak_rss()}
    if name == "import":
        from sbc.frontend import import_checkpoint
        graph = import_checkpoint(folder)
        params = sum(p.data.nbytes for p in graph.params)
        embed = sum(p.data.nbytes for p in graph.params if _is_embedding(p.name))
    else:
        import sbc
        module = sbc.compile(folder, target="cpu", cache=False,
                             progress=lambda s, t: stages.__setitem__(s, round(t, 2)))
        params = sum(p.nbytes for p in module.params.values())
        embed = sum(p.nbytes for n, p in module.params.items() if _is_embedding(n))
        compile_peak = peak_rss()
        if save:
            t = time.perf_counter()
            module.save(save)
            timings.update(save_s=round(time.perf_counter() - t, 2),
                           artifact_bytes=os.path.getsize(save))
            compile_peak = peak_rss()
        if decode:
            timings["decode_ms"] = decode_ms(module, decode)
    return {"seconds": round(time.perf_counter() - start, 2), "stages": stages,
            "param_bytes": params, "embed_bytes": embed, "peak_rss_bytes": peak_rss() if name == "import" else compile_peak,
            **timings}


def decode_ms(module, steps: int) -> float:
    """Median ms of one decode step (batch 1) after a 16-token prefill."""
    import numpy as np
    vocab = module.outputs[0][1].shape[-1]
    session = module.session()
    session.prefill(np.arange(16, dtype=np.int64)[None] % vocab)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        session.decode(np.array([i % vocab], np.int64))
        times.append(time.perf_counter() - t)
    return round(sorted(times)[len(times) // 2] * 1e3, 2)


def head_ms(vocab: int, steps: int) -> float:
    """Median ms of the LM head alone at one token: x [1, hidden] @ W [hidden, vocab], W kept
    bf16 as a compiled checkpoint keeps it."""
    import numpy as np
    import sbc
    from sbc.ir import Graph, TensorType
    from sbc.ir.types import numpy_dtype
    g = Graph()
    x = g.add_input("x", TensorType("f32", (1, HIDDEN)))
    w = g.add_param("lm_head", (np.random.default_rng(0).standard_normal(
        (HIDDEN, vocab), dtype=np.float32) * 0.02).astype(numpy_dtype("bf16")))
    g.set_outputs([g.add1("MatMul", x, g.add1("Cast", w, to="f32"))], ["logits"])
    module = sbc.compile(g, cache=False)
    feeds = {"x": np.ones((1, HIDDEN), np.float32)}
    module.run(feeds)
    times = []
    for _ in range(max(steps, 5)):
        t = time.perf_counter()
        module.run(feeds)
        times.append(time.perf_counter() - t)
    return round(sorted(times)[len(times) // 2] * 1e3, 2)


def _is_embedding(name: str) -> bool:
    return name.startswith(("model.embeddings", "lm_head"))


def read_vocab(folder: str) -> int:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)["vocab_size"]


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from
    the parent across fork + exec, so a child would report the writer's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(name: str, folder: str, decode: int = 0, save: str | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--dir", folder,
                          "--decode", str(decode)] + (["--save", save] if save else []),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="plain", choices=["plain", "w8aspike"])
    ap.add_argument("--layers", type=int, default=2, help="1: one GLA layer; 2: GLA + SWA")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="also time the whole cpu compile")
    ap.add_argument("--skip-import", action="store_true",
                    help="no separate import phase (the compile phase imports anyway)")
    ap.add_argument("--save", metavar="PATH",
                    help="with --compile: also write the artifact there (size, time, peak "
                         "memory); without --compile: load it and time --decode steps")
    ap.add_argument("--decode", type=int, default=0, metavar="N",
                    help="with --compile: time N decode steps and the LM head alone")
    ap.add_argument("--dir", help="checkpoint folder to write (default: a temp folder)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.dir, args.decode, args.save)))
        return
    folder = args.dir or tempfile.mkdtemp(prefix="sbc-ckpt7b-")
    if os.path.isfile(os.path.join(folder, "config.json")):  # written by an earlier run
        print(f"reusing the checkpoint in {folder} (its own variant, layers and vocab)")
    else:
        disk = write(folder, args.variant, args.layers, args.vocab)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"wrote {args.layers} full-size layer(s), vocab {args.vocab}, {args.variant}, "
              f"bf16: {size / 1e9:.2f} GB in {disk:.1f} s -> {folder}")
    if args.save and not args.compile:
        r = run_child("load", folder, max(args.decode, 1), args.save)
        print(f"   load: {r['seconds']:.1f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB; decode "
              f"{r['decode_ms']:.1f} ms per token (median of {max(args.decode, 1)}, batch 1, "
              f"after a 16-token prefill)")
        return
    results = {} if args.skip_import else {"import": run_child("import", folder)}
    if args.compile:
        results["compile"] = run_child("compile", folder, args.decode, args.save)
    vocab = read_vocab(folder)
    for name, r in results.items():
        layers = _layers(folder)
        layer_s = r["seconds"] / layers
        layer_bytes = (r["param_bytes"] - r["embed_bytes"]) / layers
        embed = r["embed_bytes"] * VOCAB_7B / vocab
        full = layer_bytes * LAYERS_7B + embed
        saved = (f", artifact {r['artifact_bytes'] / 1e9:.2f} GB written in {r['save_s']:.1f} s"
                 if "artifact_bytes" in r else "")
        print(f"{name:>7}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB, "
              f"params {r['param_bytes'] / 1e9:.2f} GB{saved} {r['stages'] or ''}")
        print(f"         28-layer 7B estimate: ~{layer_s * LAYERS_7B:.0f} s, params "
              f"~{full / 1e9:.1f} GB (layers {layer_bytes * LAYERS_7B / 1e9:.1f} GB + embedding "
              f"and LM head {embed / 1e9:.1f} GB)")
    if args.compile and args.decode:
        step, layers = results["compile"]["decode_ms"], _layers(folder)
        head = run_child("head", folder, args.decode)["ms"]
        small, real = head[str(vocab)], head[str(VOCAB_7B)]
        per_layer = (step - small) / layers
        print(f" decode: {step:.1f} ms per token for {layers} layer(s) + a {vocab}-token head "
              f"({small:.1f} ms of it); the LM head at {VOCAB_7B} tokens: {real:.1f} ms")
        print(f"         28-layer 7B estimate (extrapolated from these measurements): "
              f"{per_layer:.1f} ms x 28 + {real:.1f} ms = {per_layer * LAYERS_7B + real:.0f} ms "
              f"per token")


def _layers(folder: str) -> int:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)["num_hidden_layers"]


if __name__ == "__main__":
    main()
