"""bench/bench_model_zoo_cpu.py stays importable and its models stay buildable (a benchmark,
not a test: this only builds each zoo model in PyTorch and formats a table, in seconds)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_model_zoo_cpu as zoo  # noqa: E402 - the bench folder is not a package


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_hf_models_build_from_configs(arch):
    with torch.inference_mode():
        logits = zoo.hf_module(arch)(torch.zeros(1, 5, dtype=torch.int64))
    assert logits.shape == (1, 5, zoo.HF["vocab"])


def test_every_case_is_named_and_the_table_has_ratios():
    assert set(zoo.DEFAULT) <= set(zoo.CASES)
    assert {c.name for c in (zoo.CASES[n]() for n in zoo.CASES)} == set(zoo.CASES)
    args = zoo.argparse.Namespace(repeats=5, seq=[128])
    rows = [{"model": "llama", "description": "d", "fused": "none", "T": 128, "compile_s": 1.0,
             "max_abs_diff": 1e-6, "sbc": 2.0, "ort": 4.0, "torch": 1.0},
            {"model": "ref_la27_masked", "description": "d", "fused": "none", "T": 128,
             "compile_s": 1.0, "max_abs_diff": None, "sbc": 2.0, "torch": 1.0}]
    text = zoo.table(rows, args)
    assert "| **2.00x** | 0.50x |" in text and "| n/a | 1.00 | n/a | 0.50x |" in text
