"""Export the reference model to one self-contained ONNX file with dynamic batch and sequence dims.

    python -m sbc.models.export --config tiny -o tiny.onnx

Input `ids` int64 [batch, seq], output `logits` float32 [batch, seq, vocab]; weights are embedded.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import tempfile
import warnings

import onnx
import torch

from sbc.models.spikingbrain import CONFIGS, SpikingBrainLM, build_model

DEFAULT_OPSET = 18  # every op the model needs exists at 18; onnxruntime 1.31 runs 18..23 alike
ORT_MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions
DYNAMIC_DIMS = ("batch", "seq")


def export_onnx(model: str | SpikingBrainLM, path: str | os.PathLike, opset: int | None = None) -> str:
    """Write `model` (a SpikingBrainLM or a config name) to `path` as ONNX; returns the path.

    Uses the dynamo exporter (torch.export + onnxscript). The example input is [2, 8]: sizes 0
    and 1 would be specialised by torch.export, so they cannot serve as examples of a dynamic dim.
    """
    if isinstance(model, str):
        model = build_model(model)
    model = model.eval()
    ids = torch.zeros(2, 8, dtype=torch.int64)
    dims = {"ids": {i: torch.export.Dim(name) for i, name in enumerate(DYNAMIC_DIMS)}}
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(model, (ids,), input_names=["ids"], output_names=["logits"],
                                    dynamic_shapes=dims, opset_version=opset or DEFAULT_OPSET,
                                    dynamo=True, optimize=True, verbose=False)
        # save() then load() gathers all initializers into the one proto (no external data).
        program.save(os.path.join(tmp, "m.onnx"))
        proto = onnx.load(os.path.join(tmp, "m.onnx"))
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    _check_dynamic(proto)
    path = os.fspath(path)
    onnx.save(proto, path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written file under the real name
    return path


def _check_dynamic(proto: onnx.ModelProto) -> None:
    """The input must be [batch, seq] and the output [batch, seq, vocab] with symbolic dims."""
    onnx.checker.check_model(proto)
    want = list(DYNAMIC_DIMS)
    for value, rank in ((proto.graph.input[0], 2), (proto.graph.output[0], 3)):
        got = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        if got[:2] != want or len(got) != rank:
            raise RuntimeError(f"export lost the dynamic dims: {value.name} has shape {got}")


class _quiet:
    """Silence the exporter's progress prints, warnings and log lines (torchvision missing etc.)."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(self._level)
        self._warnings.__exit__(*exc)


def op_histogram(model: str | os.PathLike | onnx.ModelProto) -> dict[str, int]:
    """Op type -> node count of the main graph, most frequent first."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    return dict(collections.Counter(n.op_type for n in proto.graph.node).most_common())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Export the SpikingBrain reference model to ONNX")
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    ap.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--ops", action="store_true", help="print the op type histogram")
    args = ap.parse_args(argv)
    path = export_onnx(args.config, args.output, args.opset)
    print(path)
    if args.ops:
        for op, count in op_histogram(path).items():
            print(f"  {op:<16}{count}")


if __name__ == "__main__":
    main()
