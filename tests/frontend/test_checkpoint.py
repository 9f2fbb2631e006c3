"""SpikingBrain release checkpoint folders (frontend/checkpoint.py): compiled logits and greedy
tokens against an independent reference (tests/frontend/checkpoints.py: float64 torch from
CONTEXT.md's math, reading the files through safetensors' own loader), the window
conventions, the ONNX export, and the one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import sbc
from sbc.cli import main
from sbc.frontend import import_checkpoint
from sbc.ir.interpreter import run as interpret
from sbc.ir.types import numpy_dtype
from tests.frontend.checkpoints import (Margins, Tiny, reference_greedy, reference_logits,
                                        write_checkpoint)
from tests.test_bad_input import assert_one_line_error

TOL = 1e-4
# Spike counts are round(x / V_th): where x / V_th lies within float rounding of k + 0.5,
# float32 (sbc) and float64 (the reference) may legitimately differ by one count. Inputs are
# chosen so that every rounding in the reference is at least this far from a boundary; then
# all logits must agree to TOL (CONTEXT.md: account for Round, never loosen the tolerance).
CLEAR_MARGIN = 1e-5


def ids_for(seed: int, batch: int, length: int, vocab: int = Tiny().vocab) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


def unambiguous(folder, batch, length, greedy_steps=0):
    """The first seeded ids (and, with greedy_steps, the reference's greedy tokens) whose
    spike roundings are all CLEAR_MARGIN from a boundary in the reference."""
    for seed in range(20):
        ids = ids_for(seed, batch, length)
        tokens = reference_greedy(folder, ids, greedy_steps) if greedy_steps else []
        full = np.concatenate([ids, np.array([tokens], np.int64)], 1) if tokens else ids
        margins = Margins(full.shape)
        reference_logits(folder, full, margins=margins)
        if margins.at.min() > CLEAR_MARGIN:
            return ids, tokens
    raise AssertionError("no seed in 0..19 gives spike roundings clear of float rounding")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The plain (hf_7B_model) variant, bf16, sharded with an index, compiled for cpu."""
    folder = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "plain", variant="plain",
                              dtype="bf16", shards=2)
    # a (tiny) BPE tokenizer beside the weights, as the release folder has one
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({"a": 0, "b": 1, "ab": 2, "c": 3}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\na b\n")
    return folder, sbc.compile(folder, target="cpu")


@pytest.fixture(scope="module")
def w8aspike(tmp_path_factory):
    """The W8ASpike variant, f32 storage, one file, compiled for cpu."""
    folder = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "w8", variant="w8aspike",
                              dtype="f32", seed=1)
    return folder, sbc.compile(folder, target="cpu")


# -- numbers -----------------------------------------------------------------------------------

def test_plain_logits_match_reference(plain):
    folder, module = plain
    ids = ids_for(0, 2, 13)  # longer than the window (4 keys + 1)
    got = module.run({"ids": ids})["logits"]
    assert got.shape == (2, 13, Tiny().vocab) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_logits(folder, ids), rtol=TOL, atol=TOL)
    assert module.manifest["source"]["name"] == "plain"
    assert module.manifest["recurrent"]["state"]  # GLA state and SWA windows: a session runs it


def test_checkpoint_tokenizer_is_stored(plain):
    _, module = plain
    assert module.manifest["tokenizer"]["files"] == ["merges.txt", "vocab.json"]


def test_plain_greedy_generation_matches_reference(plain):
    folder, module = plain
    prompt = ids_for(3, 1, 5)
    tokens = module.session(batch=1).generate(prompt, max_new_tokens=8)
    assert list(np.asarray(tokens).reshape(-1)[-8:]) == reference_greedy(folder, prompt, 8)


def test_w8aspike_logits_match_release_fake_quant(w8aspike):
    """Spiked inputs, the checkpoint's own int8 grid (its scales are absmax / 100, so a
    re-quantisation to absmax / 127 would not match), raw unspiked down projection, SWA query
    spikes and int8 K/V, all as integer SpikeMatMuls."""
    folder, module = w8aspike
    ops = module.manifest["ops"]
    # per layer q, k, v, o, MLP gate, up (6 x 4) and the 2 GLA gates; down and lm_head stay float
    assert ops["SpikeMatMul"] == 26 and ops["MatMulPacked"] == 5
    ids, _ = unambiguous(folder, 2, 12)
    got = module.run({"ids": ids})["logits"]
    np.testing.assert_allclose(got, reference_logits(folder, ids), rtol=TOL, atol=TOL)


def test_w8aspike_greedy_generation_matches_reference(w8aspike):
    folder, module = w8aspike
    prompt, tokens = unambiguous(folder, 1, 5, greedy_steps=6)
    got = module.session(batch=1).generate(prompt, max_new_tokens=6)
    assert list(np.asarray(got).reshape(-1)[-6:]) == tokens


def test_int8_grid_is_the_checkpoints(w8aspike):
    """The int8 weights are round(w / scale) with the checkpoint's scales, per 128 inputs."""
    from safetensors.numpy import load_file
    folder, _ = w8aspike
    graph = import_checkpoint(folder)
    params = {p.name: p.data for p in graph.params}
    raw = load_file(os.path.join(folder, "model.safetensors"))
    name = "model.layers.1.attn.q_proj"
    w, s = raw[name + ".weight"], raw[name + ".weight_quantizer.scales"]
    grid = np.round(w.reshape(w.shape[0], -1, 128) / s).reshape(w.shape)
    np.testing.assert_array_equal(params[name + ".weight"], grid.T.astype(np.int8))
    np.testing.assert_array_equal(params[name + ".weight_quantizer.scales"], s[..., 0].T)


def test_bf16_weights_are_never_held_as_f32(plain):
    """A bf16 checkpoint stays bf16: its weight matrices (the embedding, every projection,
    packed, and the LM head) are bf16 params, widened inside the kernels that read them; only
    vectors (norm weights, biases) are f32. So the compiled params take no more bytes than the
    checkpoint's files, where f32 copies would take twice as many."""
    folder, module = plain
    matrices = {n: a for n, a in module.params.items() if a.ndim >= 2 and a.size >= 256}
    assert matrices and all(a.dtype == numpy_dtype("bf16") for a in matrices.values()), \
        {n: str(a.dtype) for n, a in matrices.items() if a.dtype != numpy_dtype("bf16")}
    assert {"model.embeddings.weight", "lm_head:packed"} <= set(matrices)
    stored = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                 if f.endswith(".safetensors"))
    assert sum(a.nbytes for a in module.params.values()) < stored


def test_w8aspike_float_parts_keep_the_stored_dtype(tmp_path):
    """W8ASpike in bf16: the int8 grid for the spiking projections, and the parts the release
    keeps float (embedding, MLP down projections, LM head) in bf16 behind a Cast."""
    folder = write_checkpoint(tmp_path / "w8", variant="w8aspike", dtype="bf16")
    graph = import_checkpoint(folder)
    dtypes = {p.name: p.dtype for p in graph.params}
    assert dtypes["model.embeddings.weight"] == dtypes["lm_head"] == "bf16"
    assert dtypes["model.layers.0.mlp.down_proj.weight"] == "bf16"
    assert dtypes["model.layers.0.attn.q_proj.weight"] == "i8"
    assert all(n.inputs[0].dtype == "bf16" for n in graph.nodes if n.op == "Cast"
               and n.inputs[0].producer is None)


@pytest.mark.parametrize("window, keys", [("flash", 5), ("cache", 4)])
def test_window_conventions(tmp_path, window, keys):
    """sliding_window 4: flash sees itself + 4 earlier keys, cache 4 keys in all (f16 storage,
    tied embeddings; the IR interpreter runs the graph sbc compiles)."""
    folder = write_checkpoint(tmp_path / "c", Tiny(layers=2, tie=True), dtype="f16")
    ids = ids_for(5, 1, 11)
    got = interpret(import_checkpoint(folder, window=window), {"ids": ids})["logits"]
    np.testing.assert_allclose(got, reference_logits(folder, ids, window_keys=keys),
                               rtol=TOL, atol=TOL)
    other = reference_logits(folder, ids, window_keys=9 - keys)
    assert np.abs(got - other).max() > 1e-3  # the two conventions really differ


def test_export_runs_in_onnxruntime_like_the_compiled_model(plain, tmp_path, capsys):
    import onnx
    import onnxruntime as ort
    folder, module = plain
    path = tmp_path / "model.onnx"
    assert main(["export", "--from", folder, "-o", str(path)]) in (0, None)
    assert "exported the checkpoint" in capsys.readouterr().out
    model = onnx.load(path)
    assert model.ir_version == 10 and model.opset_import[0].version == 21
    ids = ids_for(7, 2, 9)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, module.run({"ids": ids})["logits"], rtol=TOL, atol=TOL)


# -- errors ------------------------------------------------------------------------------------

def cli_error(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None) and len(err) == 1 and err[0].startswith("sbc: error:"), err
    return err[0]


def edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.fixture
def small(tmp_path):
    return write_checkpoint(tmp_path / "ckpt", Tiny(layers=2))


def test_unknown_model_type(small, capsys):
    edit_config(small, model_type="llama")
    line = cli_error(capsys, "compile", small)
    assert "model_type 'llama' is not supported" in line and "gla_swa" in line


def test_use_short_conv_is_refused_by_name(small, capsys):
    edit_config(small, use_short_conv=True)
    assert "use_short_conv: true" in cli_error(capsys, "compile", small)


def test_missing_tensor_is_named(tmp_path, capsys):
    folder = write_checkpoint(tmp_path / "c", Tiny(layers=2), drop=("model.layers.1.attn.k_proj.bias",))
    assert "missing tensors: model.layers.1.attn.k_proj.bias" in cli_error(capsys, "compile", folder)


def test_wrong_shape_is_named(small, capsys):
    edit_config(small, intermediate_size=512)
    line = cli_error(capsys, "export", "--from", small, "-o", os.path.join(small, "x.onnx"))
    assert "'model.layers.0.mlp.gate_proj.weight' is [256, 128], expected [512, 128]" in line


def test_corrupt_safetensors_file(small):
    path = os.path.join(small, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    assert_one_line_error(["compile", small], "model.safetensors", "truncated")


def test_window_option_needs_a_checkpoint(tmp_path, capsys):
    from tests.conftest import make_mlp_model
    path = tmp_path / "mlp.onnx"
    make_mlp_model(path)
    assert "checkpoint folders only" in cli_error(capsys, "compile", path, "--window", "cache")


def test_inspect_describes_a_checkpoint_folder(small, capsys, monkeypatch):
    """`sbc inspect DIR`: the config as read, the variant and the stored dtypes, from the
    headers alone (no tensor is read); --ir builds the graph; a folder that is not a
    checkpoint, or a missing tensor, is one line."""
    from sbc.frontend import safetensors_reader
    monkeypatch.setattr(safetensors_reader.Tensors, "read", lambda *a, **k: pytest.fail("read"))
    assert main(["inspect", small, "--json"]) in (0, None)
    info = json.loads(capsys.readouterr().out)
    assert info["variant"].startswith("plain") and info["layers"].startswith("2: 1 GLA, 1 SWA")
    assert list(info["stored"]) == ["BF16"] and info["stored"]["BF16"].endswith(" bytes")
    assert info["parameters"] > 0 and info["vocab"] == Tiny().vocab
    monkeypatch.undo()
    assert main(["inspect", small, "--ir"]) in (0, None)
    assert "LinearAttention(" in capsys.readouterr().out
    assert "no config.json" in cli_error(capsys, "inspect", os.path.dirname(small))
    os.remove(os.path.join(small, "model.safetensors"))
    assert "no model.safetensors" in cli_error(capsys, "inspect", small)
