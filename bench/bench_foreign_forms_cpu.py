"""Models written by others, fused or not: prefill time of sbc against onnxruntime on the same
ONNX file and PyTorch eager on the same module, for token mixers in several spellings (the
foreign corpus, tests/foreign/forms.py: masked_fill GLA, finfo.min SWA, SDPA with a band, a GLA
+ SWA decoder, a transformers Mistral decoder) and sbc's own export of the `tiny` SpikingBrain.

Each file is exported once (dynamo), compiled by sbc for cpu and timed on [1, T] inputs,
medians of --repeats calls after a warm-up, each runtime in its own block (onnxruntime's
threads keep spinning after a call and would slow whatever runs next). The fused ops column is
what sbc made of the mixers (a quadratic T x T path otherwise).

    .venv/bin/python bench/bench_foreign_forms_cpu.py [--seq 1024 4096] [--repeats 3]
        [--forms own hf_llama ...] [--out F]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the corpus lives in tests/
import sbc  # noqa: E402
from sbc.models.export import export_onnx  # noqa: E402
from sbc.models.spikingbrain import build_model, get_config  # noqa: E402
from tests.foreign.forms import FORMS, export  # noqa: E402
from bench_spike_matmul_cpu import median_ms  # noqa: E402  (this folder: the same timing rules)

SPELLINGS = ["own", "gla_qk_exp_masked_fill", "swa_finfo_min", "swa_sdpa_bool",
             "hybrid_decoder", "hf_mistral"]  # "own": sbc's export of the tiny SpikingBrain


def own_export(tmp: Path):
    """sbc's own export of the tiny SpikingBrain (GLA + SWA layers): (onnx bytes, torch module,
    input name, inputs at length T)."""
    path = export_onnx("tiny", tmp / "tiny.onnx")
    vocab = get_config("tiny").vocab_size
    model = build_model("tiny").eval()
    return Path(path).read_bytes(), model, "ids", lambda t: np.random.default_rng(0).integers(0, vocab, (1, t))


def corpus_form(name: str):
    form = FORMS[name]
    return export(name, "dynamo"), form.factory().eval(), form.input_name, \
        lambda t: form.inputs(batch=1, seq=t, seed=0).numpy()


def row(label: str, data: bytes, model, input_name: str, make, seqs, repeats) -> list[str]:
    module = sbc.compile(onnx.load_from_string(data), target="cpu")
    fused = ", ".join(f"{op} {n}" for op, n in module.manifest["ops"].items()
                      if op in ("LinearAttention", "SlidingWindowAttention")) or "none"
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    cells = []
    for t in seqs:
        x = make(t)
        tx = torch.from_numpy(x)
        with torch.no_grad():  # each in its own block: onnxruntime's threads spin after a call
            ms = {name: median_ms({name: fn}, repeats)[name] for name, fn in (
                ("sbc", lambda: module.run({input_name: x})),
                ("ort", lambda: session.run(None, {input_name: x})),
                ("torch", lambda: model(tx)))}
        cells.append(f"{ms['sbc']:.1f} | {ms['ort']:.1f} | {ms['torch']:.1f} | "
                     f"{ms['ort'] / ms['sbc']:.2f}x")
    return [f"| {label} | {fused} | " + " | ".join(cells) + " |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--forms", nargs="+", default=SPELLINGS,
                    help="corpus forms (tests/foreign/forms.py), 'own' for sbc's own export")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()
    head = " | ".join(f"sbc ms (T={t}) | ORT ms | torch ms | sbc speed vs ORT" for t in args.seq)
    lines = [f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
             f"batch 1, medians of {args.repeats}", "",
             f"| spelling | fused by sbc | {head} |",
             "|---|---|" + "---:|" * (4 * len(args.seq))]
    for name in args.forms:
        with tempfile.TemporaryDirectory() as tmp:
            model = own_export(Path(tmp)) if name == "own" else corpus_form(name)
            label = "sbc's own export (tiny)" if name == "own" else name
            lines += row(label, *model, args.seq, args.repeats)
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
