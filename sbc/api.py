"""The public Python API: compile, load, and the compiled Module."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import numpy as np

from sbc.errors import TargetUnavailableError, UnsupportedError
from sbc.runtimes.artifact import read_artifact, signature_from_json, signature_to_json, write_artifact
from sbc.runtimes.cpu import CpuRuntime

TARGETS = ("cpu",)


class Module:
    """A compiled model: `run({input: array}) -> {output: array}`, `save(path)`."""

    def __init__(self, library: bytes, params: dict[str, np.ndarray], manifest: dict):
        self.library = library
        self.params = params
        self.manifest = manifest
        self.inputs = signature_from_json(manifest["inputs"])
        self.outputs = signature_from_json(manifest["outputs"])
        self._runtime = CpuRuntime.from_library_bytes(
            library, inputs=self.inputs, outputs=self.outputs,
            param_names=manifest["param_names"], params=params)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runtime.run(feeds)

    __call__ = run

    def save(self, path: str | os.PathLike) -> None:
        write_artifact(os.fspath(path), self.library, self.params, self.manifest)

    def __repr__(self):
        sig = lambda s: ", ".join(f"{n}: {t}" for n, t in s)  # noqa: E731
        return f"<sbc.Module ({sig(self.inputs)}) -> ({sig(self.outputs)}) on {self.manifest['target']['kind']}>"


def _check_target(target: str) -> None:
    if target in ("cuda", "maca"):
        raise UnsupportedError(f"target '{target}' is not available in this sbc build yet; "
                               f"supported: {', '.join(TARGETS)}")
    if target not in TARGETS:
        raise UnsupportedError(f"unknown target '{target}'; supported: {', '.join(TARGETS)}")


def compile(model, target: str = "cpu", *, passes=None, print_after=(), time_passes=False,
            verify_each=False, dump_dir=None) -> Module:
    """Compile an ONNX file, onnx.ModelProto or sbc.ir.Graph for `target`."""
    from sbc.codegen.build import build
    from sbc.frontend import import_onnx
    from sbc.ir import Graph
    from sbc.passes import run_passes

    _check_target(target)
    graph = model if isinstance(model, Graph) else import_onnx(model)
    graph = run_passes(graph, passes, print_after=print_after, time_passes=time_passes,
                       verify_each=verify_each, dump_dir=dump_dir)
    built = build(graph, target)
    manifest = {
        "target": built.target,
        "inputs": signature_to_json(built.inputs),
        "outputs": signature_to_json(built.outputs),
        "param_names": built.param_names,
        "source": _source_info(model),
        "ops": graph.op_counts(),
    }
    return Module(_library_bytes(built.executable), built.params, manifest)


def _library_bytes(executable) -> bytes:
    tmp = tempfile.mkdtemp(prefix="sbc-build-")
    try:
        path = os.path.join(tmp, "lib.so")
        executable.export_library(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _source_info(model) -> dict:
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return {"name": os.path.basename(os.fspath(model)),
                    "sha256": hashlib.sha256(f.read()).hexdigest()}
    return {"name": type(model).__name__}


def load(path: str | os.PathLike) -> Module:
    """Load a `.sbc` artifact written by `Module.save` / `sbc compile`."""
    artifact = read_artifact(os.fspath(path))
    kind = artifact.manifest.get("target", {}).get("kind")
    if kind != "cpu":
        raise TargetUnavailableError(f"{os.fspath(path)} was compiled for '{kind}', which this "
                                     f"machine cannot run (no {kind} runtime or device found)")
    return Module(artifact.library, artifact.params, artifact.manifest)
