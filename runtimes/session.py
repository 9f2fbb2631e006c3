"""Stateful sessions over a recurrent module: streamed prefill, decode, generation.

The module's program maps (tokens [B, T], position, state) -> (logits [B, T, V], state'); a
session keeps the state and position between calls. Prefill streams any number of tokens in
chunks of at most `chunk`, so memory is bounded by the chunk, not by the input length, and
decode is the same program on one token. Both use the module's "prefill" program where it has
one: the same step with the logits computed for the last token only. The state is a few
fixed-size arrays (see the artifact's memory certificate), so it can be saved, loaded and
copied freely.

A model whose positions are an input named `position_ids` (Hugging Face style) gets them from
the session: the absolute positions of each chunk's tokens. Through `module.run` / `step`, the
caller passes them.
"""

from __future__ import annotations

import math
import numbers
import os
import zipfile

import numpy as np

from sbc.errors import InputError
from sbc.ir.dims import Sym, concretize
from sbc.ir.types import numpy_dtype
from sbc.runtimes.artifact import atomic_path

STATE_FORMAT = "sbc-session-state-1"
POSITION_IDS = "position_ids"


class Session:
    def __init__(self, module, batch: int = 1, chunk: int = 512):
        if not module.recurrent:
            raise InputError("this module has no recurrent state (its model has no "
                             "LinearAttention/SlidingWindowAttention sbc could make recurrent); "
                             "use module.run on whole sequences")
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
                   for n in (batch, chunk)):
            raise InputError(f"batch and chunk must be integers >= 1, got {batch!r}, {chunk!r}")
        self.module, self.batch, self.chunk = module, batch, chunk
        (self.tokens_name, tokens_type), = module.inputs[:1]
        self.position_ids = dict(module.inputs[1:]).get(POSITION_IDS)
        self.logits_name = module.outputs[0][0]
        batch_dim = tokens_type.shape[0]
        self.symbols = {str(batch_dim): batch} if isinstance(batch_dim, Sym) else {}
        self.reset()

    @property
    def position(self) -> int:
        """Tokens consumed so far."""
        return int(self.state[self.module.recurrent["position"]])

    def reset(self) -> None:
        self.state = self.module.initial_state(self.symbols)

    def prefill(self, ids) -> np.ndarray:
        """Consume ids [B, T] (any T >= 1, streamed in chunks); return the logits of the
        last token, [B, V]."""
        ids = self._tokens(ids)
        logits = None
        for start in range(0, ids.shape[1], self.chunk):
            outputs, self.state = self.module.step(self._feeds(ids[:, start:start + self.chunk]),
                                                   self.state, last_only=True)
            logits = outputs[self.logits_name]
        return logits[:, -1]

    def decode(self, ids) -> np.ndarray:
        """Consume one token per sequence (ids [B] or [B, 1]); return its logits [B, V]."""
        ids = self._tokens(np.reshape(np.asarray(ids), (self.batch, -1)))
        if ids.shape[1] != 1:
            raise InputError(f"decode takes one token per sequence, got {ids.shape[1]}")
        return self.prefill(ids)

    def generate(self, ids, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None) -> np.ndarray:
        """Prefill `ids`, then sample `max_new_tokens` tokens per sequence: greedy when
        temperature is 0, else softmax(logits / temperature) over the top_k most likely."""
        check_sampling(temperature, top_k, max_new_tokens)  # before the (long) prefill
        rng = np.random.default_rng(seed)
        logits = self.prefill(ids)
        out = []
        for _ in range(max_new_tokens):
            token = sample(logits, temperature, top_k, rng)
            out.append(token)
            if len(out) < max_new_tokens:
                logits = self.decode(token)
        return np.stack(out, axis=1) if out else np.zeros((self.batch, 0), np.int64)

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the state (and which module it belongs to) atomically as .npz."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, __format__=np.array(STATE_FORMAT), __module__=np.array(self._identity()),
                         **{f"s{i}": self.state[n] for i, n in enumerate(sorted(self.state))})

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore a state written by save_state for the same module and batch size."""
        identity, loaded = _read_state(os.fspath(path), sorted(self.state))
        if identity != (STATE_FORMAT, self._identity()):
            raise InputError(f"{path}: the state was saved from another model or batch size")
        for name, array in loaded.items():
            if array.shape != self.state[name].shape or array.dtype != self.state[name].dtype:
                raise InputError(f"{path}: state '{name}' is {array.dtype}{list(array.shape)}, "
                                 f"expected {self.state[name].dtype}{list(self.state[name].shape)}")
        self.state = loaded

    def _identity(self) -> str:
        source = self.module.manifest.get("source") or {}
        return f"{source.get('sha256')}:{sorted(self.state)}:batch={self.batch}"

    def _feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The step's inputs for a chunk of tokens: the tokens, and their absolute positions
        where the model takes them as an input."""
        feeds = {self.tokens_name: ids}
        if self.position_ids is not None:
            seq = self.module.recurrent.get("sequence_symbol", "seq")
            shape = concretize(list(self.position_ids.shape), {**self.symbols, seq: ids.shape[1]})
            positions = self.position + np.arange(ids.shape[1])  # along the last (sequence) axis
            feeds[POSITION_IDS] = np.broadcast_to(positions, shape).astype(
                numpy_dtype(self.position_ids.dtype))
        return feeds

    def _tokens(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim == 1 and self.batch == 1:
            ids = ids[None]
        expected = self.module.inputs[0][1].dtype
        if ids.ndim != 2 or ids.shape[0] != self.batch or ids.shape[1] < 1:
            raise InputError(f"ids must be [{self.batch}, T] with T >= 1, got shape {list(ids.shape)}")
        if ids.dtype.kind not in "iu":
            raise InputError(f"ids must be integers ({expected}), got {ids.dtype}")
        return ids.astype(numpy_dtype(expected))


def _read_state(path: str, names: list[str]) -> tuple[tuple[str, str], dict[str, np.ndarray]]:
    """(format, module identity) and the state arrays by name from a save_state file. Any
    unreadable file (missing, empty, truncated, garbage, an .npy) is one InputError."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such session state file")
    try:
        with np.load(path, allow_pickle=False) as z:
            identity = (str(z["__format__"]), str(z["__module__"]))
            return identity, {n: z[f"s{i}"] for i, n in enumerate(names)}
    except (OSError, KeyError, ValueError, EOFError, TypeError, AttributeError,
            zipfile.BadZipFile) as e:  # AttributeError, TypeError: an .npy has no `with`/keys
        reason = f"{type(e).__name__}: {e}".splitlines()[0]  # numpy's may run over lines
        raise InputError(f"{path}: not a session state file written by save_state "
                         f"({reason})") from e


def check_sampling(temperature, top_k, max_new_tokens=0) -> None:
    """Sampling settings that mean something: NaN or a negative temperature and top_k = 0
    would otherwise be silently taken as greedy or as 'all tokens'."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0: greedy), "
                         f"got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or top_k < 1):
        raise InputError(f"top_k must be an integer >= 1 (or None: all tokens), got {top_k!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) \
            or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


def sample(logits: np.ndarray, temperature: float, top_k: int | None, rng) -> np.ndarray:
    """One token per row of logits [B, V]."""
    check_sampling(temperature, top_k)
    if temperature <= 0:
        return logits.argmax(-1).astype(np.int64)
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = np.sort(scaled, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    p = np.exp(scaled - scaled.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in p], np.int64)
