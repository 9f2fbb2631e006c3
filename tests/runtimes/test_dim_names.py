"""The tiny model exported with its dims named as other exporters name them (T, sequence_length,
dynamo's s0/s1): sbc finds the sequence axis from the graph, so it is made recurrent, sessions
and `sbc generate` stream it, and its memory certificate is the one of the `seq` export."""

import numpy as np
import onnx
import pytest

import sbc
from sbc.cli import main

IDS = np.random.default_rng(5).integers(0, 256, size=(2, 24), dtype=np.int64)
# (seq, batch) renamings; dynamo numbers its dims, so the batch may be s1 (or s0)
RENAMES = [{"seq": "T"}, {"seq": "sequence_length"}, {"seq": "s0", "batch": "s1"}]


def rename_dims(src, dst, names: dict[str, str]) -> str:
    """The ONNX model with its dim_params renamed everywhere (inputs, outputs, value_info)."""
    model = onnx.load(str(src))
    g = model.graph
    for info in [*g.input, *g.output, *g.value_info]:
        for d in info.type.tensor_type.shape.dim:
            d.dim_param = names.get(d.dim_param, d.dim_param)
    onnx.save(model, str(dst))
    return str(dst)


@pytest.fixture(scope="module", params=RENAMES, ids=lambda names: names["seq"])
def renamed(request, tiny_onnx, tmp_path_factory):
    """(renaming, compiled module, artifact path)."""
    work = tmp_path_factory.mktemp("renamed")
    module = sbc.compile(rename_dims(tiny_onnx, work / "tiny.onnx", request.param))
    module.save(work / "tiny.sbc")
    return request.param, module, work / "tiny.sbc"


@pytest.fixture(scope="module")
def whole(tiny_module):
    return tiny_module.run({"ids": IDS})["logits"]


def test_recurrent_with_the_certificate_of_the_seq_export(renamed, tiny_module):
    names, module, _ = renamed
    recurrent, seq_named = module.manifest["recurrent"], tiny_module.manifest["recurrent"]
    assert recurrent["sequence_symbol"] == names["seq"] and seq_named["sequence_symbol"] == "seq"
    assert recurrent["state"] == seq_named["state"]
    assert recurrent["prefill_program"]  # last-position fired
    assert str(module.inputs[0][1]) == f"i64[{names.get('batch', 'batch')}, {names['seq']}]"
    cert, expected = recurrent["memory_certificate"], seq_named["memory_certificate"]
    assert not cert["depends_on_sequence_length"]
    for key in ("state", "decode_buffers"):
        assert [(b["name"], b["bytes_at_batch_1"]) for b in cert[key]] == \
               [(b["name"], b["bytes_at_batch_1"]) for b in expected[key]]


def test_prefill_then_decode_equals_the_whole_run(renamed, whole):
    _, module, _ = renamed
    np.testing.assert_allclose(module.run({"ids": IDS})["logits"], whole, atol=1e-5)
    session = module.session(batch=2, chunk=7)
    np.testing.assert_allclose(session.prefill(IDS[:, :17]), whole[:, 16], atol=1e-4)
    for t in range(17, 24):  # RoPE angles follow the session's position
        np.testing.assert_allclose(session.decode(IDS[:, t]), whole[:, t], atol=1e-4)
    assert session.position == 24


def test_generate_from_the_cli(renamed, tiny_module, capsys):
    _, _, artifact = renamed
    code = main(["generate", str(artifact), "--prompt-ids", "1,2,3,4,5", "-n", "6", "--chunk", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = tiny_module.session().generate(np.array([[1, 2, 3, 4, 5]]), 6)[0]
    assert out.strip() == ",".join(str(t) for t in expected)
    assert "(position 10)" in err


@pytest.mark.parametrize("positions", ["input", "hf"])
def test_sessions_give_position_ids(positions):
    """Positions from an input `position_ids` are filled in by the session (the caller passes
    them to module.run); from arange(T).unsqueeze(0).expand(..) they follow `position` inside."""
    from tests.passes.helpers import sym
    from tests.passes.test_to_recurrent import mixer_graph
    graph = mixer_graph(batch=sym("s0"), seq=sym("sequence_length"), positions=positions, tokens=True)
    module = sbc.compile(graph)
    assert module.manifest["recurrent"]["sequence_symbol"] == "sequence_length"
    ids = IDS[:, :11] % 32
    given = {"position_ids": np.tile(np.arange(11), (2, 1))} if positions == "input" else {}
    whole = module.run({"ids": ids, **given})["y"]
    session = module.session(batch=2, chunk=3)
    np.testing.assert_allclose(session.prefill(ids[:, :8]), whole[:, 7], atol=1e-5)
    for t in range(8, 11):
        np.testing.assert_allclose(session.decode(ids[:, t]), whole[:, t], atol=1e-5)
