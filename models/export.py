"""Export the reference model to ONNX with dynamic batch and sequence dims.

    python -m sbc.models.export --config tiny -o tiny.onnx
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings

import onnx
import torch

from sbc.models.spikingbrain import SpikingBrainLM, build_model

OPSET = 18
ORT_MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions


def export_onnx(model: str | SpikingBrainLM, path: str | os.PathLike, opset: int = OPSET) -> str:
    """Write `model` (or a config name) as one self-contained ONNX file; returns the path.

    Input `ids` int64 [batch, seq], output `logits` float32 [batch, seq, vocab]."""
    if isinstance(model, str):
        model = build_model(model)
    model = model.eval()
    ids = torch.zeros(2, 8, dtype=torch.int64)
    dims = {"ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (ids,), input_names=["ids"], output_names=["logits"],
                                    dynamic_shapes=dims, opset_version=opset, dynamo=True,
                                    verbose=False, optimize=True)
        program.save(os.path.join(tmp, "m.onnx"))
        proto = onnx.load(os.path.join(tmp, "m.onnx"))
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    path = os.fspath(path)
    tmp_path = path + ".tmp"
    onnx.save(proto, tmp_path)
    os.replace(tmp_path, path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Export the SpikingBrain reference model to ONNX")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    print(export_onnx(args.config, args.output))


if __name__ == "__main__":
    main()
