"""spike-sparsity: per layer, the dense integer kernel or zero-tile skipping, from calibration.

    SpikeMatMul(counts, ...) -> SpikeMatMul(counts, ..., kernel="dense" | "skip_zero_tiles")

The counts' measured tile density (sbc.passes.calibration: the fraction of 6-row x 128-channel
tiles of the counts that hold a nonzero, at the SpikeEncode that produces them) is compared with
the break-even density for the layer's shape: fixed (`break-even`), or measured on this machine
by `measure` (sbc.compile gives codegen.spike_breakeven.break_even, which times both CPU kernels
on synthetic counts); below it the layer skips zero tiles. Both kernels give
bit-identical results, so the choice changes speed only. Without calibration data for a layer
(no stats, a site not measured, another tile size) or with f32 weights (no skipping kernel)
the layer stays dense. After `run`, `choices` lists per SpikeMatMul: layer, site, shape, tile
The facts it returns: "kernels", per SpikeMatMul its layer, site, shape, tile density,
break-even, kernel and why; "break_even", the timings behind them, one per shape (sbc.compile
stores both in manifest["spike_stats"]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sbc.passes.calibration import TILE, read_stats
from sbc.ir import Graph, Node
from sbc.passes.base import Pass, PassResult, register_pass

THROUGH = ("Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten")  # counts unchanged


def spike_site(node: Node) -> str | None:
    """The name of the SpikeEncode whose counts a SpikeMatMul takes, or None."""
    value = node.inputs[0]
    while value.producer is not None and value.producer.op in THROUGH:
        value = value.producer.inputs[0]
    producer = value.producer
    return producer.name if producer is not None and producer.op == "SpikeEncode" else None


@register_pass
class SpikeSparsity(Pass):
    name = "spike-sparsity"

    @dataclass
    class Options:
        stats_file: str = ""  # calibration JSON (`sbc calibrate`) or an artifact with stats
        stats: dict = field(default_factory=dict)  # the same as a dict (what sbc.compile gives)
        rows: int = 512  # token rows the break-even is measured at: a session's prefill chunk
        break_even: float = -1.0  # a fixed break-even density instead of measuring (< 0: measure)
        # (rows, k, n, group, counts dtype) -> {"break_even": density, ...timings}: how the
        # break-even is measured when not fixed (it builds and times kernels: codegen's job)
        measure: object = None

    def run(self, graph: Graph) -> PassResult:
        sites = {s["name"]: s for s in self._stats().get("sites", [])}
        measurements: list[dict] = []  # the break-even timings behind the choices, one per shape
        choices, modified = [], False
        for node in [n for n in graph.nodes if n.op == "SpikeMatMul"]:
            choice = self.choose(node, sites.get(spike_site(node)), measurements)
            modified |= node.attrs["kernel"] != choice["kernel"]
            node.attrs["kernel"] = choice["kernel"]  # the output type does not depend on it
            choices.append(choice)
        return PassResult(graph, modified, {"kernels": choices, "break_even": measurements})

    def _stats(self) -> dict:
        if self.options.stats:
            return self.options.stats
        if self.options.stats_file:
            return read_stats(self.options.stats_file)
        return {}

    def choose(self, node: Node, site: dict | None, measurements: list[dict]) -> dict:
        k, n = int(node.inputs[0].shape[-1]), int(node.outputs[0].shape[-1])
        choice = {"layer": node.name or node.outputs[0].name,
                  "site": site["name"] if site else None,
                  "shape": [self.options.rows, k, n], "weights": node.inputs[2].dtype,
                  "tile_density": None, "break_even": None, "kernel": "dense"}
        reason = self._why_dense(node, site)
        if reason:
            return dict(choice, why=reason)
        density, even = site["tile_density"], self._break_even(node, k, n, measurements)
        skip = density < even
        return dict(choice, tile_density=density, break_even=even,
                    kernel="skip_zero_tiles" if skip else "dense",
                    why=f"tile density {density:.3f} {'<' if skip else '>='} break-even {even:.3f}")

    def _why_dense(self, node: Node, site: dict | None) -> str | None:
        if node.inputs[2].dtype != "i8":
            return "f32 weights: no zero-tile skipping kernel"
        if site is None or "tile_density" not in site:
            return "no calibration data for its spike counts"
        if list(site.get("tile", ())) != [TILE[0], node.attrs["group"]]:
            return f"calibrated at tile {site['tile']}, the kernel's group is {node.attrs['group']}"
        if self.options.break_even < 0 and self.options.measure is None:
            return "no break-even density to compare with (give break-even=D; sbc.compile measures it)"
        return None

    def _break_even(self, node: Node, k: int, n: int, measurements: list[dict]) -> float:
        if self.options.break_even >= 0:
            return self.options.break_even
        measured = self.options.measure(self.options.rows, k, n, node.attrs["group"],
                                        node.inputs[0].dtype)
        if measured not in measurements:
            measurements.append(measured)
        return measured["break_even"]
