"""Export the reference model to one self-contained ONNX file with dynamic batch and sequence dims.

    python -m sbc.models.export --config tiny -o tiny.onnx [--form parallel|chunked|scan|la27]
                                [--swa masked|attention]

Input `ids` int64 [batch, seq], output `logits` float32 [batch, seq, vocab]; weights are embedded.

Forms of the GLA core (q, k, v, g [B, H, T, D] -> o [B, Hq, T, dv]):
    parallel  decay-weighted masked T x T attention (default; overflows past ~2,500 tokens)
    chunked   chunks of 64 plus pairwise chunk decays: plain ops, finite at any length
    scan      an ONNX Scan over T carrying the state [B, H_kv, dk, dv]
    la27      one ONNX-27 LinearAttention (update_rule gated) per layer; opset 27, which
              onnxruntime cannot run (onnx.reference can)
torch cannot emit the last two: the core is exported as one marker node (`sbc_export::gla`) and
rewritten here with onnx.helper. SWA is a masked softmax (default) or, with swa="attention", an
ONNX Attention (opset >= 23) with a boolean banded mask.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import tempfile
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from sbc.models.spikingbrain import CONFIGS, SpikingBrainConfig, SpikingBrainLM, build_model, forms

DEFAULT_OPSET = 18  # every op the model needs exists at 18; onnxruntime 1.31 runs 18..23 alike
ATTENTION_OPSET = 23  # the first opset with Attention
LINEAR_ATTENTION_OPSET = 27  # the first opset with LinearAttention
ORT_MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions
DYNAMIC_DIMS = ("batch", "seq")
MARKER_DOMAIN = "sbc_export"  # the marker node the scan / la27 rewrites replace

# export form -> the model's GLA form (see spikingbrain.GLA_FORMS)
GLA_FORMS = {"parallel": "parallel", "chunked": "chunked", "scan": "op", "la27": "op"}
SWA_FORMS = ("masked", "attention")


def export_onnx(model: str | SpikingBrainLM, path: str | os.PathLike, opset: int | None = None,
                form: str = "parallel", swa: str = "masked") -> str:
    """Write `model` (a SpikingBrainLM or a config name) to `path` as ONNX; returns the path.
    `form` picks the GLA form and `swa` the SWA form (module docstring); the default opset is
    18, or 23 for swa="attention"; la27 then raises the default-domain opset to 27.

    Uses the dynamo exporter (torch.export + onnxscript). The example input is [2, 8]: sizes 0
    and 1 would be specialised by torch.export, so they cannot serve as examples of a dynamic dim.
    """
    if form not in GLA_FORMS or swa not in SWA_FORMS:
        raise ValueError(f"unknown form {form!r} / swa {swa!r}; choose from "
                         f"{', '.join(GLA_FORMS)} / {', '.join(SWA_FORMS)}")
    if isinstance(model, str):
        model = build_model(model)
    with forms(model.eval(), GLA_FORMS[form], swa):
        proto = _torch_export(model, _opset(opset, swa))
    rewrite = {"scan": _scan_nodes, "la27": _linear_attention_nodes}.get(form)
    if rewrite:
        _replace_markers(proto, rewrite, model.config)
    if form == "la27":
        _set_opset(proto, LINEAR_ATTENTION_OPSET)
    else:
        proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    _check_dynamic(proto)
    path = os.fspath(path)
    onnx.save(proto, path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written file under the real name
    return path


def _opset(opset: int | None, swa: str) -> int:
    """The opset to export at: as asked, else the lowest that has every op the forms need."""
    least = ATTENTION_OPSET if swa == "attention" else DEFAULT_OPSET
    if opset is not None and opset < least:
        raise ValueError(f"swa={swa!r} needs opset >= {least}, not {opset}")
    return opset or least


def _torch_export(model: SpikingBrainLM, opset: int) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) of `model` with dynamic batch and seq; sbc_export::gla becomes
    one marker node GLA(q, k, v, g) in the MARKER_DOMAIN."""
    ids = torch.zeros(2, 8, dtype=torch.int64)
    dims = {"ids": {i: torch.export.Dim(name) for i, name in enumerate(DYNAMIC_DIMS)}}
    table = {torch.ops.sbc_export.gla.default: _gla_marker()}
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(model, (ids,), input_names=["ids"], output_names=["logits"],
                                    dynamic_shapes=dims, opset_version=opset, dynamo=True,
                                    optimize=True, verbose=False, custom_translation_table=table)
        # save() then load() gathers all initializers into the one proto (no external data).
        program.save(os.path.join(tmp, "m.onnx"))
        return onnx.load(os.path.join(tmp, "m.onnx"))


def _gla_marker():
    """The onnxscript translation of sbc_export::gla: one GLA node in MARKER_DOMAIN (its schema
    is registered with onnx on first use, as onnxscript needs one to emit a node)."""
    import onnxscript
    if not onnx.defs.has("GLA", MARKER_DOMAIN):
        param = onnx.defs.OpSchema.FormalParameter
        onnx.defs.register_schema(onnx.defs.OpSchema(
            "GLA", MARKER_DOMAIN, 1, inputs=[param(n, "T") for n in "qkvg"],
            outputs=[param("o", "T")], type_constraints=[("T", ["tensor(float)"], "")]))
    op = onnxscript.values.Opset(MARKER_DOMAIN, 1).GLA

    def gla(q, k, v, g):
        """Emits GLA(q, k, v, g)."""
        return op(q, k, v, g)
    return gla


# -- rewriting the marker nodes --------------------------------------------------------------------

def _replace_markers(proto: onnx.ModelProto, build, c: SpikingBrainConfig) -> None:
    """Replace each marker node, in place, by build(node, c) -> (nodes, initializers), which
    must compute the marker's output; then drop the marker domain's opset import."""
    nodes = []
    for node in proto.graph.node:
        if node.domain == MARKER_DOMAIN:
            new_nodes, inits = build(node, c)
            nodes += new_nodes
            proto.graph.initializer.extend(inits)
        else:
            nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    kept = [o for o in proto.opset_import if o.domain != MARKER_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def _int64s(name: str, values) -> onnx.TensorProto:
    """An int64 initializer."""
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _scan_nodes(node: onnx.NodeProto, c: SpikingBrainConfig):
    """GLA(q, k, v, g) as an ONNX Scan over T (axis 0 after transposes) whose state is the
    per-KV-head [B, H_kv, dk, dv]; q [B, Hq, T, dk] is read as [B, H_kv, groups, T, dk]."""
    q, k, v, g = node.input
    p = node.output[0]
    d, hkv, groups = c.head_dim, c.kv_heads, c.groups
    inits = [_int64s(f"{p}.q_shape", [0, hkv, groups, -1, d]),
             _int64s(f"{p}.state_dims", [hkv, d, d]),
             _int64s(f"{p}.o_shape", [0, c.q_heads, -1, d])]
    mk = helper.make_node
    nodes = [
        mk("Reshape", [q, f"{p}.q_shape"], [f"{p}.q5"]),
        mk("Transpose", [f"{p}.q5"], [f"{p}.qs"], perm=[3, 0, 1, 2, 4]),  # [T, B, Hkv, G, dk]
        *(mk("Transpose", [x], [f"{p}.{n}s"], perm=[2, 0, 1, 3])  # [T, B, Hkv, D]
          for x, n in ((k, "k"), (v, "v"), (g, "g"))),
        mk("Shape", [k], [f"{p}.batch"], start=0, end=1),
        mk("Concat", [f"{p}.batch", f"{p}.state_dims"], [f"{p}.state_shape"], axis=0),
        mk("ConstantOfShape", [f"{p}.state_shape"], [f"{p}.state0"],
           value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        mk("Scan", [f"{p}.state0", f"{p}.qs", f"{p}.ks", f"{p}.vs", f"{p}.gs"],
           [f"{p}.state", f"{p}.os"], num_scan_inputs=4, body=_scan_body(p, c)),
        mk("Transpose", [f"{p}.os"], [f"{p}.o5"], perm=[1, 2, 3, 0, 4]),  # [B, Hkv, G, T, dv]
        mk("Reshape", [f"{p}.o5", f"{p}.o_shape"], [node.output[0]]),
    ]
    return nodes, inits


def _scan_body(p: str, c: SpikingBrainConfig) -> onnx.GraphProto:
    """One step: S = exp(g_t)[..., None] * S + k_t[..., None] * v_t[..., None, :];
    o_t = q_t @ S, with q_t [B, H_kv, groups, dk] and S [B, H_kv, dk, dv]."""
    d, hkv = c.head_dim, c.kv_heads
    value = lambda name, *dims: helper.make_tensor_value_info(f"{p}.{name}", TensorProto.FLOAT,
                                                              ["batch", hkv, *dims])
    n = lambda name: f"{p}.{name}"
    mk = helper.make_node
    axis = lambda name, a: mk("Constant", [], [n(name)], value=helper.make_tensor(
        n(name), TensorProto.INT64, [1], [a]))
    nodes = [
        axis("last", -1), axis("second_last", -2),
        mk("Exp", [n("g_t")], [n("decay")]),
        mk("Unsqueeze", [n("decay"), n("last")], [n("decay_col")]),
        mk("Mul", [n("decay_col"), n("state_in")], [n("kept")]),
        mk("Unsqueeze", [n("k_t"), n("last")], [n("k_col")]),
        mk("Unsqueeze", [n("v_t"), n("second_last")], [n("v_row")]),
        mk("Mul", [n("k_col"), n("v_row")], [n("kv")]),
        mk("Add", [n("kept"), n("kv")], [n("state_out")]),
        mk("MatMul", [n("q_t"), n("state_out")], [n("o_t")]),
    ]
    inputs = [value("state_in", d, d), value("q_t", c.groups, d), value("k_t", d),
              value("v_t", d), value("g_t", d)]
    return helper.make_graph(nodes, f"{p}.step", inputs,
                             [value("state_out", d, d), value("o_t", c.groups, d)])


def _linear_attention_nodes(node: onnx.NodeProto, c: SpikingBrainConfig):
    """GLA(q, k, v, g) as one LinearAttention (opset 27, update_rule gated, per-key-dim decay,
    scale 1: q is already scaled), between packing [B, H, T, D] -> [B, T, H*D] and back."""
    p = node.output[0]
    inits = [_int64s(f"{p}.packed", [0, 0, -1]),
             _int64s(f"{p}.heads", [0, 0, c.q_heads, c.head_dim])]
    mk = helper.make_node
    nodes = []
    for x in node.input:
        nodes += [mk("Transpose", [x], [f"{p}.{x}.bthd"], perm=[0, 2, 1, 3]),
                  mk("Reshape", [f"{p}.{x}.bthd", f"{p}.packed"], [f"{p}.{x}.packed"])]
    q, k, v, g = (f"{p}.{x}.packed" for x in node.input)
    nodes += [
        mk("LinearAttention", [q, k, v, "", g], [f"{p}.packed_o", f"{p}.state"],
           update_rule="gated", q_num_heads=c.q_heads, kv_num_heads=c.kv_heads, scale=1.0),
        mk("Reshape", [f"{p}.packed_o", f"{p}.heads"], [f"{p}.o_bthd"]),
        mk("Transpose", [f"{p}.o_bthd"], [node.output[0]], perm=[0, 2, 1, 3]),
    ]
    return nodes, inits


def _set_opset(proto: onnx.ModelProto, opset: int) -> None:
    """Raise the default-domain opset import to at least `opset`, and the IR version to match."""
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, opset)
    proto.ir_version = helper.find_min_ir_version_for(proto.opset_import)


# -- checks and tools ------------------------------------------------------------------------------

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
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description="Export the SpikingBrain reference model to ONNX")
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    ap.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--form", default="parallel", choices=list(GLA_FORMS), help="GLA form")
    ap.add_argument("--swa", default="masked", choices=SWA_FORMS, help="SWA form")
    ap.add_argument("--ops", action="store_true", help="print the op type histogram")
    args = ap.parse_args(argv)
    path = export_onnx(args.config, args.output, args.opset, args.form, args.swa)
    print(path)
    if args.ops:
        for op, count in op_histogram(path).items():
            print(f"  {op:<16}{count}")


if __name__ == "__main__":
    main()
