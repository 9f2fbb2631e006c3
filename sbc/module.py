"""The compiled Module: what `sbc.compile` returns and `sbc.load` reads back.

TVM (5 s to import) is imported only when a module is loaded to run, so that checking an
artifact and reporting errors stay fast (the CLI relies on this).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from sbc.codegen.targets import check_runnable, device_index, target_kind
from sbc.errors import InputError
from sbc.ir.dims import Sym
from sbc.runtimes.artifact import signature_from_json, write_artifact
from sbc.runtimes.interop import as_feed, as_output, described, output_kind
from sbc.runtimes.threads import check_num_threads

MAX_POSITION = 2**40  # tokens per sequence: far past any context, far from int64 overflow


class Module:
    """A compiled model: `run({input: array}) -> {output: array}`, `save(path)`, and for
    sequence models made recurrent, `session(batch)` for streamed prefill and decoding.

    inputs / outputs: [(name, TensorType)], symbolic dims kept (e.g. f32[batch, 8]); the
    recurrent state and position are not among them (sessions manage them).
    manifest: what `save` writes (target, signature, source, ops, memory certificate, ...).
    files: further artifact members (GPU device code; see runtimes.artifact).
    num_threads: threads its CPU kernels use, None for one per core (settable; TVM's pool is
    set to it before each run: sbc.runtimes.threads).

    A cpu module loads its library at once (one from the compile cache on its first run); a
    cuda / maca one on its first run, so that it can be compiled and saved on a machine
    without the device.
    """

    def __init__(self, library: bytes | None, params: dict[str, np.ndarray], manifest: dict,
                 files: dict[str, bytes] | None = None, lazy: bool = False,
                 num_threads: int | None = None, device=None):
        self.library = library
        self.params = params
        self.manifest = manifest
        self.files = dict(files or {})
        program_inputs = signature_from_json(manifest["inputs"])
        program_outputs = signature_from_json(manifest["outputs"])
        self.recurrent = manifest.get("recurrent")
        hidden = set(self.recurrent["state"]) | {self.recurrent["position"]} if self.recurrent else set()
        self.inputs = [(n, t) for n, t in program_inputs if n not in hidden]
        self.outputs = [(n, t) for n, t in program_outputs if n not in hidden]
        self.state_types = {n: t for n, t in program_inputs if n in hidden}
        self._signature = {"inputs": program_inputs, "outputs": program_outputs,
                           "param_names": manifest["param_names"], "params": params,
                           "assumptions": assumptions_from_json(manifest.get("assumptions", []))}
        self._loaded = None
        self._tokenizer = None  # built from the tokenizer/ members on first use
        self.from_cache = False  # sbc.compile found it in the compile cache
        self._num_threads = check_num_threads(num_threads)
        self.device = device_index(device, self.kind)  # which GPU (0 on the CPU)
        if target_kind(self.kind).loads_eagerly and not lazy:
            self._loaded = self._load_runtime()

    @property
    def kind(self) -> str:
        return self.manifest["target"]["kind"]

    @property
    def _runtime(self):
        if self._loaded is None:
            self._loaded = self._load_runtime()
        return self._loaded

    @property
    def tokenizer(self):
        """The tokenizer stored in the artifact (sbc.runtimes.tokenizer.TextTokenizer:
        encode, decode, apply_chat_template), or None when it was compiled without one."""
        if self._tokenizer is None and any(n.startswith("tokenizer/") for n in self.files):
            from sbc.runtimes.tokenizer import tokenizer_from_members
            self._tokenizer = tokenizer_from_members(self.files)
        return self._tokenizer

    @property
    def num_threads(self) -> int | None:
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        self._num_threads = check_num_threads(value)
        if self._loaded is not None:
            self._loaded.num_threads = self._num_threads

    def _load_runtime(self):
        """The target's runtime, running with this module's thread count."""
        runtime = self._target_runtime()
        runtime.num_threads = self._num_threads
        return runtime

    def _target_runtime(self):
        """The runtime for the target: TargetUnavailableError (one line) without the device."""
        return target_kind(self.kind).load(self.library, self.files, self.manifest,
                                           self.device, **self._signature)

    def run(self, feeds: dict[str, np.ndarray], output: str | None = None) -> dict:
        """Run on `feeds` (arrays by input name, exact dtypes: NumPy arrays, torch tensors or
        any DLPack object, taken without a copy where layout and device allow); return arrays
        by output name, of the caller's kind (torch in, torch out) or `output`'s ("numpy",
        "torch", "dlpack"; sbc.runtimes.interop). A recurrent model runs from empty state,
        i.e. on the whole sequence given."""
        if output in (None, "numpy") and type(feeds) is dict and not self.recurrent:
            for value in feeds.values():
                if type(value) is not np.ndarray:
                    break
            else:  # NumPy in, NumPy out: the runtime's outputs are the module's, as they are
                return self._runtime.run(feeds)
        kind = output_kind(feeds.values() if isinstance(feeds, Mapping) else (), output)
        if isinstance(feeds, Mapping):
            feeds = {n: as_feed(v) for n, v in feeds.items()}
        keep = [n for n, _ in self.outputs] if kind != "numpy" else ()  # left on a device
        if self.recurrent and isinstance(feeds, Mapping):
            from sbc.ir.types import bind_symbols
            env = bind_symbols(self.inputs, {n: described(v) for n, v in feeds.items()})
            feeds = {**feeds, **self.initial_state(env)}
        results = self._runtime.run(feeds, keep=keep)
        return {n: as_output(results[n], kind, self._runtime.to_host) for n, _ in self.outputs}

    def initial_state(self, symbols: dict[str, int]) -> dict[str, np.ndarray]:
        """Zero state and position 0 (recurrent models), sized by `symbols` ({"batch": 1})."""
        from sbc.ir.dims import concretize
        from sbc.ir.types import numpy_dtype
        return {n: np.zeros(concretize(list(t.shape), symbols), numpy_dtype(t.dtype))
                for n, t in self.state_types.items()}

    def step(self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray],
             last_only: bool = False) -> tuple[dict, dict]:
        """One call of the recurrent program: (outputs, next state incl. position). With
        `last_only`, the first output (logits) is computed at the last position only."""
        program = "prefill" if last_only and self.recurrent.get("prefill_program") else "main"
        steps = self.steps(feeds)
        position = self._check_position(state, steps)
        # the state stays on the device between steps: only the logits come back
        results = self._runtime.run({**feeds, **state}, program, keep=self.recurrent["state"])
        outputs = {n: results[n] for n, _ in self.outputs}
        new_state = {n: results[n] for n in self.recurrent["state"]}
        new_state[self.recurrent["position"]] = np.asarray(position + steps, np.int64)
        return outputs, new_state

    def host_state(self, state: dict) -> dict[str, np.ndarray]:
        """A state as host arrays (on a GPU, step keeps it in device memory)."""
        return {n: self._runtime.to_host(v) for n, v in state.items()}

    def steps(self, feeds: dict[str, np.ndarray]) -> int:
        """How many tokens `feeds` holds: the size of the manifest's sequence symbol (artifacts
        from before it was recorded knew only "seq"), read off the first input that has it as
        an axis; the runtime checks the whole signature when it runs (once per step)."""
        seq = Sym.var(self.recurrent.get("sequence_symbol", "seq"))
        for name, t in self.inputs:
            if seq in t.shape and np.ndim(feeds.get(name)) == t.rank:
                return int(np.shape(feeds[name])[list(t.shape).index(seq)])
        from sbc.ir.types import bind_symbols  # a missing or misshapen input: its own error
        return bind_symbols(self.inputs, feeds)[str(seq)]

    def _check_position(self, state: dict, steps: int) -> int:
        """The state's position: one integer in [0, MAX_POSITION - steps]. A negative one
        would index the window buffers from before their start; a huge one overflows."""
        name = self.recurrent["position"]
        position = np.asarray(state[name]) if name in state else np.zeros(0)
        if position.dtype != np.int64 or position.size != 1:
            raise InputError(f"the state's '{name}' must be one int64, got "
                             f"{position.dtype}{list(position.shape)}")
        value = int(position.reshape(-1)[0])
        if not 0 <= value <= MAX_POSITION - steps:
            raise InputError(f"position {value} is out of range: a sequence's position must be "
                             f"in [0, {MAX_POSITION}] after its {steps} new tokens")
        capacity = self.recurrent["memory_certificate"].get("max_context")
        if capacity is not None and value + steps > capacity:
            raise InputError(f"the context would hold {value + steps} tokens, more than the "
                             f"{capacity} its full-attention KV cache holds (compile with "
                             "--max-context to allow more)")
        return value

    def session(self, batch: int = 1, chunk: int = 512):
        """A stateful session (prefill, decode, generate, save/load state; with a tokenizer,
        generate_text and chat) over this module."""
        from sbc.runtimes.session import Session
        return Session(self, batch=batch, chunk=chunk)

    __call__ = run

    def save(self, path: str | os.PathLike) -> None:
        """Write the `.sbc` artifact atomically (nothing is left behind if interrupted)."""
        self.manifest = write_artifact(path, self.library, self.params, self.manifest, self.files)

    def __repr__(self):
        sig = lambda s: ", ".join(f"{n}: {t}" for n, t in s)  # noqa: E731
        return (f"<sbc.Module ({sig(self.inputs)}) -> ({sig(self.outputs)}) "
                f"on {self.manifest['target']['kind']}>")


def assumptions_from_json(items) -> list:
    """The manifest's assumptions (sbc.ir.assumptions), as the runtimes check them."""
    from sbc.errors import ArtifactError
    from sbc.ir.assumptions import Assumption
    try:
        return [Assumption.from_json(item) for item in items]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ArtifactError(f"the artifact's manifest has malformed assumptions ({e})") from e


def module_from_artifact(artifact, path: str = "the artifact",
                         num_threads: int | None = None, device=None) -> Module:
    """A Module from an already verified artifact, once its target is known to run here."""
    device_index(device, artifact.manifest["target"].get("kind"))  # a wrong name: said first
    check_runnable(artifact.manifest, path)
    return Module(artifact.library, artifact.params, artifact.manifest, artifact.files,
                  num_threads=num_threads, device=device)
