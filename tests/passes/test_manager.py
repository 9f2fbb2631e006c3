"""The pass manager: pipelines by name with options, and its debugging switches."""

import io

import numpy as np
import pytest

from sbc.errors import SbcError, UnsupportedError
from sbc.ir import Graph, TensorType
from sbc.ir.verifier import VerificationError
from sbc.passes import Pass, PassResult, available_passes, parse_pipeline, register_pass, run_passes


def graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    g.add1("Exp", x)
    g.set_outputs([g.add1("Relu", g.add1("Add", x, g.add1("Constant", value=np.float32(1))))])
    return g


def test_registry_and_pipeline_options():
    assert {"cse", "dce", "fold-constants", "fold-reshape-transpose"} <= set(available_passes())
    passes = parse_pipeline("fold-constants{max-elements=16},dce")
    assert [p.name for p in passes] == ["fold-constants", "dce"]
    assert passes[0].options.max_elements == 16


@pytest.mark.parametrize("spec, message", [("nope", "unknown pass 'nope'"),
                                           ("dce{x=1}", "no option 'x'"),
                                           ("fold-constants{max-elements=lots}", "cannot read")])
def test_bad_pipelines(spec, message):
    with pytest.raises(UnsupportedError, match=message):
        parse_pipeline(spec)


def test_print_after_time_passes_and_dump_dir(tmp_path):
    out = io.StringIO()
    result = run_passes(graph(), print_after="dce", time_passes=True, dump_dir=tmp_path, out=out)
    text = out.getvalue()
    assert "IR after dce" in text and "Exp" not in text.split("IR after dce")[1]
    assert "fold-constants" in text and "share" in text
    assert (tmp_path / "01-fold-constants.sbcir").exists()
    assert "Exp" not in result.op_counts()


@register_pass
class BreaksTheIR(Pass):
    """Test-only: leaves a stale output type behind."""
    name = "test-breaks-ir"

    def run(self, g):
        g.nodes[-1].outputs[0].type = TensorType("f32", (4,))
        return PassResult(g, True)


def test_verify_each_names_the_breaking_pass():
    with pytest.raises(VerificationError, match="after pass 'test-breaks-ir'"):
        run_passes(graph(), "dce,test-breaks-ir", verify_each=True)
    run_passes(graph(), "dce,test-breaks-ir")  # without verification it goes unnoticed


def test_malformed_spec():
    with pytest.raises(SbcError):
        parse_pipeline("dce{")
