"""fuse-spike-neurons: the adaptive-threshold neuron as exporters write it -> SpikeEncode.

    v = Clip(Div(ReduceMean(Abs(x), axes=[-1], keepdims=1), k), lo, hi)
    Mul(Round(Div(x, v)), v)
        -> counts, scale = SpikeEncode(x) {k, lo, hi}
           Mul(Cast(counts, f32), scale)

Variants: Mul by 1/k instead of Div by k (k_form = "mul", the constant kept as written),
Max/Min (either order) instead of Clip, the final Mul's operands in either order. The
dequantising Mul keeps everything downstream unchanged and bit-identical: SpikeEncode
computes V_th op by op as the exported ops do, and counts * V_th is the same float product.
Other uses of the Round (counts as floats) and of v are pointed at the new values too.

The counts dtype is the narrowest signed integer that holds every count: |x / V_th| <= k * D
(D = the row length) because |x_i| <= D * mean|x| and the clamp only raises a small V_th. (A
V_th clamped at hi, mean|x| > k * 1e4, is the one case where counts saturate instead.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.passes.base import (Miss, Pass, PassResult, RewriteRule, apply_rules, producer,
                              register_pass, scalar)
from sbc.passes.dce import DeadCodeElimination

COUNT_DTYPES = {"i8": 127, "i16": 32767, "i32": 2**31 - 1}  # dtype -> largest count it holds


@dataclass
class Neuron:
    """The parts of one matched neuron."""
    x: Value
    threshold: Value  # v, the clamped V_th
    rounded: Value  # Round's output: the counts as floats
    k: float
    k_form: str
    lo: float
    hi: float


class SpikeNeuron(RewriteRule):
    """Mul(Round(Div(x, v)), v) with v the clamped mean-|x| threshold -> SpikeEncode."""
    ops = ("Mul",)

    def __init__(self, count_dtype: str = "auto"):
        self.count_dtype = count_dtype

    def match(self, node: Node) -> Neuron | Miss:
        """The neuron rooted at this Mul, or the sentence saying why there is none."""
        for rounded_value, v in (node.inputs, node.inputs[::-1]):
            if producer(rounded_value, "Round", "Floor", "Ceil") is not None:
                break
        else:
            return Miss("neither operand is produced by Round")
        quantiser = rounded_value.producer
        if quantiser.op != "Round":
            return Miss(f"the counts come from {quantiser.op}, not Round (round half to even)")
        div = producer(quantiser.inputs[0], "Div")
        if div is None or div.inputs[1] is not v:
            return Miss("Round's input is not Div(x, v) with v the Mul's other operand")
        x = div.inputs[0]
        if not x.dtype.startswith("f"):
            return Miss(f"x is {x.type}, not a float tensor")
        clamp = self.match_clamp(v)
        if isinstance(clamp, str):
            return Miss(clamp)
        scaled, lo, hi = clamp
        mean = self.match_scaling(scaled)
        if isinstance(mean, str):
            return Miss(mean)
        mean_value, k, k_form = mean
        why = self.check_mean(mean_value, x)
        if why:
            return Miss(why)
        return Neuron(x, v, rounded_value, k, k_form, lo, hi)

    @staticmethod
    def match_clamp(v: Value) -> tuple[Value, float, float] | str:
        """v = Clip(m, lo, hi), Min(Max(m, lo), hi) or Max(Min(m, hi), lo) -> (m, lo, hi)."""
        clip = producer(v, "Clip")
        if clip is not None:
            lo, hi = (scalar(clip.inputs[i]) if len(clip.inputs) > i else None for i in (1, 2))
            if lo is None or hi is None:
                return "the threshold's Clip bounds are not both compile-time scalars"
            return clip.inputs[0], lo, hi
        outer = producer(v, "Min", "Max")
        if outer is None or len(outer.inputs) != 2:
            return "the threshold is not clamped by Clip or Max/Min"
        inner_op = "Max" if outer.op == "Min" else "Min"
        for inner_value, bound in (outer.inputs, outer.inputs[::-1]):
            inner = producer(inner_value, inner_op)
            if inner is not None and len(inner.inputs) == 2 and scalar(bound) is not None:
                for m, other in (inner.inputs, inner.inputs[::-1]):
                    if scalar(other) is not None and scalar(m) is None:
                        lo, hi = (scalar(other), scalar(bound)) if inner_op == "Max" else \
                            (scalar(bound), scalar(other))
                        return m, lo, hi
        return f"the threshold's {outer.op} is not {outer.op}({inner_op}(m, bound), bound)"

    @staticmethod
    def match_scaling(scaled: Value) -> tuple[Value, float, str] | str:
        """Div(mean, k) -> (mean, k, "div"); Mul(mean, c) or Mul(c, mean) -> (mean, c, "mul")."""
        node = producer(scaled, "Div", "Mul")
        if node is None:
            return "the clamped value is not the mean divided by k (Div) or times 1/k (Mul)"
        pairs = [node.inputs] if node.op == "Div" else [node.inputs, node.inputs[::-1]]
        for mean, k in pairs:
            if producer(mean, "ReduceMean") is not None:
                if scalar(k) is None or k.dtype != scaled.dtype:
                    return (f"k ({'%' + k.name}) is not a compile-time scalar of the mean's "
                            f"dtype (one k per neuron, not per row or channel)")
                return mean, scalar(k), node.op.lower()
        return f"the {node.op} does not scale a ReduceMean"

    @staticmethod
    def check_mean(mean_value: Value, x: Value) -> str | None:
        mean = mean_value.producer
        abs_node = producer(mean.inputs[0], "Abs")
        if abs_node is None or abs_node.inputs[0] is not x:
            return "the mean is not over |x| (no Abs of the Div's x)"
        axes = mean.inputs[1] if len(mean.inputs) > 1 else None
        rank = x.type.rank
        known = None if axes is None or axes.data is None else \
            sorted({int(a) % rank for a in np.asarray(axes.data).reshape(-1)})
        if known != [rank - 1]:
            return f"the mean is over axes {known if known is not None else 'all'}, not the last axis"
        if not mean.attrs["keepdims"]:
            return "the mean does not keep the reduced axis (keepdims = 0)"
        return None

    def counts_dtype(self, neuron: Neuron) -> str:
        if self.count_dtype != "auto":
            return self.count_dtype
        row = neuron.x.shape[-1]
        if not isinstance(row, int):
            return "i32"
        k_eff = neuron.k if neuron.k_form == "div" else 1 / neuron.k
        bound = math.floor(k_eff * row * (1 + 1e-3)) + 1  # margin: mean|x| rounds in float
        return next((d for d, top in COUNT_DTYPES.items() if bound <= top), "i32")

    def rewrite(self, graph: Graph, node: Node, neuron: Neuron) -> None:
        attrs = {"k": neuron.k, "k_form": neuron.k_form, "lo": neuron.lo, "hi": neuron.hi,
                 "dtype": self.counts_dtype(neuron)}
        name = neuron.rounded.producer.name or node.name
        counts, scale = graph.add("SpikeEncode", [neuron.x], attrs, name=name,
                                  outputs=["spikes", "v_th"]).outputs
        as_float = graph.add1("Cast", counts, to=neuron.x.dtype, name=name)
        graph.replace_uses(node.outputs[0], graph.add1("Mul", as_float, scale, name=node.name))
        graph.replace_uses(neuron.rounded, as_float)  # e.g. counts read as an output
        graph.replace_uses(neuron.threshold, scale)


@register_pass
class FuseSpikeNeurons(Pass):
    name = "fuse-spike-neurons"

    @dataclass
    class Options:
        # "auto": the narrowest exact dtype (see the module docstring); i8/i16/i32 force one
        # (counts beyond its range saturate)
        count_dtype: str = "auto"

    def run(self, graph: Graph) -> PassResult:
        modified = apply_rules(graph, [SpikeNeuron(self.options.count_dtype)])
        if modified:  # the matched chains (Abs ... Round) are dead now
            DeadCodeElimination().run(graph)
        return PassResult(graph, modified)


def dequantised_spikes(a: Value) -> tuple[Value, Value] | str:
    """(counts, scale) when `a` is Mul(Cast(counts), scale) of one SpikeEncode (the form this
    pass writes), else why not: what the weight passes (quantize-weights-int8, spike-matmul)
    recognise as a spiking matmul input."""
    mul = producer(a, "Mul")
    if mul is None:
        return "the input is not a Mul (counts * scale) of SpikeEncode's outputs"
    for cast_value, scale in (mul.inputs, mul.inputs[::-1]):
        cast = producer(cast_value, "Cast")
        encode = producer(scale, "SpikeEncode")
        if cast is not None and encode is not None and scale is encode.outputs[1] \
                and cast.inputs[0] is encode.outputs[0]:
            return encode.outputs[0], scale
    return "the input is not Mul(Cast(counts), scale) of one SpikeEncode"
