"""The official ONNX node conformance cases (`onnx.backend.test`), compiled and run on cpu.

Every case whose ops sbc supports runs through import -> passes -> TVM build -> run and is
compared with the case's expected outputs at the case's own tolerances. Building one TVM module
per case would take many minutes, so the cases of one op are merged into one graph (disjoint
union, names prefixed) and compiled once; a failing batch is bisected down to the failing cases
so a failure names them. Cases sbc deliberately does not run are listed in EXCLUDED with why.
"""

from __future__ import annotations

import collections
import functools
import re

import numpy as np
import onnx
import pytest

import sbc
from sbc.errors import SbcError
from sbc.frontend import import_onnx
from sbc.frontend.onnx_import import MIN_OPSET
from sbc.ir import Graph, all_ops
from sbc.ir.interpreter import run as interpret
from sbc.passes import run_passes

# case name (regex, full match) -> why sbc does not run it
EXCLUDED: dict[str, str] = {
    "test_wrap_pad": "Pad mode 'wrap' is not implemented (constant, edge and reflect are)",
    "test_linear_attention.*fp16.*": "the cpu LinearAttention kernel is float32 only",
    "test_top_k.*": "TopK is declared (interpreter, shape inference) but has no cpu lowering yet",
    # Scan has no cpu lowering by design: fuse-linear-attention raises Scan bodies that are
    # linear attention (the *_expanded LinearAttention cases run here) to LinearAttention
    "test_scan.*": "a Scan that is not linear attention (a running sum) has no cpu lowering",
}
# op declared in sbc IR (interpreter, inference) but deliberately without a cpu lowering -> why;
# a case using one is not selected (codegen would reject it by design)
NOT_LOWERED: dict[str, str] = {}
SUPPORTED_DTYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                    onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}

EXPANDED_BY_FRONTEND = {"Attention", "RotaryEmbedding"}
EXPANDED_BATCH = 25  # function-expanded cases mix ops; they are batched by count instead


def _excluded(case) -> str | None:
    """Why sbc does not run this case, or None."""
    opset = {o.domain or "": o.version for o in case.model.opset_import}.get("", 0)
    if opset < MIN_OPSET:
        return f"opset {opset} < {MIN_OPSET}: pre-13 forms (e.g. 2-D-coerced Softmax) are not supported"
    for v in list(case.model.graph.input) + list(case.model.graph.output):
        if not v.type.HasField("tensor_type") or v.type.tensor_type.elem_type not in SUPPORTED_DTYPES:
            return f"value '{v.name}' has a dtype or type sbc does not support"
    for pattern, why in EXCLUDED.items():
        if re.fullmatch(pattern, case.name):
            return why
    for node in case.model.graph.node:
        if node.op_type in NOT_LOWERED:
            return NOT_LOWERED[node.op_type]
    return None


@functools.lru_cache(maxsize=1)
def supported_cases() -> dict[str, list]:
    """Cases whose ops are all declared by sbc, grouped into batches by their op."""
    from onnx.backend.test.loader import load_node_model_tests
    # ops without a native declaration that the frontend imports via their ONNX function body
    supported = set(all_ops()) | EXPANDED_BY_FRONTEND
    groups: dict[str, list] = collections.defaultdict(list)
    expanded = []
    for case in load_node_model_tests():
        ops = {n.op_type for n in case.model.graph.node}
        if not ops <= supported or _excluded(case):
            continue
        if len(case.model.graph.node) == 1:
            groups[case.model.graph.node[0].op_type].append(case)
        else:
            expanded.append(case)
    for i in range(0, len(expanded), EXPANDED_BATCH):
        groups[f"expanded-{i // EXPANDED_BATCH}"] = expanded[i:i + EXPANDED_BATCH]
    return dict(groups)


def _array(x) -> np.ndarray:
    return onnx.numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def _feeds_and_expected(case, prefix: str):
    inputs, outputs = case.data_sets[0]
    graph_inputs = [i.name for i in case.model.graph.input
                    if i.name not in {t.name for t in case.model.graph.initializer}]
    feeds = {f"{prefix}{n}": _array(a) for n, a in zip(graph_inputs, inputs)}
    expected = {f"{prefix}{o.name}": _array(a) for o, a in zip(case.model.graph.output, outputs)}
    return feeds, expected


def merge(graphs: list[tuple[str, Graph]]) -> Graph:
    """Disjoint union of graphs; every name gets its graph's prefix."""
    merged = Graph("conformance")
    for prefix, g in graphs:
        env = {id(v): merged.add_input(prefix + v.name, v.type) for v in g.inputs}
        env.update({id(p): merged.add_param(prefix + p.name, p.data) for p in g.params})
        for node in g.nodes:
            new = merged.add(node.op, [None if v is None else env[id(v)] for v in node.inputs],
                             node.attrs, name=prefix + node.name,
                             outputs=[prefix + v.name for v in node.outputs])
            env.update({id(a): b for a, b in zip(node.outputs, new.outputs)})
        merged.set_outputs(merged.outputs + [env[id(v)] for v in g.outputs],
                           merged.output_names + [prefix + n for n in g.output_names])
    return merged


def _compile_and_check(batch: list[tuple[str, Graph, dict, object]]) -> dict[str, str]:
    """Compile the merged batch and compare; returns {case name: failure} (bisecting)."""
    try:
        module = sbc.compile(merge([(p, g) for p, g, _, _ in batch]))
        feeds = {prefix + k: v for prefix, _, f, _ in batch for k, v in f.items()}
        got = module.run(feeds)
    except Exception as e:  # noqa: BLE001 - any failure is bisected to the cases causing it
        if len(batch) == 1:
            return {batch[0][3].name: f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        half = len(batch) // 2
        return {**_compile_and_check(batch[:half]), **_compile_and_check(batch[half:])}
    failures = {}
    for prefix, _, _, case in batch:
        _, want = _feeds_and_expected(case, prefix)
        for name, ref in want.items():
            # fp16 results may differ by an ulp or two where rounding happens at other points
            rtol, atol = (max(case.rtol, 2e-3), max(case.atol, 1e-3)) if ref.dtype == np.float16 \
                else (case.rtol, case.atol)
            try:
                np.testing.assert_allclose(got[name], ref, rtol=rtol, atol=atol)
                assert got[name].dtype == ref.dtype, f"dtype {got[name].dtype} != {ref.dtype}"
            except AssertionError as e:
                failures[case.name] = f"output {name[len(prefix):]}: {str(e).strip()[:300]}"
    return failures


def _import_case(case) -> tuple[Graph, dict]:
    """Import a case; if inputs must be compile-time values (axes, shapes, pads, Range bounds),
    they are frozen to the case's data, as a deployed model holds them as initializers."""
    feeds, expected = _feeds_and_expected(case, "")
    try:
        graph = import_onnx(case.model)
    except SbcError as e:
        if "known at compile time" not in str(e):
            raise
        frozen = dict(feeds)  # e.g. axes, pads, Range bounds: all of a case's inputs are data
        graph = import_onnx(case.model, constants=frozen)
        feeds = {k: v for k, v in feeds.items() if k not in frozen}
    ref = interpret(graph, feeds)  # the oracle agrees with ONNX before anything is compiled
    for name, want in expected.items():
        np.testing.assert_allclose(ref[name], want, rtol=case.rtol, atol=case.atol,
                                   err_msg=f"sbc reference interpreter differs on {case.name}")
    return run_passes(graph), feeds


@pytest.mark.parametrize("group", sorted(supported_cases()))
def test_conformance(group):
    failures, batch = {}, []
    for i, case in enumerate(supported_cases()[group]):
        try:
            batch.append((f"c{i}.", *_import_case(case), case))
        except (SbcError, AssertionError) as e:
            failures[case.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    if batch:
        failures.update(_compile_and_check(batch))
    assert not failures, "\n".join(f"{k}: {v}" for k, v in sorted(failures.items()))


def test_coverage_does_not_silently_shrink():
    """The exclusion rules must not quietly swallow the suite."""
    assert sum(len(cases) for cases in supported_cases().values()) >= 700
