"""Counts fuzz outcomes and keeps every failing case, as JSON a person or script can read.

Each failure is saved as failure-NNN.onnx + .npz (replay: `python -m tests.fuzz.check
failure-NNN.onnx`) and .txt (the graph as text, the inputs, what went wrong) in the folder
<json name>-cases next to the JSON file; so is the first case of each kind of sbc refusal
(sbc-error-NNN) and of ORT disagreeing with ONNX's reference implementation (ort-differs-NNN).
`python -m tests.fuzz.recorder outcomes.json` prints the summary.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx

KINDS = ("match", "sbc_error", "both_error", "ort_reject", "ort_differs", "failure")
MAX_SAVED = 200  # failing cases saved as files (hypothesis's shrinking can fail hundreds of times)


class Recorder:
    def __init__(self, path: Path, seed=None, mode: str = "ci"):
        self.path, self.seed, self.mode = Path(path), seed, mode
        self.counts = collections.Counter({k: 0 for k in KINDS})
        # allowed outcomes worth a look: which refusals, where ORT and ONNX's reference differ
        self.notes = {"sbc_error": collections.Counter(), "ort_differs": collections.Counter()}
        self.compile_seconds: list[float] = []
        self.failures: list[dict] = []
        self.ops = collections.Counter()  # op types over all examples: what was covered

    def add(self, case, outcome) -> None:
        self.counts[outcome.kind] += 1
        self.ops.update(n.op_type for n in case.model.graph.node)
        if outcome.compile_seconds:
            self.compile_seconds.append(outcome.compile_seconds)
        notes = self.notes.get(outcome.kind)
        if notes is not None:
            pattern = _pattern(outcome.message)
            if pattern not in notes:  # the first case of each kind is saved, to review it
                self._save(case, outcome, f"{outcome.kind.replace('_', '-')}-{len(notes):03d}")
            notes[pattern] += 1
        if outcome.failed:
            saved = self._save(case, outcome, f"failure-{len(self.failures):03d}") \
                if len(self.failures) < MAX_SAVED else None
            self.failures.append({"message": outcome.message, "case": saved})
        self.write()  # after every example: a crash of pytest itself still leaves the counts

    def _save(self, case, outcome, name: str) -> str:
        stem = self.path.parent / f"{self.path.stem}-cases" / name
        stem.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(case.model, f"{stem}.onnx")
        np.savez(f"{stem}.npz", **case.feeds)
        Path(f"{stem}.txt").write_text(f"{outcome.message}\n\n{case.describe()}\n")
        return f"{stem}.onnx"

    def summary(self) -> dict:
        secs = self.compile_seconds
        return {"mode": self.mode, "seed": self.seed, "examples": sum(self.counts.values()),
                "counts": dict(self.counts),
                "compile_seconds": {"total": round(sum(secs), 2), "mean": round(np.mean(secs), 3) if secs else 0,
                                    "max": round(max(secs), 2) if secs else 0},
                "ops": dict(self.ops.most_common()),
                **{kind: dict(c.most_common()) for kind, c in self.notes.items()},
                "failures": self.failures}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.summary(), indent=1))


def _pattern(message: str) -> str:
    """The message with names and numbers blanked, so that alike refusals count together."""
    return re.sub(r"'[^']*'|-?\d+(\.\d+)?(e[-+]?\d+)?", "#", message.splitlines()[0])[:160]


def format_summary(data: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items())
    secs = data["compile_seconds"]
    lines = [f"fuzz ({data['mode']}, seed {data['seed']}): {data['examples']} examples: {counts}",
             f"  sbc compile time: {secs['total']} s in all, mean {secs['mean']} s, max {secs['max']} s"]
    lines.append("  ops: " + ", ".join(f"{op} {n}" for op, n in data["ops"].items()))
    for kind in ("sbc_error", "ort_differs"):
        lines += [f"  {kind} x{n}: {p}" for p, n in data.get(kind, {}).items()]
    lines += [f"  FAILURE {f['case']}: {f['message'][:300]}" for f in data["failures"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_summary(json.loads(Path(sys.argv[1]).read_text())))
