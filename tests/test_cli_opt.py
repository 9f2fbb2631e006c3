"""`sbc opt`: IR text in (a file or stdin), the pipeline run once in order, IR text out;
errors are one line and exit 2 like every other subcommand."""

import io

import pytest

from sbc.cli import main, opt_text

TEXT = """// a comment line, as test files have them
graph main(%x: f32[batch, 3]) -> (%y: f32[batch, 3]) {
  param %w1: f32[3] = random(1)
  param %w2: f32[3] = random(1)
  %a: f32[batch, 3] = Add(%x, %w1)
  %b: f32[batch, 3] = Add(%x, %w2)
  %y: f32[batch, 3] = Mul(%a, %b)
  return %y as y
}
"""


@pytest.fixture
def ir_file(tmp_path):
    path = tmp_path / "graph.sbcir"
    path.write_text(TEXT)
    return path


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbc: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_runs_the_pipeline_and_prints_the_ir(capsys, ir_file):
    code, out, err = cli(capsys, "opt", ir_file, "--passes", "cse,dce")
    assert code == 0 and err == ""
    assert "param %w1: f32[3]\n" in out and "%w2" not in out  # same seed, same data: merged
    assert "%y: f32[batch, 3] = Mul(%a, %a)" in out
    assert out == opt_text(TEXT, "cse,dce")


def test_without_passes_it_verifies_and_prints(capsys, ir_file):
    code, out, _ = cli(capsys, "opt", ir_file)
    assert code == 0 and out.count("= Add(") == 2 and "//" not in out


def test_print_params_reads_back_in(capsys, ir_file, monkeypatch):
    """--print-params writes the data after each param: the output is itself valid input,
    and the same graph (a second run changes nothing)."""
    code, out, _ = cli(capsys, "opt", ir_file, "--passes", "cse,dce", "--print-params")
    assert code == 0 and "param %w1: f32[3] = tensor<f32[3]>[" in out
    monkeypatch.setattr("sys.stdin", io.StringIO(out))
    code, again, _ = cli(capsys, "opt", "-", "--print-params")
    assert code == 0 and again == out


def test_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT))
    code, out, _ = cli(capsys, "opt", "-", "--passes", "cse")
    assert code == 0 and "Mul(%a, %a)" in out


def test_writes_the_output_file(capsys, ir_file, tmp_path):
    target = tmp_path / "out.sbcir"
    code, out, _ = cli(capsys, "opt", ir_file, "--passes", "cse,dce", "-o", target)
    assert code == 0 and out == ""
    assert target.read_text() == opt_text(TEXT, "cse,dce")


def test_print_after_and_verify_each_go_to_stderr(capsys, ir_file):
    code, out, err = cli(capsys, "opt", ir_file, "--passes", "cse,dce", "--print-after", "all",
                         "--verify-each")
    assert code == 0
    assert "// ----- IR after cse (step 1) -----" in err and "IR after dce (step 2)" in err
    assert "IR after" not in out and out == opt_text(TEXT, "cse,dce")


def test_unknown_pass_is_one_line_and_exit_2(capsys, ir_file):
    code, out, err = cli(capsys, "opt", ir_file, "--passes", "cse,no-such-pass")
    assert code == 2 and out == ""
    assert_one_line_error(err, "unknown pass 'no-such-pass'; available: cse, dce")


@pytest.mark.parametrize("text, fragments", [
    (TEXT.replace("Mul(%a, %b)", "Mul(%a, %c)"), ["%c used before it is defined"]),
    (TEXT.replace("Mul", "Mull"), ["unknown op 'Mull'"]),
    (TEXT.replace(" = random(1)\n  param %w2", "\n  param %w2"), ["no data given for param %w1"]),
    (TEXT.replace("%y: f32[batch, 3] = Mul", "%y: f32[batch, 4] = Mul"),
     ["%y: text says f32[batch, 4], Mul infers f32[batch, 3]"]),
    ("graph main(%x: f32[3]) -> (%x: f32[3]) {\n  return %y as y\n}",
     ["%y used before it is defined"]),
    ("graph main(", ["got the end of the text"]),
])
def test_bad_ir_text_is_one_line_and_exit_2(capsys, tmp_path, text, fragments):
    path = tmp_path / "bad.sbcir"
    path.write_text(text)
    code, out, err = cli(capsys, "opt", path, "--passes", "dce")
    assert code == 2 and out == ""
    assert_one_line_error(err, *fragments)


def test_invalid_input_ir_is_not_blamed_on_a_pass(capsys, tmp_path):
    path = tmp_path / "dup.sbcir"
    path.write_text("graph main(%x: f32[3]) -> (%x: f32[3]) {\n  %y: f32[3] = Relu(%x)\n"
                    "  return %y as y, %x as y\n}\n")
    code, _, err = cli(capsys, "opt", path, "--passes", "cse")
    assert code == 2
    assert_one_line_error(err, "the input IR is invalid: IR verification failed",
                          "graph output names are not unique")


def test_missing_file_is_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "opt", tmp_path / "missing.sbcir")
    assert code == 2
    assert_one_line_error(err, "missing.sbcir", "No such file")


def test_binary_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\xff\xfe binary")
    code, _, err = cli(capsys, "opt", path)
    assert code == 2
    assert_one_line_error(err, "not IR text")
