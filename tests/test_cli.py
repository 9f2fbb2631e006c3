"""The CLI end to end: export, compile (with pass-manager switches), inspect, run, demo."""

import numpy as np

from tests.test_bad_input import run_cli


def test_compile_inspect_run(tmp_path, mlp_onnx):
    artifact = tmp_path / "mlp.sbc"
    code, out, err = run_cli("compile", mlp_onnx, "-o", artifact, "--time-passes", "--verify-each",
                             "--print-after=dce", "--dump-dir", tmp_path / "dump")
    assert code == 0, err
    assert "compiled" in out and artifact.exists()
    assert "IR after dce" in err and "fold-constants" in err  # --print-after and --time-passes
    assert sorted(p.name for p in (tmp_path / "dump").iterdir())[0].startswith("01-")

    code, out, _ = run_cli("inspect", artifact)
    assert code == 0 and "x: f32[batch, 8]" in out and "sha256" in out

    code, out, _ = run_cli("inspect", mlp_onnx, "--ir")
    assert code == 0 and "MatMul(%x, %W)" in out

    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    code, out, err = run_cli("run", artifact, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert code == 0, err
    assert "y: float32[3, 4]" in out
    assert np.load(tmp_path / "out.npz")["y"].shape == (3, 4)


def test_passes_option_and_unknown_pass(tmp_path, mlp_onnx):
    code, _, err = run_cli("compile", mlp_onnx, "-o", tmp_path / "a.sbc", "--passes", "dce,cse")
    assert code == 0, err
    code, _, err = run_cli("compile", mlp_onnx, "-o", tmp_path / "b.sbc", "--passes", "dce,nope")
    assert code == 2 and "unknown pass 'nope'" in err and not (tmp_path / "b.sbc").exists()


def test_export_and_demo(tmp_path):
    code, out, err = run_cli("demo", "--seq", "16", "--workdir", tmp_path)
    assert code == 0, err
    assert "MATCH" in out and (tmp_path / "tiny.onnx").exists() and (tmp_path / "tiny.sbc").exists()


def test_debug_reports_no_divergence(tmp_path, mlp_onnx):
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), np.float32))
    code, out, err = run_cli("debug", mlp_onnx, "--inputs", tmp_path / "in.npz")
    assert code == 0, err
    assert "no divergence" in out
