"""Export forms of the reference model (sbc.models.export): GLA parallel | chunked | scan | la27,
SWA masked | attention. Each form must give the PyTorch logits; the op histograms show the form."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from sbc.cli import main as cli_main
from sbc.models import export
from sbc.models.export import export_onnx, op_histogram
from sbc.models.spikingbrain import build_model, get_config, gla_chunked, gla_recurrent, repeat_kv

# (form, swa): three exports (~10 s each) that cover every form; the Scan rewrite at opset 18
# is also checked on its own (test_core_rewrite_equals_recurrent).
FORMS = [("chunked", "masked"), ("scan", "attention"), ("la27", "masked")]


@pytest.fixture(scope="module", params=FORMS, ids="-".join)
def form_onnx(request, tmp_path_factory):
    """(GLA form, path) of the tiny model exported in each (form, swa), once per module."""
    form, swa = request.param
    path = tmp_path_factory.mktemp(form) / "m.onnx"
    return form, export_onnx("tiny", path, form=form, swa=swa)


def run_onnx(path_or_proto, feeds: dict, name: str):
    """onnxruntime, except for la27 (opset 27), which only onnx.reference runs."""
    if name == "la27":
        return ReferenceEvaluator(path_or_proto).run(None, feeds)
    if isinstance(path_or_proto, onnx.ModelProto):
        path_or_proto = path_or_proto.SerializeToString()
    return ort.InferenceSession(path_or_proto, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("seq", [7, 70])
def test_form_matches_torch(form_onnx, seq):
    """Logits within 1e-4 of PyTorch (parallel form) at batch 2. A spike count can flip where
    x / V_th is within float error of .5, and a GLA layer then carries the change to every later
    token (a suffix of rows off by ~0.1): these inputs have no such tie in any form."""
    name, path = form_onnx
    ids = np.random.default_rng(1000 + seq).integers(0, 256, size=(2, seq))
    with torch.no_grad():
        want = build_model("tiny")(torch.from_numpy(ids)).numpy()
    got = run_onnx(path, {"ids": ids}, name)[0]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def seq_seq_matmuls(proto: onnx.ModelProto) -> int:
    """MatMul nodes that read or write a [..., seq, seq] tensor (shape inference)."""
    proto = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in proto.graph.value_info}
    return sum(any(shapes.get(x, [])[-2:] == ["seq", "seq"] for x in [*n.input, *n.output])
               for n in proto.graph.node if n.op_type == "MatMul")


def test_form_ops(form_onnx):
    """The tiny model has 2 GLA and 2 SWA layers; each form shows in the op histogram, and
    no GLA layer has a T x T MatMul (the masked SWA layers have 2 each)."""
    name, path = form_onnx
    proto = onnx.load(path)
    hist = op_histogram(proto)
    opset = {o.domain: o.version for o in proto.opset_import}
    assert set(opset) == {""} and not {"GLA", "Loop"} & set(hist)  # no marker left behind
    if name == "chunked":  # CumSum within chunks and over chunk ends
        assert hist["CumSum"] == 4 and "Scan" not in hist and opset[""] == 18
        assert seq_seq_matmuls(proto) == 4
    elif name == "scan":  # with SWA as Attention: nothing T x T at all
        assert hist["Scan"] == 2 and hist["Attention"] == 2 and opset[""] == 23
        assert not {"CumSum", "Softmax"} & set(hist) and seq_seq_matmuls(proto) == 0
    elif name == "la27":
        assert hist["LinearAttention"] == 2 and hist["Softmax"] == 2 and opset[""] == 27
        assert not {"CumSum", "Scan"} & set(hist) and seq_seq_matmuls(proto) == 4
        assert hist["Expand"] == 4  # repeat_kv of SWA's k and v only: GLA reads KV heads


def test_form_dims_are_dynamic(form_onnx):
    """batch and seq stay symbolic in every form (export_onnx checks it too)."""
    proto = onnx.load(form_onnx[1])
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert dims(proto.graph.input[0]) == ["batch", "seq"]
    assert dims(proto.graph.output[0]) == ["batch", "seq", 256]


# -- the GLA core alone ----------------------------------------------------------------------------

def gla_inputs(t: int, hq: int = 4, hkv: int = 2, d: int = 16, decay: float = 0.03, seed=0):
    """q [2, hq, t, d]; k, v, g [2, hkv, t, d] with per-step log decays in [-decay, 0)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(2, h, t, d, generator=gen) for h in (hq, hkv))
    v = torch.randn(2, hkv, t, d, generator=gen)
    g = -decay * torch.rand(2, hkv, t, d, generator=gen).clamp(min=0.01)
    return q, k, v, g


def recurrent_gqa(q, k, v, g):
    """gla_recurrent with k, v, g repeated to q's heads."""
    groups = q.shape[1] // k.shape[1]
    return gla_recurrent(q, *(repeat_kv(x, groups) for x in (k, v, g)))


@pytest.mark.parametrize("t", [1, 7, 63, 64, 65, 200])
def test_chunked_equals_recurrent(t):
    q, k, v, g = (repeat_kv(x, 2) if i else x for i, x in enumerate(gla_inputs(t)))
    torch.testing.assert_close(gla_chunked(q, k, v, g), gla_recurrent(q, k, v, g),
                               rtol=1e-4, atol=1e-4)


def test_chunked_long_sequence():
    """T = 8192, where the parallel form's e^{-b} overflows (|b| up to ~120): the chunked form
    stays finite and equal to the recurrence; T = 4001 is not a multiple of the chunk."""
    for t in (4001, 8192):
        q, k, v, g = gla_inputs(t, hq=2, hkv=2)
        want = gla_recurrent(q, k, v, g)
        got = gla_chunked(q, k, v, g)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert torch.isinf(torch.exp(-g.cumsum(2))).any()  # what gla_parallel would compute


def test_chunked_strong_decay():
    """Per-step log decays down to -3 (e^{-b} of the parallel form would overflow in 30 steps)."""
    q, k, v, g = (repeat_kv(x, 2) if i else x for i, x in enumerate(gla_inputs(300, decay=3.0)))
    got = gla_chunked(q, k, v, g)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, gla_recurrent(q, k, v, g), rtol=1e-4, atol=1e-4)


def core_model(build, c) -> onnx.ModelProto:
    """The ONNX graph q, k, v, g -> GLA marker -> `build` (export's scan or la27 rewrite), at
    opset 18 (27 for la27)."""
    value = lambda name, heads: helper.make_tensor_value_info(
        name, TensorProto.FLOAT, ["batch", heads, "seq", c.head_dim])
    marker = helper.make_node("GLA", list("qkvg"), ["o"], domain=export.MARKER_DOMAIN)
    graph = helper.make_graph([marker], "gla", [value("q", c.q_heads)] + [
        value(n, c.kv_heads) for n in "kvg"], [value("o", c.q_heads)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(export.MARKER_DOMAIN, 1)])
    export._replace_markers(proto, build, c)
    if build is export._linear_attention_nodes:
        export._set_opset(proto, export.LINEAR_ATTENTION_OPSET)
    else:
        proto.ir_version = export.ORT_MAX_IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


@pytest.mark.parametrize("name, build", [("scan", export._scan_nodes),
                                         ("la27", export._linear_attention_nodes)])
def test_core_rewrite_equals_recurrent(name, build):
    """The Scan and LinearAttention rewrites alone (GQA 4 query / 2 KV heads) at T = 70."""
    c = get_config("tiny")
    q, k, v, g = gla_inputs(70, c.q_heads, c.kv_heads, c.head_dim)
    feeds = {n: x.numpy() for n, x in zip("qkvg", (q, k, v, g))}
    got = run_onnx(core_model(build, c), feeds, name)[0]
    np.testing.assert_allclose(got, recurrent_gqa(q, k, v, g).numpy(), rtol=1e-4, atol=1e-4)


# -- options -----------------------------------------------------------------------------------------

def test_bad_form_and_opset(tmp_path):
    with pytest.raises(ValueError, match="scan"):
        export_onnx("tiny", tmp_path / "m.onnx", form="loop")
    with pytest.raises(ValueError, match="opset >= 23"):
        export_onnx("tiny", tmp_path / "m.onnx", opset=18, swa="attention")


def test_cli_passes_the_forms(monkeypatch, tmp_path, capsys):
    """`sbc export --form --swa` reaches export_onnx (stubbed: no export here)."""
    calls = []
    monkeypatch.setattr(export, "export_onnx", lambda *a, **kw: calls.append((a, kw)) or a[1])
    assert cli_main(["export", "--config", "tiny", "--form", "scan", "--swa", "attention",
                     "-o", str(tmp_path / "x.onnx")]) == 0
    assert calls[0][1] == {"form": "scan", "swa": "attention"}
    assert "GLA scan, SWA attention" in capsys.readouterr().out
    assert cli_main(["export", "-o", str(tmp_path / "y.onnx")]) == 0
    assert calls[1][1] == {"form": "parallel", "swa": "masked"}


def test_sbc_fuses_and_runs_the_form(form_onnx):
    """sbc raises every GLA/SWA form to its fused ops (no Scan, no T x T attention, no chunks)
    and computes what the ONNX model computes."""
    import sbc
    name, path = form_onnx
    module = sbc.compile(path)
    ops = module.manifest["ops"]
    assert ops.get("LinearAttention") == 2 and ops.get("SlidingWindowAttention") == 2, ops
    assert not {"Scan", "CumSum", "GatherND"} & set(ops) and module.recurrent, ops
    ids = np.random.default_rng(1007).integers(0, 256, size=(2, 7))
    want = run_onnx(path, {"ids": ids}, name)[0]
    np.testing.assert_allclose(module.run({"ids": ids})["logits"], want, rtol=0, atol=1e-4)
