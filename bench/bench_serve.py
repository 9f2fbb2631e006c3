"""`sbc serve` under load: time to first token and tokens/s, one stream alone and N at once.

Starts the real `sbc serve` on a free port (a separate process, so the client's threads do not
share its interpreter) and drives it with the official `openai` client: a warm-up request,
then one stream alone, then N concurrent streams (threads), all greedy with `ignore_eos` so
that every stream generates exactly --tokens tokens. Each concurrent stream is checked to
equal the same request served alone.

    .venv/bin/python bench/bench_serve.py ARTIFACT.sbc [--streams 16] [--tokens 64]

Without an artifact, the tiny reference model is exported and compiled with the tests' small
tokenizer (tests/text_model.py) first.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBC = os.path.join(os.path.dirname(sys.executable), "sbc")


def tiny_artifact(work: str) -> str:
    sys.path.insert(0, ROOT)
    from sbc.models.export import export_onnx
    from tests.text_model import text_artifact
    return str(text_artifact(export_onnx("tiny", os.path.join(work, "tiny.onnx"))))


def start_server(artifact: str, streams: int):
    proc = subprocess.Popen([SBC, "serve", artifact, "--port", "0", "--model-name", "m",
                             "--max-concurrency", str(streams)],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if found:
            return proc, f"http://127.0.0.1:{found.group(1)}/v1"
    raise SystemExit("sbc serve did not start")


def one_stream(client, prompt: str, tokens: int):
    """(text, seconds to the first text, seconds in all, tokens generated)."""
    start = time.perf_counter()
    first, pieces, count = None, [], 0
    for chunk in client.completions.create(model="m", prompt=prompt, max_tokens=tokens,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True},
                                           stream_options={"include_usage": True}):
        if chunk.choices:
            if chunk.choices[0].text and first is None:
                first = time.perf_counter() - start
            pieces.append(chunk.choices[0].text)
        else:
            count = chunk.usage.completion_tokens
    return "".join(pieces), first, time.perf_counter() - start, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        artifact = args.artifact or tiny_artifact(work)
        proc, url = start_server(artifact, args.streams)
        try:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
            prompts = [f"Spiking neurons fire {'the lazy dog ' * (i % 5)}{i}"
                       for i in range(args.streams)]
            one_stream(client, prompts[0], 8)  # warm-up: first calls load the VM functions
            alone = [one_stream(client, p, args.tokens) for p in prompts]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.streams) as pool:
                together = list(pool.map(lambda p: one_stream(client, p, args.tokens), prompts))
            wall = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert all(a[0] == b[0] for a, b in zip(alone, together)), "a stream differs from alone"
    single = alone[0]
    firsts = sorted(t[1] for t in together)
    total = sum(t[3] for t in together)
    print(f"one stream alone: time to first token {single[1] * 1e3:.1f} ms, "
          f"{single[3] / single[2]:.0f} tokens/s")
    print(f"{args.streams} concurrent streams x {args.tokens} tokens: {total} tokens in "
          f"{wall:.2f} s = {total / wall:.0f} tokens/s in all, "
          f"{statistics.median(t[3] / t[2] for t in together):.1f} tokens/s per stream "
          f"(median); time to first token median {statistics.median(firsts) * 1e3:.0f} ms, "
          f"max {firsts[-1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
