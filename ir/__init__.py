"""sbc IR: a typed SSA graph with symbolic shapes, an op registry, verifier, text form and
reference interpreter."""

from sbc.ir.dims import Dim, Sym, SymbolicError, parse_dim
from sbc.ir.graph import Graph, Node, Value
from sbc.ir.registry import Attr, OpDef, OpError, all_ops, get_op, op
from sbc.ir.types import DTYPES, SignatureError, TensorType, dtype_of, numpy_dtype, type_of
from sbc.ir import ops  # noqa: F401,E402  (registers every op before anything looks one up)

__all__ = [
    "Attr", "DTYPES", "Dim", "Graph", "Node", "OpDef", "OpError", "SignatureError", "Sym",
    "SymbolicError", "TensorType", "Value", "all_ops", "dtype_of", "get_op", "numpy_dtype", "op",
    "parse_dim", "type_of",
]
