"""The cuda target: the tiny model compiles for CUDA with every kernel bound to GPU threads
(with int8 weights too: the SpikeMatMul GPU kernel), nvcc compiles every kernel, a kernel left
without threads is refused, and without a GPU loading / running says so in one line. The
comparison with the CPU runs where a GPU is; tests/codegen/test_gpu_kernels_serial checks the
hand-written GPU kernels' numerics on the CPU."""

import re

import numpy as np
import pytest

import sbc
from sbc.errors import CompileError, UnsupportedError
from tests.codegen.test_spike_matmul_kernel import spike_matmul_graph
from tests.targets.gpu_env import (check_unavailable_in_one_line, has_cuda_gpu, nvcc_or_skip,
                                    token_ids)

FATBIN_MAGIC = b"\x50\xed\x55\xba"  # little-endian 0xBA55ED50


@pytest.fixture(scope="module")
def tiny_cuda(tiny_onnx):
    """The tiny model with int8 spiking projections (--quantize w8): every GPU kernel sbc has,
    SpikeMatMul included, next to the fp32 matmuls of the unspiked projections."""
    nvcc_or_skip()  # the build runs nvcc
    return sbc.compile(tiny_onnx, target="cuda", quantize="w8")


def test_tiny_compiles_with_every_kernel_on_the_gpu(tiny_cuda):
    target = tiny_cuda.manifest["target"]
    assert target["kind"] == "cuda" and target["arch"] == "sm_80"
    kernels = target["kernels"]
    # the hand-written recurrent / sliding-window kernels are GPU kernels, not host code
    assert {"linearattention_kernel", "slidingwindowattention_kernel",
            "slidingwindowattention_kernel_1"} <= set(kernels)
    assert tiny_cuda.manifest["ops"].get("SpikeMatMul", 0) >= 12
    assert any(k.startswith("spikematmul") for k in kernels)
    assert len(kernels) == len(set(kernels)) > 20
    fatbin = tiny_cuda.files["cuda/kernels.fatbin"]
    assert fatbin[:4] == FATBIN_MAGIC and len(fatbin) > 10000


def nvcc_ptx(module, monkeypatch) -> str:
    import tvm
    from tvm.support import nvcc
    monkeypatch.setenv("TVM_CUDA_NVCC_NO_FAST_MATH", "1")  # exact division: exact spikes
    source = module.files["cuda/kernels.cu"].decode()
    with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):
        return nvcc.compile_cuda(source, target_format="ptx", compiler="nvcc").decode()


def test_nvcc_compiles_every_kernel_to_ptx(tiny_cuda, monkeypatch):
    ptx = nvcc_ptx(tiny_cuda, monkeypatch)
    entries = set(re.findall(r"\.entry (\w+)\(", ptx))
    assert entries == set(tiny_cuda.manifest["target"]["kernels"])
    assert "div.approx.f32" not in ptx  # no fast-math division anywhere


@pytest.mark.parametrize("quantised, bias", [(True, True), (False, False)])
def test_spike_matmul_compiles_for_cuda(quantised, bias, monkeypatch):
    """One SpikeMatMul (int8 weights with group scales, or f32 weights) as a GPU kernel that
    nvcc compiles, its shared tiles within CUDA's 48 KiB of static shared memory."""
    nvcc_or_skip()
    module = sbc.compile(spike_matmul_graph("i16", quantised, bias), target="cuda", passes="dce")
    assert module.manifest["ops"] == {"SpikeMatMul": 1}
    assert module.manifest["target"]["kernels"] == ["spikematmul_kernel"]
    ptx = nvcc_ptx(module, monkeypatch)
    assert re.findall(r"\.entry (\w+)\(", ptx) == ["spikematmul_kernel"]
    shared = sum(int(b) for b in re.findall(r"\.shared .*\[(\d+)\];", ptx))
    assert 0 < shared <= 48 * 1024


def test_chunked_linear_attention_compiles_for_cuda(monkeypatch):
    """A gated (per key dim, GQA, past state) LinearAttention graph: the chunked kernel, its
    recurrent short-T nest and three chunk launches, all thread-bound, compile with nvcc;
    shared memory within CUDA's 48 KiB per kernel, no spills to local memory."""
    from tests.codegen.test_attention_kernels import linear_attention_graph
    nvcc_or_skip()
    module = sbc.compile(linear_attention_graph("gated", 2 * 8, True), target="cuda", passes="dce")
    kernels = module.manifest["target"]["kernels"]
    assert sorted(kernels) == ["linearattention_kernel"] + [f"linearattention_kernel_{i}" for i in (1, 2, 3)]
    ptx = nvcc_ptx(module, monkeypatch)
    bodies = re.split(r"\.entry ", ptx)[1:]
    assert sorted(re.match(r"(\w+)\(", b).group(1) for b in bodies) == sorted(kernels)
    for body in bodies:
        assert sum(int(n) for n in re.findall(r"\.shared .*\[(\d+)\];", body)) <= 48 * 1024
    assert ".local" not in ptx


def test_gpu_kernel_variants_bind_threads_and_compile():
    """Every rule of the GPU kernels (gated per key / per head, delta, past state, ring
    buffer; SpikeMatMul's int8 and f32 weights) is thread-bound and goes through TVM's CUDA
    codegen."""
    import tvm
    from sbc.codegen.kernels.linear_attention_chunked_gpu import \
        linear_attention_chunked_gpu_kernel as chunked
    from sbc.codegen.kernels.linear_attention_gpu import linear_attention_gpu_kernel
    from sbc.codegen.kernels.sliding_window_gpu import sliding_window_gpu_kernel
    from sbc.codegen.kernels.spike_matmul_gpu import spike_matmul_gpu_func
    from sbc.codegen.schedule_gpu import thread_bound
    funcs = {
        "lac_head": chunked(6, 2, 24, 16, 0.25, "head", False),
        "lac_linear": chunked(2, 2, 16, 32, 0.5, None, True, short=0),
        "lac_7b": chunked(28, 4, 128, 128, 128 ** -0.5, "key", True),
        "la_key": linear_attention_gpu_kernel(4, 2, 16, 8, 0.25, "key", None, True),
        "la_head_delta": linear_attention_gpu_kernel(2, 2, 8, 16, 0.5, "head", "head", False),
        "la_linear": linear_attention_gpu_kernel(2, 1, 8, 8, 0.5, None, None, False),
        "swa_past": sliding_window_gpu_kernel(4, 2, 16, 16, 8, 0.25, True, (1,)),
        "swa_prefill": sliding_window_gpu_kernel(2, 2, 8, 8, 300, 0.25, False, None),
        # SpikingBrain-7B's layer shapes: 28 query / 4 KV heads of 128, window 4096
        "la_7b": linear_attention_gpu_kernel(28, 4, 128, 128, 128 ** -0.5, "key", None, True),
        "swa_7b": sliding_window_gpu_kernel(28, 4, 128, 128, 4096, 128 ** -0.5, True, (1,)),
        "smm_i8": spike_matmul_gpu_func(3, "i8", "i8", 300, 48, 128, False),
        "smm_f32": spike_matmul_gpu_func(2, "i16", "f32", 256, 80, 128, True),
        # SpikingBrain-7B's MLP down projection: K 18944 (148 groups), N 3584
        "smm_7b": spike_matmul_gpu_func(3, "i16", "i8", 18944, 3584, 128, True),
    }
    assert all(thread_bound(f) for f in funcs.values())
    mod = tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()})
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    lib = tvm.compile(mod, target=target)
    source = lib.mod.imports[0].inspect_source("cuda")
    assert all(f"{n}_kernel" in source for n in funcs)


def test_gpu_kernel_limits_are_one_line():
    from sbc.codegen.kernels.linear_attention_gpu import linear_attention_gpu_kernel
    with pytest.raises(UnsupportedError, match="dv <= 1024"):
        linear_attention_gpu_kernel(1, 1, 16, 2048, 1.0, None, None, False)


def test_a_kernel_without_threads_is_refused(mlp_onnx, monkeypatch):
    """Without its GPU schedule a kernel would silently become a host function."""
    import sbc.codegen.schedule_gpu as sg
    nvcc_or_skip()
    monkeypatch.setattr(sg, "schedule_gpu", lambda mod, target: mod)
    with pytest.raises(CompileError) as info:
        sbc.compile(mlp_onnx, target="cuda")
    message = str(info.value)
    assert "\n" not in message and "no GPU schedule" in message and "host" in message


def test_arch_is_recorded_and_checked(mlp_onnx):
    nvcc_or_skip()
    module = sbc.compile(mlp_onnx, target="cuda", arch="sm_90")
    assert module.manifest["target"]["arch"] == "sm_90"
    assert module.files["cuda/kernels.fatbin"][:4] == FATBIN_MAGIC
    for bad in ("sm_61", "compute_80", "gfx90a"):
        with pytest.raises(UnsupportedError, match="arch"):
            sbc.compile(mlp_onnx, target="cuda", arch=bad)
    with pytest.raises(UnsupportedError, match="--arch"):
        sbc.compile(mlp_onnx, target="cpu", arch="sm_80")


@pytest.mark.skipif(has_cuda_gpu(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_load_and_run_say_so_in_one_line(tiny_cuda, tmp_path, capsys):
    from sbc.cli import main
    path = check_unavailable_in_one_line(tiny_cuda, tmp_path, capsys, "no CUDA device was found")
    assert main(["inspect", path]) == 0  # describing it needs no device
    assert "cuda" in capsys.readouterr().out


def test_cli_compiles_for_cuda(mlp_onnx, tmp_path, capsys):
    from sbc.cli import main
    nvcc_or_skip()
    out = tmp_path / "m.sbc"
    assert main(["compile", mlp_onnx, "--target", "cuda", "--arch", "sm_86", "-o", out]) == 0
    import zipfile
    names = set(zipfile.ZipFile(out).namelist())
    assert {"lib.so", "weights.safetensors", "cuda/kernels.cu", "cuda/kernels.fatbin"} <= names


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_gpu(), reason="needs an NVIDIA GPU")
def test_runs_like_the_cpu(tiny_cuda, tiny_module_w8, tmp_path):
    ids = token_ids(batch=2, seq=21)
    expected = tiny_module_w8.run({"ids": ids})["logits"]
    tiny_cuda.save(tmp_path / "tiny.sbc")
    loaded = sbc.load(tmp_path / "tiny.sbc")
    got = loaded.run({"ids": ids})["logits"]
    # spikes (Round) may flip where x / V_th lands within float rounding of .5
    assert np.mean(np.abs(got - expected) < 1e-3) > 0.99
    # a session (prefill, then decode steps) agrees with one over the CPU module
    gpu, cpu = loaded.session(batch=1), tiny_module_w8.session(batch=1)
    np.testing.assert_allclose(gpu.prefill(ids[:1, :5]), cpu.prefill(ids[:1, :5]), atol=1e-3)
    np.testing.assert_allclose(gpu.decode(ids[:1, 5:6]), cpu.decode(ids[:1, 5:6]), atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_gpu(), reason="needs an NVIDIA GPU")
def test_session_state_stays_in_gpu_memory(tiny_cuda, tiny_module_w8, tmp_path):
    import tvm
    from sbc.errors import TargetUnavailableError
    from sbc.runtimes.cuda import cuda_device_count
    tiny_cuda.save(tmp_path / "tiny.sbc")
    gpu = sbc.load(tmp_path / "tiny.sbc", device="cuda:0").session()
    cpu = tiny_module_w8.session()
    ids = token_ids(batch=1, seq=8)
    np.testing.assert_allclose(gpu.prefill(ids[:, :5]), cpu.prefill(ids[:, :5]), atol=1e-3)
    np.testing.assert_allclose(gpu.decode(ids[:, 5]), cpu.decode(ids[:, 5]), atol=1e-3)
    position = tiny_cuda.recurrent["position"]
    kept = [v for n, v in gpu.state.items() if n != position]
    assert kept and all(isinstance(v, tvm.runtime.Tensor) and v.device.dlpack_device_type() == 2
                        for v in kept)  # kDLCUDA: no host round trip per token
    with pytest.raises(TargetUnavailableError, match=f"cuda:{cuda_device_count()}"):
        sbc.load(tmp_path / "tiny.sbc", device=f"cuda:{cuda_device_count()}").run(
            {"ids": ids})


def test_spike_matmul_tiles_are_rebuilt_for_the_target():
    """The lowering knows no target: schedule_gpu rebuilds the SpikeMatMul kernel with the
    target's limits (here a GPU with 8 KiB of shared memory: 32-row tiles, 64-channel chunks)."""
    import json
    import tvm
    from sbc.codegen.kernels.spike_matmul_gpu import spike_matmul_gpu_func
    from sbc.codegen.schedule_gpu import SPECIALISE, specialise_for
    args = {"rank": 2, "counts_dtype": "i16", "weight_dtype": "i8", "k": 256, "n": 64,
            "group": 128, "has_bias": False}
    func = spike_matmul_gpu_func(**args).with_attr(SPECIALISE, json.dumps(args))
    assert 'T.alloc_shared((8192,), "int16")' in func.script()  # 64 rows x 128 channels
    small = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "max_shared_memory_per_block": 8192})
    out = specialise_for(tvm.IRModule({"smm": func}), small)["smm"]
    assert 'T.alloc_shared((2048,), "int16")' in out.script()  # 32 rows x 64 channels
    assert SPECIALISE in out.attrs
