"""Op declarations, grouped by kind. Importing this package registers every op."""

from sbc.ir.ops import (  # noqa: F401
    attention, control_flow, elementwise, linear_attention, nn, reduce, shape, spike,
)
