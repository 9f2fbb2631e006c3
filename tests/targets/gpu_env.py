"""What the GPU-target tests can use here: nvcc, an NVIDIA GPU, MetaX hardware. Tests that
need what is missing skip with the reason (this machine image has nvcc but no GPU)."""

import os

import pytest

COMPAT = os.path.join(os.path.dirname(__file__), "maca_compat")


def nvcc_or_skip() -> str:
    from sbc.codegen.target import find_nvcc
    path = find_nvcc()
    if path is None:
        pytest.skip("nvcc (CUDA toolkit) not found: the CUDA / MACA-compat compile checks need it")
    return path


def has_cuda_gpu() -> bool:
    from sbc.runtimes.cuda import cuda_device_count
    return cuda_device_count() > 0


def has_metax() -> bool:
    from sbc.runtimes.maca import maca_device_count
    return maca_device_count() > 0


def token_ids(batch=1, seq=9, vocab=256):
    import numpy as np
    return np.random.default_rng(0).integers(0, vocab, size=(batch, seq)).astype(np.int64)
