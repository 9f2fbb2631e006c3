"""Model zoo on CPU: prefill of small decoders, sbc vs onnxruntime vs PyTorch eager, one run.

Tiny Hugging Face decoders built from transformers configs with seeded random weights (no
network; hidden 256, 2 layers, 4 query heads of 64, GQA with 2 KV heads where the architecture
has it, vocab 4096): Llama (full causal), Mistral (sliding window of 256), Qwen2 (full causal),
GPT-2 (learned positions, fused QKV, no GQA), wrapped as ids -> logits by the foreign corpus'
HFLogits and exported by its `export` (torch.onnx.export, dynamo, dynamic batch and seq); and
the project's reference model (SpikingBrain `tiny`: GLA + SWA layers) in every export form of
sbc.models.export (GLA parallel | chunked | scan | la27 x SWA masked | attention; la27 is opset
27, which onnxruntime cannot run).

Each model is compiled once by `sbc.compile` (the compile cache makes a second run fast), its
logits checked against onnxruntime's (PyTorch's for la27) at the first length, then timed on
[1, T] ids: medians of --repeats calls (a third of them, at least 2, at T >= 2048), taken in
up to three rounds of one block per runtime in turn, each after a pause and a warm-up call
(onnxruntime's threads spin after a call and would slow whatever runs next; the machine's
speed drifts, and the rounds spread a slow phase over every runtime). "vs ORT" and "vs torch"
are the other's time over sbc's: sbc's speed relative to it (> 1: sbc is faster). Every model
computes logits at all T positions.

    .venv/bin/python bench/bench_model_zoo_cpu.py [--models llama mistral ...]
        [--seq 128 512 2048] [--repeats 5] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the corpus lives in tests/
import sbc  # noqa: E402
from sbc.models.export import GLA_FORMS, export_onnx  # noqa: E402
from sbc.models.spikingbrain import build_model, forms, get_config  # noqa: E402
from sbc.passes import DEFAULT_PIPELINE  # noqa: E402
from tests.foreign.forms import Form, HFLogits, export  # noqa: E402
from bench_matmul_cpu import alternating_medians_s  # noqa: E402  (this folder: the same timing rules)

HF = dict(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, mlp=688, vocab=4096,
          window=256, positions=4096)
REF_FORMS = [(g, s) for g in GLA_FORMS for s in ("masked", "attention")]
# by default every GLA form with the masked SWA, and the Attention SWA once: every form
DEFAULT = ["llama", "llama_unfused", "mistral", "qwen2", "gpt2", "ref_parallel_masked",
           "ref_parallel_attention", "ref_chunked_masked", "ref_scan_masked", "ref_la27_masked"]
REF_CONFIG = "tiny"


def hf_module(arch: str) -> torch.nn.Module:
    """A transformers causal LM of HF's sizes with seeded random weights, as ids -> logits."""
    import transformers
    h = HF
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=h["vocab"], n_embd=h["hidden"],
                                      n_layer=h["layers"], n_head=h["heads"],
                                      n_positions=h["positions"], use_cache=False,
                                      bos_token_id=h["vocab"] - 1, eos_token_id=h["vocab"] - 1)
        model_cls = transformers.GPT2LMHeadModel
    else:
        names = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[arch]
        extra = {"sliding_window": h["window"]} if arch == "mistral" else {}
        cfg = getattr(transformers, f"{names}Config")(
            vocab_size=h["vocab"], hidden_size=h["hidden"], intermediate_size=h["mlp"],
            num_hidden_layers=h["layers"], num_attention_heads=h["heads"],
            num_key_value_heads=h["kv_heads"], head_dim=h["head_dim"],
            max_position_embeddings=h["positions"], use_cache=False, **extra)
        model_cls = getattr(transformers, f"{names}ForCausalLM")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return HFLogits(model_cls(cfg)).eval()


@dataclass
class Case:
    """One model to time: its ONNX bytes, the same model in PyTorch, the ids input's name and
    vocabulary, and what onnxruntime cannot run (None: it can)."""
    name: str
    description: str
    onnx: Callable[[Path], bytes]
    torch: Callable[[], Callable]
    input_name: str
    vocab: int
    no_ort: str | None = None
    passes: list[str] | None = None  # sbc's pass pipeline (None: the default one)


def hf_case(arch: str) -> Case:
    form = Form(f"zoo_{arch}_{HF['hidden']}x{HF['layers']}", lambda: hf_module(arch), "causal",
                {}, f"transformers {arch}", ids=True)
    what = {"llama": "full causal", "mistral": f"sliding window {HF['window']}",
            "qwen2": "full causal", "gpt2": "full causal, MHA"}[arch]
    return Case(arch, f"HF, {what}", lambda tmp: export(form, "dynamo"),
                lambda: hf_module(arch), form.input_name, HF["vocab"])


def unfused_case(arch: str) -> Case:
    """An HF model with sbc's attention fusions switched off: attention runs as the exported
    MatMul, Softmax, MatMul (the generic kernels of issue 18), the rest as usual."""
    case = hf_case(arch)
    fusions = {"fuse-linear-attention", "fuse-sliding-window-attention", "recognise-mixers"}
    case.name, case.description = f"{arch}_unfused", f"{case.description}, not fused"
    case.passes = [p for p in DEFAULT_PIPELINE if p not in fusions]
    return case


def ref_case(gla: str, swa: str) -> Case:
    def onnx_bytes(tmp: Path) -> bytes:
        path = export_onnx(REF_CONFIG, tmp / f"{gla}-{swa}.onnx", form=gla, swa=swa)
        return Path(path).read_bytes()

    def eager():
        model = build_model(REF_CONFIG).eval()

        def run(ids):
            with forms(model, GLA_FORMS[gla], swa):
                return model(ids)
        return run
    return Case(f"ref_{gla}_{swa}", f"SpikingBrain {REF_CONFIG}, GLA {gla}, SWA {swa}", onnx_bytes,
                eager, "ids", get_config(REF_CONFIG).vocab_size,
                no_ort="opset 27" if gla == "la27" else None)


CASES: dict[str, Callable[[], Case]] = {
    **{arch: (lambda a=arch: hf_case(a)) for arch in ("llama", "mistral", "qwen2", "gpt2")},
    "llama_unfused": lambda: unfused_case("llama"),
    **{f"ref_{g}_{s}": (lambda g=g, s=s: ref_case(g, s)) for g, s in REF_FORMS},
}


def bench_case(case: Case, seqs: list[int], repeats: int, tmp: Path) -> list[dict]:
    """Compile `case`, check it, time it at each T: one dict per T."""
    data = case.onnx(tmp)
    start = time.perf_counter()
    module = sbc.compile(onnx.load_from_string(data), target="cpu", passes=case.passes)
    compile_s = time.perf_counter() - start
    fused = ", ".join(f"{op} {n}" for op, n in module.manifest["ops"].items()
                      if op in ("LinearAttention", "SlidingWindowAttention")) or "none"
    session = None
    if case.no_ort is None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    eager = case.torch()
    out = module.outputs[0][0]
    rows = []
    for i, t in enumerate(seqs):
        ids = np.random.default_rng(t).integers(0, case.vocab, size=(1, t))
        tids = torch.from_numpy(ids)
        feeds = {case.input_name: ids}
        runs = {"sbc": lambda: module.run(feeds)[out]}
        if session is not None:
            runs["ort"] = lambda: session.run(None, feeds)[0]
        runs["torch"] = lambda: eager(tids)
        err = None
        with torch.inference_mode():
            if i == 0:  # the logits agree before anything is timed
                want = (runs["ort"] if session is not None else lambda: eager(tids).numpy())()
                err = float(np.abs(runs["sbc"]() - np.asarray(want)).max())
            n = repeats if t < 2048 else max(2, repeats // 3)
            ms = {k: s * 1e3 for k, s in alternating_medians_s(runs, n).items()}
        rows.append({"model": case.name, "description": case.description, "fused": fused,
                     "T": t, "compile_s": compile_s, "max_abs_diff": err, **ms})
        print(line(rows[-1]), flush=True)
    return rows


def line(r: dict) -> str:
    ort_ms = r.get("ort")
    cells = [r["model"], r["description"], r["fused"], str(r["T"]), f"{r['sbc']:.2f}",
             f"{ort_ms:.2f}" if ort_ms else "n/a", f"{r['torch']:.2f}",
             f"**{ort_ms / r['sbc']:.2f}x**" if ort_ms else "n/a", f"{r['torch'] / r['sbc']:.2f}x"]
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict], args) -> str:
    head = [f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} PyTorch "
            f"threads; batch 1, logits at every position; medians of {args.repeats} "
            f"(of {max(2, args.repeats // 3)} at T >= 2048)", "",
            "| model | what | fused by sbc | T | sbc ms | ORT ms | torch ms | sbc speed vs ORT "
            "| vs torch |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    diffs = ", ".join(f"{r['model']} {r['max_abs_diff']:.1e}" for r in rows
                      if r["max_abs_diff"] is not None)
    compile_s = ", ".join(f"{r['model']} {r['compile_s']:.0f} s" for r in rows
                          if r["max_abs_diff"] is not None)
    return "\n".join(head + [line(r) for r in rows]) + \
        (f"\n\nmax |sbc - ORT| of the logits (PyTorch for la27) at T = {args.seq[0]}: {diffs}\n"
         "\nsbc.compile, s (the compile cache answers a rerun unless sbc's sources changed): "
         f"{compile_s}\n")


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT, choices=list(CASES),
                    metavar="MODEL", help=f"from: {', '.join(CASES)}")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            try:
                rows += bench_case(CASES[name](), args.seq, args.repeats, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one model's failure is a line of the table
                failed.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
                print(failed[-1], flush=True)
    text = table(rows, args) + "".join(f"\nfailed: {f}\n" for f in failed)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
