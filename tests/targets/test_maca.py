"""The maca target without MetaX hardware: the emitted source is in the MACA dialect (headers,
no PTX, 64-bit lane masks, 64-lane shuffles), every kernel compiles with nvcc through a small
compatibility header (tests/targets/maca_compat: it maps the MACA headers and shuffles to
CUDA's, see mc_runtime.h there), the package holds source, host program and build script, and
loading it here says in one line that no MetaX runtime was found."""

import json
import re
import subprocess
import zipfile

import numpy as np
import pytest

import sbc
from sbc.codegen.maca import FULL_MASK, check_maca, split_kernels, to_maca
from sbc.runtimes.maca import evaluate
from sbc.errors import CompileError
from tests.codegen.test_spike_matmul_kernel import spike_matmul_graph
from tests.targets.gpu_env import (COMPAT, check_unavailable_in_one_line, has_metax, nvcc_or_skip,
                                    token_ids)


@pytest.fixture(scope="module")
def tiny_maca(tiny_onnx):
    """With --quantize w8, so the SpikeMatMul kernels are among the MACA ones."""
    return sbc.compile(tiny_onnx, target="maca", quantize="w8")


@pytest.fixture(scope="module")
def source(tiny_maca):
    return tiny_maca.files["maca/kernels.maca"].decode()


def nvcc_compat(code: str, tmp_path, name="k") -> subprocess.CompletedProcess:
    nvcc = nvcc_or_skip()
    src = tmp_path / f"{name}.maca"
    src.write_text(code)
    return subprocess.run([nvcc, "-x", "cu", "-ptx", "-arch=sm_80", "-I", COMPAT,
                           "-diag-suppress", "177,1046", "-o", str(tmp_path / f"{name}.ptx"),
                           str(src)], capture_output=True, text=True, timeout=300)


def test_target_is_cuda_kind_with_the_maca_tag():
    from sbc.codegen.targets import resolve
    t = resolve("maca").tvm()
    assert t.kind.name == "cuda" and list(t.keys) == ["maca", "gpu"]
    assert int(t.attrs["thread_warp_size"]) == 64
    assert int(t.attrs["max_shared_memory_per_block"]) == 65536
    assert int(t.attrs["max_threads_per_block"]) == 1024


def test_source_is_maca_dialect(source):
    assert "#include <mc_runtime.h>" in source and "#include <maca_fp16.h>" in source
    for cuda_only in ("cuda.h", "cuda_fp16.h", "__CUDACC_RTC__", "__CUDA_ARCH__", "cuda/std"):
        assert cuda_only not in source, cuda_only
    assert not re.search(r"\basm\b|__asm__", source)  # no PTX / inline assembly
    check_maca(source)


def test_lane_masks_and_shuffles_are_64_wide(source):
    assert "__activemask" not in source
    assert not re.search(r"\b0x[fF]{8}[uU]?\b(?![fF])", source)  # no 32-bit full mask
    assert not re.search(r"\buint \w*mask", source)  # no 32-bit mask variable
    shuffles = re.findall(r"__shfl(?:_up|_down|_xor)?_sync\(([^;]*)\);", source)
    assert shuffles  # the norms' reductions use warp shuffles
    widths = {int(s.rsplit(",", 1)[1]) for s in shuffles}
    assert 64 in widths and widths <= {1, 2, 4, 8, 16, 32, 64}
    # a reduction over a whole wave starts at offset 32 of 64 lanes, not 16 of 32
    assert re.search(r"__shfl_down_sync\(\w+\[0\], \w+\[0\], 32, 64\)", source)
    masks = set(re.findall(r"unsigned long long (\w+)\[1\];", source))
    assert masks and all(f"{m}[0] = {FULL_MASK};" in source for m in masks)


def test_every_kernel_compiles_with_nvcc_through_the_compat_header(tiny_maca, source, tmp_path):
    proc = nvcc_compat(source, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    entries = set(re.findall(r"\.entry (\w+)\(", ptx))
    assert entries == {name for name, _ in split_kernels(source)}
    assert entries == set(tiny_maca.manifest["target"]["kernels"])
    assert any(name.startswith("spikematmul") for name in entries)  # w8: SpikeMatMul kernels


def test_spike_matmul_compiles_for_maca(tmp_path):
    """The SpikeMatMul GPU kernel for MetaX: whole 64-lane waves per block, shared tiles within
    64 KiB, MACA dialect, and it compiles through the compat header."""
    module = sbc.compile(spike_matmul_graph("i16", quantised=True, bias=True), target="maca",
                         passes="dce")
    source = module.files["maca/kernels.maca"].decode()
    check_maca(source)
    plan = json.loads(module.files["maca/launches.json"])
    (launch,) = [s for f in plan["functions"].values() for s in f["steps"] if "launch" in s]
    assert launch["launch"] == "spikematmul_kernel"
    assert launch["extents"]["threadIdx.x"] % 64 == 0
    shared = sum(int(n) * {"short": 2, "signed char": 1}[t] for t, n in
                 re.findall(r"__shared__ alignas\(\d+\) (short|signed char) \w+\[(\d+)\];", source))
    assert 0 < shared <= 64 * 1024
    proc = nvcc_compat(source, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compat_header_rejects_a_32_bit_mask(tmp_path):
    kernel = ('#include <mc_runtime.h>\nextern "C" __global__ void k(float* x) {{\n'
              '  x[threadIdx.x] = __shfl_down_sync({mask}, x[threadIdx.x], 32, 64);\n}}\n')
    assert nvcc_compat(kernel.format(mask=FULL_MASK), tmp_path, "ok").returncode == 0
    bad = nvcc_compat(kernel.format(mask="0xffffffffu"), tmp_path, "bad")
    assert bad.returncode != 0 and "64-bit" in bad.stdout + bad.stderr


def test_rewrite_widens_masks_and_refuses_asm():
    cuda = ('#ifdef __CUDACC_RTC__\n#include <cuda/std/cstdint>\n#else\n#include <cuda.h>\n#endif\n'
            'extern "C" __global__ void __launch_bounds__(64) red(float* a) {\n'
            '  uint mask[1];\n  float t0[1];\n  mask[0] = __activemask();\n'
            '  t0[0] = __shfl_down_sync(mask[0], a[0], 32, 64);\n}\n')
    out = to_maca(cuda)
    assert "unsigned long long mask[1];" in out and f"mask[0] = {FULL_MASK};" in out
    assert "__CUDACC_RTC__" not in out and "cuda.h" not in out
    with pytest.raises(CompileError, match="'bad'.*PTX"):
        to_maca(cuda + 'extern "C" __global__ void bad(int* p) {\n'
                '  asm volatile("membar.gl;");\n}\n')
    with pytest.raises(CompileError, match="128 lanes"):
        check_maca('extern "C" __global__ void w(float* a) {\n'
                   f'  a[0] = __shfl_sync({FULL_MASK}, a[0], 0, 128);\n}}\n')


def test_host_program_covers_every_call_and_launch(tiny_maca, source):
    plan = json.loads(tiny_maca.files["maca/launches.json"])
    assert plan["arch"] == "xcore1000" and plan["warp_size"] == 64
    assert set(plan["programs"]) == {"main", "prefill"}
    defined = {name for name, _ in split_kernels(source)}
    for program in plan["programs"].values():
        for step in program["steps"]:
            if "call" not in step:
                continue
            func = plan["functions"][step["call"]]
            assert len(func["params"]) == len(step["args"]) + len(step["outputs"]) + len(step["tir_vars"])
            launches = [s for s in func["steps"] if "launch" in s]
            assert launches, step["call"]
            for s in launches:
                info = plan["kernels"][s["launch"]]
                assert s["launch"] in defined
                assert len(info["arg_types"]) == len(s["args"])  # TVM's parameter order
                assert set(s["extents"]) == set(info["launch_params"])
    la = next(f for n, f in plan["functions"].items() if n.startswith("linearattention"))
    # the chunked kernel (MACA: at every T): per-chunk states into two workspaces, the carry,
    # the outputs; tiny has 2 KV heads and 4 query heads, chunks of 64 tokens
    assert [s["alloc"] for s in la["steps"] if "alloc" in s] == ["ws8", "ws9"]
    state, carry, output = [s for s in la["steps"] if "launch" in s]
    for tokens, chunks in ((1, 1), (7, 1), (130, 3)):
        env = {"B": 3, "L": tokens}
        for s in la["steps"]:  # the host values the extents use, as the runtime binds them
            if "let" in s:
                env[s["let"]] = evaluate(s["value"], env)
        assert evaluate(state["extents"]["blockIdx.x"], env) == 3 * 2 * chunks
        assert evaluate(output["extents"]["blockIdx.x"], env) == 3 * 4 * chunks
    assert all(s["extents"]["threadIdx.x"] == 256 for s in (state, carry, output))  # 4 waves
    # no host-side branch (MACA's host program has none): three launches at every T, each
    # kernel's shared memory within 64 KiB
    kernels = dict(split_kernels(source))
    for s in (state, carry, output):
        shared = sum(int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\];",
                                                kernels[s["launch"]]))
        assert shared * 4 <= 64 * 1024


def test_package_without_the_sdk(tiny_maca, tmp_path):
    from sbc.runtimes.machine import find_mxcc
    path = tmp_path / "tiny.sbc"
    tiny_maca.save(path)
    names = set(zipfile.ZipFile(path).namelist())
    assert {"manifest.json", "weights.safetensors", "maca/kernels.maca", "maca/launches.json",
            "maca/build.sh"} <= names
    assert "lib.so" not in names
    assert ("maca/kernels.bin" in names) == (find_mxcc() is not None)
    script = tiny_maca.files["maca/build.sh"].decode()
    assert "mxgpu_llvm/bin/mxcc\" -x maca -offload-arch=\"$ARCH\"" in script
    assert "xcore1000" in script


@pytest.mark.skipif(has_metax(), reason="this machine has a MetaX runtime")
def test_without_metax_load_and_run_say_so_in_one_line(tiny_maca, tmp_path, capsys):
    check_unavailable_in_one_line(tiny_maca, tmp_path, capsys, "no MetaX runtime was found")


def test_arch_from_option_and_environment(mlp_onnx, monkeypatch):
    from sbc.errors import UnsupportedError
    monkeypatch.setenv("MACA_ARCH", "xcore1100")
    assert sbc.compile(mlp_onnx, target="maca").manifest["target"]["arch"] == "xcore1100"
    module = sbc.compile(mlp_onnx, target="maca", arch="xcore1000")
    assert json.loads(module.files["maca/launches.json"])["arch"] == "xcore1000"
    with pytest.raises(UnsupportedError, match="MACA arch 'sm_80'"):
        sbc.compile(mlp_onnx, target="maca", arch="sm_80")


def test_expression_semantics_and_argument_packing():
    from sbc.runtimes.maca import DeviceTensor, pack_arguments
    env = {"n": -7}
    assert evaluate(["//", "n", 2], env) == -4 and evaluate(["%", "n", 2], env) == 1  # floor
    assert evaluate(["/", "n", 2], env) == -3 and evaluate(["mod", "n", 2], env) == -1  # trunc
    assert evaluate(["select", ["<", "n", 0], 1, 2], env) == 1
    import ctypes
    ptr = DeviceTensor(ctypes.c_void_p(0x1000), (1,), np.float32)
    packed = pack_arguments(["handle", "int32", "int64", "float32"], [ptr, 3, 5, 0.5])
    assert len(packed) == 8 + 4 + 4 + 8 + 4  # the int64 is 8-byte aligned
    assert packed[:8] == (0x1000).to_bytes(8, "little")


@pytest.mark.maca
@pytest.mark.skipif(not has_metax(), reason="needs MetaX hardware and the MACA runtime")
def test_runs_like_the_cpu(tiny_maca, tiny_module_w8, tmp_path):
    ids = token_ids(batch=2, seq=21)
    tiny_maca.save(tmp_path / "tiny.sbc")
    got = sbc.load(tmp_path / "tiny.sbc").run({"ids": ids})["logits"]
    expected = tiny_module_w8.run({"ids": ids})["logits"]
    assert np.mean(np.abs(got - expected) < 1e-3) > 0.99


def test_host_program_checks_gather_indices(tiny_maca):
    """The index check of the embedding runs on MACA too: a step after the last kernel that
    reads the check's flag and, when it is false, the message's values (positions, index,
    size); the runtime turns it into the same one-line InputError as on the CPU."""
    from sbc.errors import InputError
    from sbc.runtimes.maca import MacaRuntime
    plan = json.loads(tiny_maca.files["maca/launches.json"])
    (check,) = [s for s in plan["programs"]["main"]["steps"] if "check" in s]
    assert "(Gather): index {1} at flat position {0}" in check["message"] and len(check["args"]) == 3

    runtime = object.__new__(MacaRuntime)  # no device: the step's logic with host arrays
    values = {"ok": np.array(False), "p": np.array(2), "i": np.array(1000), "n": np.array(256)}
    runtime.mc = type("NoDevice", (), {"synchronize": lambda self: None})()
    runtime._resolve = lambda ref, env, dims: ref["value"]
    runtime._download = lambda name: values[name]
    step = {"check": {"value": "ok"}, "args": [{"value": v} for v in "pin"], "message": check["message"]}
    with pytest.raises(InputError, match="index 1000 at flat position 2 of %ids is out of range "
                                         "for an axis of size 256"):
        runtime._check(step, {}, {})
    values["ok"] = np.array(True)
    runtime._check(step, {}, {})


def test_host_program_sizes_a_clamped_slice():
    """x[-3:8] on a symbolic axis has max(min(seq, 8) - max(seq - 3, 0), 0) rows (ONNX clamps
    the bounds): the MACA host program sizes the output with the same min / max."""
    from tests.test_memory_safety import slice_model
    module = sbc.compile(slice_model(["seq", 4], [-3], [8], [0]), target="maca")
    plan = json.loads(module.files["maca/launches.json"])
    (step,) = [s for s in plan["programs"]["main"]["steps"] if "call" in s]
    rows = step["outputs"][0]["shape"][0]
    assert [evaluate(rows, {"seq": n}) for n in (0, 2, 5, 9, 12)] == [0, 2, 3, 2, 0]


def test_reduction_over_clamped_rows_is_scheduled():
    """x[:, -1:] has min(seq, 1) rows; dlight's reduction rules fail on loops over them, so
    the next rule schedules the kernel (before: 'TVM could not schedule the model')."""
    from onnx import TensorProto, helper
    from tests.test_memory_safety import ints, model
    m = model([helper.make_node("Slice", ["x", "s", "e", "a"], ["last"]),
               helper.make_node("ReduceMean", ["last", "axes"], ["y"])],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 64])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "rows", 1])],
              [ints("s", [-1]), ints("e", [2**63 - 1]), ints("a", [1]), ints("axes", [2])])
    plan = json.loads(sbc.compile(m, target="maca").files["maca/launches.json"])
    reduction = [s for s in plan["programs"]["main"]["steps"] if "call" in s][-1]
    rows = reduction["outputs"][0]["shape"][1]
    assert [evaluate(rows, {"seq": n}) for n in (0, 1, 9)] == [0, 1, 1]


class HostMemory:
    """libmcruntime's calls (runtimes.maca._Mc) on host memory, for the host program's logic
    without a device: buffers are bytearrays, launches are recorded, not run."""

    def __init__(self):
        import ctypes
        self.ctypes, self.buffers, self.launches, self.next = ctypes, {}, [], 0x1000

    def malloc(self, nbytes):
        assert nbytes >= 0
        self.next += 0x1000 + nbytes
        self.buffers[self.next] = bytearray(max(nbytes, 1))  # as _Mc: 1 byte for an empty one
        return self.ctypes.c_void_p(self.next)

    def free(self, ptr):
        del self.buffers[ptr.value]

    def upload(self, ptr, array):
        assert array.nbytes, "a copy of 0 bytes"
        self.buffers[ptr.value][:array.nbytes] = array.tobytes()

    def download(self, ptr, array):
        assert array.nbytes, "a copy of 0 bytes"
        array.view(np.uint8).reshape(-1)[:] = np.frombuffer(self.buffers[ptr.value][:array.nbytes], np.uint8)

    def load_module(self, image):
        return "module"

    def function(self, module, name):
        return name

    def launch(self, fn, grid, block, shared, packed, name):
        assert min(grid) > 0 and min(block) > 0, (name, grid, block)
        self.launches.append(name)

    def synchronize(self):
        pass


# cases with a zero-size tensor: outputs (Split's empty piece, ConstantOfShape of a 0 dim, an
# out-of-range Slice, Triu of a 0-row matrix, Reshape) or inputs (a sum over an empty axis)
EMPTY_CASES = ("test_split_zero_size_splits_opset18", "test_constantofshape_int_shape_zero",
               "test_slice_start_out_of_bounds", "test_triu_zero",
               "test_reduce_sum_empty_set_non_reduced_axis_zero", "test_reshape_allowzero_reordered")


def empty_at_run_time():
    """x [b, n], fed with n = 0: Relu's output is empty, ReduceSum over the empty axis and a
    Concat with y [b, 3] are not."""
    from onnx import TensorProto, helper
    from sbc.frontend import import_onnx
    F = TensorProto.FLOAT
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["relu"]),
         helper.make_node("ReduceSum", ["x", "axes"], ["sum"], keepdims=1),
         helper.make_node("Concat", ["x", "y"], ["cat"], axis=1)], "empty",
        [helper.make_tensor_value_info("x", F, ["b", "n"]),
         helper.make_tensor_value_info("y", F, ["b", 3])],
        [helper.make_tensor_value_info("relu", F, ["b", "n"]),
         helper.make_tensor_value_info("sum", F, ["b", 1]),
         helper.make_tensor_value_info("cat", F, ["b", "m"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]),
        opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    feeds = {"x": np.zeros((2, 0), np.float32), "y": np.ones((2, 3), np.float32)}
    return import_onnx(model), feeds, {"relu": (2, 0), "sum": (2, 1), "cat": (2, 3)}


def test_empty_tensors_in_the_host_program():
    """A tensor with a 0 dim at compile time is an `empty` step of the host program (no kernel
    computes it); at run time too (a symbolic dim fed 0), the runtime gives it a 1-byte
    buffer, copies nothing to or from it, and launches no kernel over a zero-sized grid. Run
    here with host memory in place of the device: every output has the expected shape and
    dtype, the empty ones are equal; only the kernels with elements to write launch."""
    from sbc.runtimes.maca import MacaRuntime
    from tests.conformance.test_onnx_backend import (_feeds_and_expected, _import_case, merge,
                                                     supported_cases)
    cases = {c.name: c for group in supported_cases().values() for c in group}
    imported = [(f"c{i}.", *_import_case(cases[name]), cases[name])
                for i, name in enumerate(EMPTY_CASES)]
    graph, feeds, shapes = empty_at_run_time()
    module = sbc.compile(merge([(p, g) for p, g, _, _ in imported] + [("e.", graph)]),
                         target="maca", cache=False)
    plan = json.loads(module.files["maca/launches.json"])
    empty = [s for s in plan["programs"]["main"]["steps"] if "empty" in s]
    assert len(empty) >= 4 and all(0 in s["shape"] for s in empty), empty
    memory = HostMemory()
    runtime = MacaRuntime({**module.files, "maca/kernels.bin": b"not loaded"}, module.manifest,
                          mc=memory, **module._signature)
    feeds = {**{p + n: a for p, _, f, _ in imported for n, a in f.items()},
             **{"e." + n: a for n, a in feeds.items()}}
    got = runtime.run(feeds)
    for prefix, _, _, case in imported:
        for name, want in _feeds_and_expected(case, prefix)[1].items():
            assert got[name].shape == want.shape and got[name].dtype == want.dtype, name
            if want.size == 0:
                np.testing.assert_array_equal(got[name], want)
    assert {n: got["e." + n].shape for n in shapes} == shapes
    # the conformance cases' outputs are all empty: only the run-time example's sum and concat
    assert sorted(n.split("_")[0] for n in memory.launches) == ["concat", "reducesum"]
    assert len(memory.buffers) == len(runtime.values)  # the run's buffers are freed
