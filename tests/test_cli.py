"""The CLI end to end on the small MLP: compile (with the pass-manager switches), inspect, run;
then export of the tiny reference model and the demo on it against onnxruntime.

Commands that compile or run go through a subprocess once (the real `sbc` console script) and
otherwise in-process via `sbc.cli.main`, because each new process spends ~5 s importing TVM.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sbc.cli import main
from tests.test_bad_input import run_cli

# the console script installed beside this interpreter (the venv's bin/), not one on PATH
SBC = os.path.join(os.path.dirname(sys.executable), "sbc")


def cli(capsys, *args):
    """Run sbc.cli.main in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, mlp_onnx):
    """`sbc compile` through the console script, with every pass-manager switch."""
    work = tmp_path_factory.mktemp("cli")
    artifact = work / "mlp.sbc"
    proc = subprocess.run([SBC, "compile", mlp_onnx, "--target", "cpu", "-o", artifact,
                           "--time-passes", "--verify-each", "--print-after=dce",
                           "--dump-dir", work / "dump"], capture_output=True, text=True, timeout=300)
    return work, artifact, proc


def test_compile_summary_and_switches(compiled):
    work, artifact, proc = compiled
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("compiled ")
    assert all(s in summary[0] for s in ("3 ops", "36 parameters", "MB", " s"))
    assert artifact.exists() and not [p for p in os.listdir(work) if p.startswith(".sbc-partial")]
    assert "IR after dce" in proc.stderr and "fold-constants" in proc.stderr
    assert sorted(p.name for p in (work / "dump").iterdir())[0].startswith("01-")


def test_inspect_artifact(compiled, capsys):
    _, artifact, _ = compiled
    code, out, _ = cli(capsys, "inspect", artifact)
    assert code == 0
    assert all(s in out for s in ("x: f32[batch, 8]", "y: f32[batch, 4]", "kind: cpu",
                                  "sha256", "(verified)", "MatMul: 1", "count: 36"))
    code, out, _ = cli(capsys, "inspect", artifact, "--json")
    info = json.loads(out)
    assert info["target"]["kind"] == "cpu" and info["target"]["features"] is not None
    assert set(info["files"]) == {"lib.so", "weights.safetensors"}


def test_inspect_onnx(mlp_onnx, capsys):
    code, out, _ = cli(capsys, "inspect", mlp_onnx, "--ir")
    assert code == 0 and "MatMul(%x, %W)" in out and "graph " in out
    code, out, _ = cli(capsys, "inspect", mlp_onnx, "--json")
    info = json.loads(out)
    assert info["ops"] == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert info["parameters"] == {"count": 36, "tensors": 2, "bytes": 144}
    assert info["inputs"] == ["x: f32[batch, 8]"]


def test_run(compiled, tmp_path, capsys):
    _, artifact, _ = compiled
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    code, out, err = cli(capsys, "run", artifact, "--inputs", tmp_path / "in.npz",
                         "--outputs", tmp_path / "out.npz")
    assert code == 0, err
    assert out.startswith("y: f32[3, 4]  min ") and " max " in out and " mean " in out
    import sbc
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["y"], sbc.load(artifact).run({"x": x})["y"])


def test_run_subprocess(compiled, tmp_path):
    """Once through a fresh process: the artifact is self-contained."""
    _, artifact, _ = compiled
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), np.float32))
    code, out, err = run_cli("run", artifact, "--inputs", tmp_path / "in.npz")
    assert code == 0, err
    assert "y: f32[2, 4]" in out


def test_run_inputs_given_on_the_command_line(compiled, tmp_path, capsys):
    """--input NAME=values | NAME=@file | NAME=dtype[shape] (seeded), .json files, .npy out."""
    import sbc
    _, artifact, _ = compiled
    module = sbc.load(artifact)
    row = np.arange(8, dtype=np.float32)
    np.save(tmp_path / "x.npy", np.stack([row, -row]))
    (tmp_path / "x.json").write_text(json.dumps({"x": [row.tolist()]}))
    cases = {"values": (["--input", "x=" + ",".join(map(str, range(8)))], row[None]),
             "json list": (["--input", f"x={json.dumps([row.tolist()])}"], row[None]),
             "file": (["--input", f"x=@{tmp_path / 'x.npy'}"], np.stack([row, -row])),
             "json file": (["--inputs", tmp_path / "x.json"], row[None])}
    for name, (given, x) in cases.items():
        code, _, err = cli(capsys, "run", artifact, *given, "--outputs", tmp_path / "y.npy")
        assert code == 0, (name, err)
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), module.run({"x": x})["y"])
    outs = [cli(capsys, "run", artifact, "--input", "x=float32[3,8]", "--seed", seed)[1]
            for seed in ("1", "1", "2")]
    assert outs[0] == outs[1] != outs[2] and outs[0].startswith("y: f32[3, 4]")


@pytest.mark.parametrize("given, message", [
    (["--input", "z=1"], "no input 'z'; its inputs: x"),
    (["--input", "x"], "expected NAME=VALUES"),
    (["--input", "x=a,b"], "not a list of numbers"),
    (["--input", "x=quad[2,8]"], "unknown dtype 'quad'"),
    (["--input", "x=1,2,3"], "x"),  # a wrong shape: the signature check names the input
    ([], "give the inputs (x)"),
])
def test_run_input_mistakes_are_one_line(compiled, capsys, given, message):
    _, artifact, _ = compiled
    code, out, err = cli(capsys, "run", artifact, *given)
    assert code == 2 and err.startswith("sbc: error:") and message in err and err.count("\n") == 1


def test_threads(compiled, tmp_path, capsys):
    """--threads N: the kernels' threads; a count that means nothing is one line, at once."""
    _, artifact, _ = compiled
    given = ["--input", "x=float32[3,8]"]
    outs = [cli(capsys, "run", artifact, *given, *threads)[1] for threads in ([], ["--threads", "1"])]
    assert outs[0] == outs[1] and outs[0].startswith("y: f32[3, 4]")
    for command in (["run", artifact, *given], ["bench", artifact, *given],
                    ["generate", artifact, "--prompt-ids", "1"], ["serve", artifact]):
        code, _, err = cli(capsys, *command, "--threads", "0")
        assert code == 2 and err.count("\n") == 1, (command, err)
        assert err.startswith("sbc: error: --threads must be from 1 to"), (command, err)


def test_bench_reports_latency_and_a_ratio_to_onnxruntime(compiled, mlp_onnx, capsys):
    _, artifact, _ = compiled
    code, out, err = cli(capsys, "bench", artifact, "--input", "x=float32[4,8]", "--repeats", "3",
                         "--onnx", mlp_onnx, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["sbc_ms_min"] <= result["sbc_ms_median"] <= result["sbc_ms_max"]
    assert result["sbc_speed_vs_onnxruntime"] > 0 and "tokens_per_call" not in result


def test_passes_option_and_unknown_pass(tmp_path, mlp_onnx, capsys):
    code, _, err = cli(capsys, "compile", mlp_onnx, "-o", tmp_path / "a.sbc", "--passes", "dce,cse")
    assert code == 0, err
    code, _, err = cli(capsys, "compile", mlp_onnx, "-o", tmp_path / "b.sbc", "--passes", "dce,nope")
    assert code == 2 and err.startswith("sbc: error:") and "unknown pass 'nope'" in err
    assert os.listdir(tmp_path) == ["a.sbc"]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("sbc 0.")
    assert main([]) == 2


def test_debug_reports_no_divergence(tmp_path, mlp_onnx, capsys):
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), np.float32))
    code, out, err = cli(capsys, "debug", mlp_onnx, "--inputs", tmp_path / "in.npz")
    assert code == 0, err
    assert "no divergence" in out


def test_export_then_demo(tmp_path, capsys):
    """`sbc export` for real (a subprocess), then the demo on that file vs onnxruntime."""
    onnx_path = tmp_path / "tiny.onnx"
    code, out, err = run_cli("export", "--config", "tiny", "-o", onnx_path)
    assert code == 0, err
    assert "tiny" in out and onnx_path.exists()
    code, out, err = cli(capsys, "demo", "--onnx", onnx_path, "--batch", "2", "--seq", "16",
                         "--workdir", tmp_path / "work")
    assert code == 0, out + err
    assert all(s in out for s in ("MATCH", "argmax agreement", "max |diff|", "run onnxruntime"))
    assert (tmp_path / "work" / "tiny.sbc").exists()


def test_export_unknown_config(tmp_path):
    code, _, err = run_cli("export", "--config", "huge", "-o", tmp_path / "m.onnx")
    assert code == 2 and err.strip().startswith("sbc: error: unknown config 'huge'")
    assert "Traceback" not in err and os.listdir(tmp_path) == []
