"""IR -> text. The parser (sbc.ir.parser) reads this text back.

    graph main(%ids: i64[batch, seq]) -> (%logits: f32[batch, seq, 256]) {
      param %embed: f32[256, 64]
      %x: f32[batch, seq, 64] = Gather(%embed, %ids) {axis = 0} loc("/embed/Gather")
      return %x as logits
    }

Parameters print their type only; their data travels beside the text (`params=` of the
parser), or, with `with_data=True`, follows it as a literal (`= tensor<f32[2]>[...]`), which
the parser reads back.
A graph attribute (a Scan body) prints as a nested graph, indented one level deeper:

      %h: f32[4], %ys: f32[seq, 4] = Scan(%h0, %xs) {body = graph body(%h: f32[4], ...) -> (...) {
        %h_next: f32[4] = Add(%h, %x)
        return %h_next as h_next, %h_next as y
      }, num_scan_inputs = 1}
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import numpy as np

from sbc.ir.dims import Sym
from sbc.ir.types import dtype_of

if TYPE_CHECKING:  # the graph prints itself through this module (Graph.__str__)
    from sbc.ir.graph import Graph, Node, Value

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./\-]*$")


def value_ref(v: Value | None) -> str:
    if v is None:
        return "none"
    return "%" + (v.name if _PLAIN_NAME.match(v.name) else json.dumps(v.name))


def format_attr(value) -> str:
    if hasattr(value, "nodes"):  # a Graph (a Scan body): lines after the first indented by the caller
        return print_graph(value).rstrip("\n")
    if isinstance(value, np.ndarray):
        return format_tensor(value)
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else json.dumps(str(value))
    if isinstance(value, (int, np.integer, Sym)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r}")


def format_tensor(array: np.ndarray) -> str:
    """tensor<i64[3]>[batch, seq, 64]; object arrays hold symbolic dims and print as i64."""
    dtype = "i64" if array.dtype == object else dtype_of(array)
    shape = ", ".join(str(d) for d in array.shape)
    flat = array.reshape(-1).tolist()
    if dtype == "bool":
        flat = [int(x) for x in flat]
    items = ", ".join(format_attr(float(x)) if dtype.startswith("f") else str(x) for x in flat)
    return f"tensor<{dtype}[{shape}]>[{items}]"


def format_node(node: Node) -> str:
    outs = ", ".join(f"{value_ref(v)}: {v.type}" for v in node.outputs)
    ins = ", ".join(value_ref(v) for v in node.inputs)
    text = f"{outs} = {node.op}({ins})"
    attrs = {k: v for k, v in node.attrs.items() if v is not None}  # None: "not given"
    if attrs:
        text += " {" + ", ".join(f"{k} = {format_attr(v)}" for k, v in attrs.items()) + "}"
    if node.name:
        text += f" loc({json.dumps(node.name)})"
    return text


def print_graph(graph: Graph, with_data: bool = False) -> str:
    sig_in = ", ".join(f"{value_ref(v)}: {v.type}" for v in graph.inputs)
    sig_out = ", ".join(f"{value_ref(v)}: {v.type}" for v in graph.outputs)
    lines = [f"graph {graph.name}({sig_in}) -> ({sig_out}) {{"]
    lines += [f"  param {value_ref(p)}: {p.type}" + (f" = {format_tensor(p.data)}" if with_data else "")
              for p in graph.params]
    lines += ["  " + format_node(n).replace("\n", "\n  ") for n in graph.nodes]
    rets = ", ".join(f"{value_ref(v)} as {json.dumps(name) if not _PLAIN_NAME.match(name) else name}"
                     for v, name in zip(graph.outputs, graph.output_names))
    lines += [f"  return {rets}", "}"]
    return "\n".join(lines) + "\n"
