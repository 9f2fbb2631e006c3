"""codegen.targets: one Target per kind. Resolving (GPU archs, a named CPU and its cores),
what an artifact needs to run here, cross-compiling for another CPU of this ISA, and builds
that give the same library bytes for the same model."""

import platform

import numpy as np
import pytest
import tvm

import sbc
from sbc.codegen import targets
from sbc.codegen.build import order_shape_functions
from sbc.codegen.targets import CpuTarget, CudaTarget, MacaTarget
from sbc.errors import ArtifactError, TargetUnavailableError, UnsupportedError
from sbc.runtimes.artifact import LIBRARY, WEIGHTS
from sbc.runtimes.machine import host_cpu_features
from tests.codegen.test_build import symbolic_graph

FILES = {LIBRARY: {}, WEIGHTS: {}}
x86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="names x86-64 CPUs")


def test_every_kind_is_registered_by_its_name():
    assert targets.KINDS == {"cpu": CpuTarget, "cuda": CudaTarget, "maca": MacaTarget}
    with pytest.raises(UnsupportedError, match="unknown target 'rocm'; supported: cpu, cuda, maca"):
        targets.resolve("rocm")


def test_options_are_checked_per_kind():
    assert targets.check_target("cuda") == "sm_80"
    assert targets.check_target("maca", "xcore2000") == "xcore2000"
    with pytest.raises(UnsupportedError, match="--arch applies to the cuda and maca"):
        targets.check_target("cpu", "sm_80")
    with pytest.raises(UnsupportedError, match="cpu applies to the cpu target only"):
        targets.check_target("cuda", cpu="znver4")
    with pytest.raises(UnsupportedError, match="cores must be a positive number"):
        targets.check_target("cpu", cores=0)
    with pytest.raises(UnsupportedError, match="unknown CPU 'pentium-9000'.*LLVM knows"):
        targets.check_target("cpu", cpu="pentium-9000")


def test_check_runnable():
    host = host_cpu_features()
    targets.check_runnable({"target": {"kind": "cpu"}, "files": FILES})  # the host runs
    with pytest.raises(TargetUnavailableError, match="'cuda'"):
        targets.check_runnable({"target": {"kind": "cuda"}, "files": FILES}, host_cpu=False)
    with pytest.raises(TargetUnavailableError, match="target 'tpu'.*this sbc runs: cpu, cuda"):
        targets.check_runnable({"target": {"kind": "tpu"}, "files": FILES})
    with pytest.raises(TargetUnavailableError, match="compiled for riscv64"):
        targets.check_runnable({"target": {"kind": "cpu", "arch": "riscv64"}, "files": FILES})
    with pytest.raises(TargetUnavailableError, match="amx_imaginary"):
        targets.check_runnable({"target": {"kind": "cpu", "arch": host["arch"],
                                           "features": host["features"] + ["amx_imaginary"]},
                                "files": FILES})


def test_each_kind_names_the_members_it_needs():
    """lib.so is the cpu and cuda host program; maca has none (its launches.json is)."""
    with pytest.raises(ArtifactError, match="a.sbc: the manifest lists no lib.so"):
        targets.check_runnable({"target": {"kind": "cpu"}, "files": {WEIGHTS: {}}}, "a.sbc")
    assert MacaTarget.required_members() == (WEIGHTS,)


def test_the_spike_kernel_follows_the_target_cpu_not_this_one():
    def instruction(features):
        return CpuTarget("any", 1, features).kernel_lowerings()["SpikeMatMul"].keywords["instruction"]
    assert instruction(("avx2", "fma")) == "avx2"
    assert instruction(("avx2", "avx512f", "avx512bw", "avx512vnni")) == "vnni512"
    assert instruction(()) == "portable"


@x86
def test_cross_compile_for_another_cpu(tmp_path):
    """Generic x86-64 (runs on any x86-64 CPU) with 3 cores: the manifest says so, the
    outputs equal a native build's, and the spike matmuls would use no vector extension."""
    graph = symbolic_graph()
    native = sbc.compile(graph)
    generic = sbc.compile(graph, cpu="x86-64", cores=3)
    entry = generic.manifest["target"]
    assert (entry["cpu"], entry["cores"], entry["features"]) == ("x86-64", 3, [])
    assert '"mcpu": "x86-64"' in entry["tvm_target"] and '"num-cores": 3' in entry["tvm_target"]
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)}
    generic.save(tmp_path / "generic.sbc")
    loaded = sbc.load(tmp_path / "generic.sbc")
    for name, value in native.run(feeds).items():
        np.testing.assert_allclose(loaded.run(feeds)[name], value, rtol=1e-5, atol=1e-6)


@x86
def test_an_artifact_for_a_bigger_cpu_is_refused_here(tmp_path):
    module = sbc.compile(symbolic_graph(), cpu="sapphirerapids")
    module.save(tmp_path / "spr.sbc")
    lacking = sorted(set(module.manifest["target"]["features"]) - set(host_cpu_features()["features"]))
    assert "amx_int8" in module.manifest["target"]["features"]
    if lacking:  # the usual case: this machine is not a Sapphire Rapids or newer
        with pytest.raises(TargetUnavailableError, match=f"with {', '.join(lacking)} "
                                                         r"\(sapphirerapids\)"):
            sbc.load(tmp_path / "spr.sbc")
    else:
        sbc.load(tmp_path / "spr.sbc")


def test_the_same_model_gives_the_same_library_bytes():
    """VMShapeLower orders shape-function stores by object address: without
    order_shape_functions two builds differed in those functions (and the build id)."""
    first, second = (sbc.compile(symbolic_graph()).library for _ in range(2))
    assert first == second


def test_shape_function_stores_come_in_slot_order():
    from tvm import relax
    from sbc.codegen.build import _Lowerer, fuse
    mod = relax.get_pipeline("default_build")(fuse(_Lowerer({"main": symbolic_graph()}).run()))
    mod = order_shape_functions(mod)
    shape_funcs = [f for gv, f in mod.functions_items() if gv.name_hint.startswith("shape_func")]
    assert shape_funcs
    for func in shape_funcs:
        slots = [int(store.indices[0]) for store in func.body.seq]
        assert len(slots) > 1 and slots == sorted(slots)
    assert isinstance(mod, tvm.IRModule)


@x86
def test_cli_compiles_for_a_named_cpu(mlp_onnx, tmp_path, capsys):
    from sbc.cli import main
    out = tmp_path / "mlp.sbc"
    assert main(["compile", mlp_onnx, "--cpu", "haswell", "--cores", "4", "-o", str(out), "-q"]) == 0
    assert sbc.load(out).manifest["target"]["cpu"] == "haswell"
    capsys.readouterr()
    assert main(["compile", mlp_onnx, "--cpu", "pentium-9000", "-o", str(tmp_path / "x.sbc")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown CPU 'pentium-9000'" in err
    assert main(["compile", mlp_onnx, "--target", "cuda", "--cores", "4"]) != 0
    assert "cores applies to the cpu target only" in capsys.readouterr().err
    assert not (tmp_path / "x.sbc").exists()
