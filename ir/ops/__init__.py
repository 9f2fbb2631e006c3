"""Op declarations, grouped by kind. Importing this package registers every op."""

from sbc.ir.ops import elementwise, nn, reduce, shape  # noqa: F401
