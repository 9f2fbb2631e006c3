"""The compile driver (sbc.driver): its stages, in order, each reported with its time; the CLI's
--json and -q; the pipeline built from the options, with order constraints as data."""

import json

import pytest

import sbc
from sbc.cli import main
from sbc.driver import pipeline_for
from sbc.errors import UnsupportedError
from sbc.passes import DEFAULT_PIPELINE


def test_stages_report_in_order(mlp_onnx):
    seen = []
    sbc.compile(mlp_onnx, progress=lambda stage, seconds: seen.append((stage, seconds)))
    assert [s for s, _ in seen] == ["import", "optimise", "programs", "build", "package"]
    assert all(seconds >= 0 for _, seconds in seen)


def test_calibration_adds_the_analyse_stage(mlp_onnx):
    import numpy as np
    seen = []
    x = np.ones((2, 8), np.float32)
    module = sbc.compile(mlp_onnx, calibrate={"x": x}, progress=lambda s, _: seen.append(s))
    assert "analyse" in seen and module.manifest["spike_stats"]["sites"] == []  # no spikes


def test_cli_json_and_quiet(mlp_onnx, tmp_path, capsys):
    assert main(["compile", mlp_onnx, "-o", str(tmp_path / "a.sbc"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(tmp_path / "a.sbc") and summary["ops"] >= 1
    assert list(summary["stages"]) == ["import", "optimise", "programs", "build", "package"]
    assert summary["from_cache"] is False
    assert main(["compile", mlp_onnx, "-o", str(tmp_path / "b.sbc"), "-q"]) == 0
    assert capsys.readouterr() == ("", "")


def test_the_pipeline_from_the_options():
    pipeline = pipeline_for(None, "w8", 64)
    at = pipeline.index("quantize-weights-int8")
    assert pipeline[at - 1] == "fuse-spike-neurons" and pipeline[at + 1] == "spike-matmul"
    assert "recognise-mixers{max-context=64}" in pipeline
    assert pipeline_for(None, None, None) == DEFAULT_PIPELINE
    with pytest.raises(UnsupportedError, match="goes with the default pipeline"):
        pipeline_for("dce", "w8", None)
