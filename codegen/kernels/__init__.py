"""Hand-written TIR kernels for the ops whose best loop structure TE cannot express (a
recurrence over T, an online softmax over a ring buffer). Each module builds a PrimFunc for one
node from its checked dims; `codegen.lower` registers them as kernel lowerings."""

from sbc.codegen.kernels.linear_attention import linear_attention_kernel
from sbc.codegen.kernels.sliding_window import sliding_window_kernel
from sbc.codegen.lower import kernel_lowering
from sbc.errors import UnsupportedError
from sbc.ir.ops.linear_attention import linear_attention_dims, sliding_window_dims


def _require_f32(node) -> None:
    dtypes = {v.dtype for v in node.inputs if v is not None and v.dtype != "i64"}
    if dtypes != {"f32"}:
        raise UnsupportedError(f"{node.where()}: the cpu {node.op} kernel takes float32, "
                               f"got {', '.join(sorted(dtypes))}")


def _input(node, i):
    return node.inputs[i] if i < len(node.inputs) else None


@kernel_lowering("LinearAttention")
def _(node):
    _require_f32(node)
    d = linear_attention_dims(node)
    return linear_attention_kernel(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"], d["decay"],
                                   d["beta"], past=_input(node, 3) is not None)


@kernel_lowering("SlidingWindowAttention")
def _(node):
    _require_f32(node)
    d = sliding_window_dims(node)
    position = _input(node, 5)
    return sliding_window_kernel(d["hq"], d["hkv"], d["d"], d["dv"], d["window"], d["scale"],
                                 d["past"], None if position is None else tuple(position.shape))
