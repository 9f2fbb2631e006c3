"""What the GPU-target tests can use here: nvcc, an NVIDIA GPU, MetaX hardware. Tests that
need what is missing skip with the reason (this machine image has nvcc but no GPU)."""

import os

import pytest

COMPAT = os.path.join(os.path.dirname(__file__), "maca_compat")


def nvcc_or_skip() -> str:
    from sbc.runtimes.machine import find_nvcc
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


def check_unavailable_in_one_line(module, tmp_path, capsys, message: str) -> str:
    """Loading, running and `sbc run` of a saved GPU artifact without its device each fail
    with one line containing `message`; returns the artifact's path."""
    import numpy as np
    import sbc
    from sbc.cli import main
    from sbc.errors import TargetUnavailableError
    path = tmp_path / "tiny.sbc"
    module.save(path)
    with pytest.raises(TargetUnavailableError) as info:
        sbc.load(path)
    assert "\n" not in str(info.value) and message in str(info.value)
    with pytest.raises(TargetUnavailableError, match=message):
        module.run({"ids": token_ids()})
    np.savez(tmp_path / "x.npz", ids=token_ids())
    assert main(["run", path, "--inputs", tmp_path / "x.npz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    return path
