"""`sbc bench`: how long a compiled module takes on given inputs, and (optionally) onnxruntime
on the same inputs in the same process, as a ratio.

Warm-up calls first (untimed), then `repeats` timed calls; median, min and max in
milliseconds. Tokens per second when the model reads token ids (an integer [batch, seq]
input): batch * seq tokens per call. onnxruntime runs after sbc, each in its own block (its
threads keep spinning after a call and would slow whatever runs next).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from sbc.errors import InputError


def bench(module, feeds: dict, warmup: int, repeats: int, onnx: str | None = None) -> dict:
    result = {"target": module.kind}
    times = _time(lambda: module.run(feeds), warmup, repeats)
    result.update(_stats("sbc", times))
    tokens = _tokens(feeds)
    if tokens:
        result["tokens_per_call"] = tokens
        result["sbc_tokens_per_s"] = round(tokens / (statistics.median(times) / 1e3), 1)
    if onnx:
        ort_times = _time(_ort_call(onnx, feeds), warmup, repeats)
        result.update(_stats("onnxruntime", ort_times))
        result["sbc_speed_vs_onnxruntime"] = round(statistics.median(ort_times)
                                                   / statistics.median(times), 3)
    return result


def _time(call, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _stats(who: str, times: list[float]) -> dict:
    return {f"{who}_ms_median": round(statistics.median(times), 3),
            f"{who}_ms_min": round(min(times), 3), f"{who}_ms_max": round(max(times), 3)}


def _tokens(feeds: dict) -> int:
    """batch * seq of the one integer [batch, seq] input (token ids), else 0."""
    ids = [a for a in feeds.values() if np.asarray(a).dtype.kind in "iu" and np.ndim(a) == 2]
    return int(np.asarray(ids[0]).size) if len(ids) == 1 else 0


def _ort_call(path: str, feeds: dict):
    import onnxruntime as ort
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise InputError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"{path}: onnxruntime needs inputs {', '.join(missing)} that the "
                         f"artifact does not take; is it the same model?")
    ort_feeds = {n: np.asarray(feeds[n]) for n in names}
    return lambda: session.run(None, ort_feeds)
